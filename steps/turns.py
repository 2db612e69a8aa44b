"""Multi-turn Magpie: the reply to each user turn, and the next user turn written from the conversation.

A conversation grows one step at a time (``magpie_dl.recipe.conversation`` says where each
turn lives): :class:`ConversationReply` answers its last user turn once, :class:`FollowUpQuery`
writes the next user turn. Both stream, so a conversation moves on to turn 2 as soon as its
turn 1 is answered, and both store their completions, so a rerun after a kill in turn 2
reads turn 1 back. :func:`conversation_stage` chains them after a recipe's query stage.
"""

from typing import TYPE_CHECKING, Any, ClassVar, Optional

from distilabel.steps import StepInput
from pydantic import Field, PrivateAttr

from magpie_dl.backends.base import Completion, PromptInput, SamplingSpec
from magpie_dl.config.sections import GeneratorConfig, setting
from magpie_dl.recipe.cleaning import CleaningRules
from magpie_dl.recipe.conversation import (
    CONVERSATION, RELEASED_CONVERSATIONS, instruction_column, later_query_columns, prompt_messages, released_conversations,
    reply_finish_column, response_column, with_message,
)
from magpie_dl.recipe.queries import SystemPromptPlan, derive_seed
from magpie_dl.recipe.reasons import (
    EMPTY, FINISH_ERROR, FINISH_LENGTH, GENERATION_FAILED, OK, REQUEST_FAILED, TRUNCATED, is_usable,
    later_turn_status, reply_status,
)
from magpie_dl.recipe.rows import cleaned_query, request_error
from magpie_dl.steps.base import RecipeStep, StreamingStep
from magpie_dl.steps.magpie import MagpieQuerySettings, QueryWriter
from magpie_dl.steps.responses import MultiResponseGeneration
from magpie_dl.templates.turns import MULTI_TURN_SYSTEM_PROMPT, follow_up_query_ids, follow_up_system_prompt

if TYPE_CHECKING:
    from distilabel.typing import StepColumns, StepOutput

    from magpie_dl.backends.base import CompletionLLM
    from magpie_dl.distilabel_compat import AnyStep


class FollowUpQuery(MagpieQuerySettings, StreamingStep):
    """Writes user turn ``turn`` (2 or later) of each usable conversation.

    The model sees the conversation rendered by its own chat template under a multi-turn system
    prompt (``system_prompt``), then the user-turn opening alone, and writes the next user
    message with the query settings, stops and first-token ban. The query is cleaned as turn 1's;
    an unusable one leaves the whole conversation out, its ``instruction_status`` naming the turn
    (``turn_2_fragment``): a pair on a conversation cut short would pass for the turn asked for.

    Input columns:
        - uuid (str), conversation (list of {role, content}: the turns so far, ending with a reply),
          instruction_status (str).

    Output columns:
        - conversation (with the new user turn), instruction_<turn>, raw_instruction_<turn>,
          cleaning_actions_<turn>, cleaning_removed_<turn>, instruction_status, request_error,
          gen_input_configs (with num_turns and the multi-turn system prompt).
    """

    role: ClassVar[str] = "queries"  # replicated as the query writer is
    work: ClassVar[str] = "later_queries"  # timed apart from turn 1's in --dry-run's plan
    # Turn 1's system prompts are not this turn's: the writer's prompt here is the multi-turn one.
    config_names = {"batch_size": "input_batch_size", "system_prompt": None, "system_prompts": None, "control_task": None}

    turn: int = Field(ge=2, description="The user turn this step writes (2 or later).")
    system_prompt: Optional[str] = Field(
        default=MULTI_TURN_SYSTEM_PROMPT, description="The writer's system prompt (dropped where the template has no system role)."
    )

    _writer: Optional[QueryWriter] = PrivateAttr(default=None)

    def load(self) -> None:
        super().load()
        self._writer = QueryWriter(self, plan=SystemPromptPlan()).resolve(self._logger)

    @property
    def inputs(self) -> "StepColumns":
        return {"uuid": True, CONVERSATION: True, "instruction_status": False}

    @property
    def outputs(self) -> "StepColumns":
        return [CONVERSATION, instruction_column(self.turn), *later_query_columns(self.turn),
                "instruction_status", "request_error", "gen_input_configs"]

    def completion_requests(self, rows: list[dict[str, Any]]) -> tuple[Any, list[PromptInput], list[SamplingSpec]]:
        writer = self._writer
        assert writer is not None and writer.family is not None, "load() was not called"
        todo = [row for row in rows if is_usable(row)]
        prompts = [
            PromptInput(tuple(follow_up_query_ids(
                self.llm.tokenizer, writer.family, row[CONVERSATION], self.system_prompt, self.llm.chat_template_date,
            )))
            for row in todo
        ]
        specs = [writer.sampling_spec(derive_seed("query", self.seed, row["uuid"], self.turn)) for row in todo]
        return todo, prompts, specs

    def rows_from_completions(
        self, rows: list[dict[str, Any]], context: Any, completions: list[list[Completion]]
    ) -> list[dict[str, Any]]:
        assert self._writer is not None and self._writer.family is not None, "load() was not called"
        written = {row["uuid"]: completion for row, [completion] in zip(context, completions)}
        rules = CleaningRules(min_chars=self.min_chars, max_chars=self.max_chars)
        raw_column, actions_column, removed_column = later_query_columns(self.turn)
        record = {
            "num_turns": self.turn,
            "multi_turn_system_prompt": follow_up_system_prompt(self._writer.family, self.system_prompt),
        }
        for row in rows:
            row["gen_input_configs"] = {**(row.get("gen_input_configs") or {}), **record}
            completion = written.get(row["uuid"])
            if completion is None:  # an unusable conversation: nothing asked
                row.update({instruction_column(self.turn): None, raw_column: None, actions_column: [], removed_column: []})
                continue
            cleaned, status = cleaned_query(completion, rules)
            row.update({
                instruction_column(self.turn): cleaned.instruction,
                raw_column: completion.text,
                actions_column: list(cleaned.actions),
                removed_column: list(cleaned.removed),
                "request_error": row.get("request_error") or request_error([completion]),
            })
            if status == OK:
                row[CONVERSATION] = with_message(row, "user", cleaned.instruction)
            else:
                row["instruction_status"] = later_turn_status(self.turn, status)
        return rows


class ConversationReply(MultiResponseGeneration):
    """The assistant's one reply to the last user turn (``turn``) of each usable conversation.

    Sampled with the reply settings (the recipe's ``generator.reply_temperature``, greedy by
    default as the reference, and ``reply_max_tokens``), stopped at the end of the turn. A reply
    that is empty, hit ``max_tokens`` or failed leaves the conversation out
    (``turn_1_reply_truncated``): the next turn would follow up on half an answer.

    Input columns:
        - instruction (str); optional uuid, conversation (absent before the first reply), instruction_status.

    Output columns:
        - uuid, conversation (with the reply), response / response_<turn>, its ``_finish_reason``,
          instruction_status, request_error, gen_input_configs (with the reply settings).
    """

    work: ClassVar[str] = "replies"  # replicated as the responses are, timed apart in --dry-run's plan

    turn: int = Field(ge=1, description="The user turn this step answers.")
    num_generations: int = 1

    @property
    def inputs(self) -> "StepColumns":
        return {"instruction": True, "uuid": False, CONVERSATION: False, "instruction_status": False}

    @property
    def outputs(self) -> "StepColumns":
        return ["uuid", CONVERSATION, response_column(self.turn), reply_finish_column(self.turn),
                "instruction_status", "request_error", "gen_input_configs"]

    def sampling_spec(self, row: dict[str, Any]) -> SamplingSpec:
        """One reply, seeded apart from the responses to the same row."""
        spec = super().sampling_spec(row)
        return SamplingSpec(**{**spec.__dict__, "n": 1, "seed": derive_seed("reply", self.seed, row["uuid"], self.turn)})

    def rows_from_completions(
        self, rows: list[dict[str, Any]], context: Any, completions: list[list[Completion]]
    ) -> list[dict[str, Any]]:
        rows = super().rows_from_completions(rows, context, completions)
        record = {"reply_temperature": self.temperature, "reply_max_tokens": self.max_tokens,
                  "reply_prompt_style": self.prompt_style}
        for row in rows:
            asked = is_usable(row)
            texts, reasons = row.pop("generations"), row.pop("finish_reasons")
            for column in ("generation_tokens", "gen_response_configs", "reasoning"):
                row.pop(column, None)
            row["gen_input_configs"] = {**(row.get("gen_input_configs") or {}), **record}
            text, finish = (texts[0], reasons[0]) if texts else (None, None)
            row[response_column(self.turn)], row[reply_finish_column(self.turn)] = text, finish
            if not asked:  # every row carries the column, asked or not
                row[CONVERSATION] = prompt_messages(row)
                continue
            if row.get("request_error") and finish == FINISH_ERROR:
                status = REQUEST_FAILED
            elif finish == FINISH_ERROR or finish is None:
                status = reply_status(self.turn, GENERATION_FAILED)
            elif finish == FINISH_LENGTH:
                status = reply_status(self.turn, TRUNCATED)
            elif not (text or "").strip():
                status = reply_status(self.turn, EMPTY)
            else:
                status = OK
            if status == OK:
                row[CONVERSATION] = with_message(row, "assistant", text)
            else:
                row["instruction_status"] = status
                row.setdefault(CONVERSATION, prompt_messages(row))
        return rows


class ReleasedConversations(RecipeStep):
    """Turns the finished ``conversation`` into the released multi-turn schema's ``conversations``
    (``{from: human | gpt, value}``), as the curation recipe releases its rows.

    Input columns:
        - conversation (list of {role, content})

    Output columns:
        - conversations (list of {from, value}); ``conversation`` is dropped.
    """

    @property
    def inputs(self) -> "StepColumns":
        return [CONVERSATION]

    @property
    def outputs(self) -> "StepColumns":
        return [RELEASED_CONVERSATIONS]

    def process(self, inputs: StepInput) -> "StepOutput":  # type: ignore[override]
        for row in inputs:
            row[RELEASED_CONVERSATIONS] = released_conversations(prompt_messages(row))
            row.pop(CONVERSATION, None)
        yield inputs


def conversation_stage(
    first: "AnyStep",
    config: GeneratorConfig,
    llm_for: Any,
    seed: int,
    *,
    reply_to_last: bool,
    prompt_style: str = "magpie",
    cache_dir: Optional[str] = None,
) -> "AnyStep":
    """Chain the later turns after ``first`` (the query stage's last step; call inside ``with Pipeline``):
    reply to turn 1, write turn 2, ... up to ``config.num_turns`` user turns, and the reply to the
    last one too when ``reply_to_last`` (the curation recipe's released conversations end with one;
    the DPO recipe's responses are its candidates). ``llm_for()`` gives each step its own handle on the
    generator model. Returns the last step (``first`` for one turn)."""
    last = first
    for turn in range(1, config.num_turns + (1 if reply_to_last else 0)):
        reply = ConversationReply(
            name=f"reply_turn_{turn}", turn=turn, llm=llm_for(), family=config.family, prompt_style=prompt_style,
            temperature=config.reply_temperature, max_tokens=config.reply_max_tokens, seed=seed, cache_dir=cache_dir,
            input_batch_size=config.batch_size,
        )
        last = last >> reply
        if turn < config.num_turns:
            ask = FollowUpQuery.from_config(
                config, name=f"query_turn_{turn + 1}", turn=turn + 1, llm=llm_for(), seed=seed, cache_dir=cache_dir,
            )
            last = last >> ask
    if reply_to_last and config.num_turns > 1:
        last = last >> ReleasedConversations(name="conversations", input_batch_size=config.batch_size)
    return last
