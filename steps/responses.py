"""MultiResponseGeneration: N responses per instruction from one prompt (not N calls)."""

from typing import TYPE_CHECKING, Any, ClassVar, Literal, Optional, Union

from distilabel.mixins.runtime_parameters import RuntimeParameter
from distilabel.models.llms.base import LLM
from pydantic import Field, PrivateAttr, ValidationInfo, field_validator

from magpie_dl.backends.base import Completion, CompletionLLM, PromptInput, SamplingSpec
from magpie_dl.backends.chat_llm import ChatLLMCompletions, LLMNotSupportedError
from magpie_dl.templates.families import ModelFamily, ResolvedStops, resolve_family, resolve_stops
from magpie_dl.recipe.rows import response_columns
from magpie_dl.recipe.queries import derive_seed, instruction_uuid
from magpie_dl.recipe.provenance import model_label, response_provenance
from magpie_dl.templates.prompts import render_response_prompt, response_prompt_template, response_token_ids
from magpie_dl.recipe.conversation import CONVERSATION, prompt_messages
from magpie_dl.recipe.reasons import is_usable
from magpie_dl.templates.turns import conversation_prompt
from magpie_dl.config.sections import GeneratorConfig, ResponsesConfig
from magpie_dl.steps.base import StreamingStep
from magpie_dl.config.sections import setting

if TYPE_CHECKING:
    from distilabel.typing import StepColumns


class MultiResponseGeneration(StreamingStep):
    """Samples ``num_generations`` responses per instruction in one request (not N calls).

    The instruction is tokenised as text, so it cannot inject turns; a row's seed derives from
    (``seed``, uuid), so a rerun reproduces it. Rows with an unusable instruction get no responses.
    A row without a ``uuid`` (rows of ``instruction`` alone) gets one derived from its instruction.

    ``llm`` is one of our backends (``magpie_dl.backends``: exact prompt tokens, family stops, finish
    reasons, seeds) or any stock distilabel LLM (``TransformersLLM``, ``vLLM``, ``OpenAILLM``...),
    which gets the instruction as a chat message and applies its own chat template
    (``magpie_dl.backends.chat_llm``): finish reasons are then ``None`` (unknown) and the seed
    reaches it only where its ``generate`` takes one; the prompt style is then ``chat_template``.

    Runtime parameters:
        - `temperature`, `top_p`, `max_tokens`, `seed`, `repetition_penalty`; `max_in_flight`.

    Input columns:
        - instruction (str); optional uuid (str), instruction_status (str).

    Output columns:
        - uuid (str: derived from the instruction where the row had none), generations (list[str]), finish_reasons (list[str]), generation_tokens (list[int]),
          gen_response_configs (dict), request_error (str); with ``thinking``, reasoning (list[str | None]).
    """

    role: ClassVar[str] = "responses"  # replicated by scaleout.generation_replicas

    llm: Union[CompletionLLM, LLM]
    # One response is a use too (the instruct reward); the DPO recipe needs two to pair.
    num_generations: int = setting(ResponsesConfig, "num_generations", ge=1)
    family: str = setting(GeneratorConfig, "family")
    prompt_style: Literal["chat_template", "magpie"] = setting(ResponsesConfig, "prompt_style")
    thinking: bool = setting(ResponsesConfig, "thinking")
    engine: Optional[str] = Field(
        default=None, validate_default=True, description="Recorded as gen_response_configs.engine; None: the llm's kind."
    )

    temperature: RuntimeParameter[float] = setting(ResponsesConfig, "temperature")
    top_p: RuntimeParameter[float] = setting(ResponsesConfig, "top_p")
    max_tokens: RuntimeParameter[int] = setting(ResponsesConfig, "max_tokens")
    seed: RuntimeParameter[int] = Field(default=0, description="Run seed; row seeds derive from it.")
    repetition_penalty: RuntimeParameter[float] = setting(ResponsesConfig, "repetition_penalty")

    @field_validator("engine")
    @classmethod
    def _the_llms_kind(cls, engine: Optional[str], info: ValidationInfo) -> Optional[str]:
        llm = info.data.get("llm")
        return engine or (getattr(llm, "kind", ChatLLMCompletions.kind) if llm is not None else None)

    _family: Optional[ModelFamily] = PrivateAttr(default=None)
    _template: Optional[str] = PrivateAttr(default=None)
    _stops: Optional[ResolvedStops] = PrivateAttr(default=None)
    _stop_tokens: tuple[str, ...] = PrivateAttr(default=())

    def load(self) -> None:
        if not isinstance(self.llm, CompletionLLM):
            # The recipe's default (the bare prompt) needs our backend; a stock LLM uses its own template.
            if "prompt_style" in self.model_fields_set and self.prompt_style != "chat_template":
                raise LLMNotSupportedError(
                    f"prompt_style {self.prompt_style!r} needs exact prompt tokens, which {type(self.llm).__name__} "
                    "cannot take: use prompt_style='chat_template' or a magpie_dl.backends backend"
                )
            super().load()
            self._template, self._stops, self._stop_tokens = None, None, ()
            return
        super().load()
        self._family = resolve_family(self.family, self.llm.tokenizer, self.llm.chat_template_date)
        if self._family.note:
            self._logger.warning(self._family.note)
        self._template = response_prompt_template(
            self.llm.tokenizer, self._family, self.prompt_style, self.llm.chat_template_date, self.thinking
        )
        self._stops = stops = resolve_stops(self.llm.tokenizer, self._family.response_stop)  # scans the vocabulary
        # As recorded in gen_response_configs: the stop strings, then the stop ids' tokens.
        self._stop_tokens = stops.strings + tuple(self.llm.tokenizer.convert_ids_to_tokens(list(stops.token_ids)))

    @property
    def inputs(self) -> "StepColumns":
        return {"instruction": True, "uuid": False}

    @property
    def outputs(self) -> "StepColumns":
        return ["uuid", "generations", "finish_reasons", "generation_tokens", "gen_response_configs", "request_error"] + (
            ["reasoning"] if self.thinking else []
        )

    def impute_step_outputs(self, step_output: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """A failed batch's rows go on with empty outputs, but keep their ``uuid`` (an input too)."""
        imputed = super().impute_step_outputs(step_output)
        for row, given in zip(imputed, step_output):
            instruction = given.get("instruction")
            row["uuid"] = given.get("uuid") or (instruction_uuid(instruction) if isinstance(instruction, str) else None)
        return imputed

    def completion_requests(self, rows: list[dict[str, Any]]) -> tuple[Any, list[PromptInput], list[SamplingSpec]]:
        """One request (``n`` samples) per row whose instruction is usable."""
        for row in rows:
            if not row.get("uuid"):
                row["uuid"] = instruction_uuid(row["instruction"])
        todo = [row for row in rows if is_usable(row)]
        prompts, texts = zip(*(self._prompt(row) for row in todo)) if todo else ((), ())
        specs = [self.sampling_spec(row) for row in todo]
        return (todo, specs, texts), list(prompts), specs

    def _prompt(self, row: dict[str, Any]) -> tuple[PromptInput, str]:
        """The row's prompt, and its text as gen_response_configs records it: the instruction
        alone, or (multi-turn) the conversation whose last user turn the responses answer."""
        messages = tuple(prompt_messages(row))
        if self._template is None:  # a stock LLM: it applies its own chat template (recorded: the message sent)
            return PromptInput((), messages), messages[-1]["content"]
        if len(messages) > 1:
            ids, text = conversation_prompt(
                self.llm.tokenizer, self._family, self.prompt_style, messages, self.llm.chat_template_date, self.thinking
            )
            return PromptInput(tuple(ids), messages), text
        instruction = messages[0]["content"]
        ids = response_token_ids(self.llm.tokenizer, self._template, instruction)
        return PromptInput(tuple(ids), messages), render_response_prompt(self._template, instruction)

    def sampling_spec(self, row: dict[str, Any]) -> SamplingSpec:
        """How one row's responses are sampled (its seed derives from the run seed and its uuid)."""
        stops = self._stops or ResolvedStops((), ())  # a stock LLM stops at its own end of turn
        return SamplingSpec(
            n=self.num_generations,
            temperature=self.temperature,
            top_p=self.top_p,
            max_tokens=self.max_tokens,
            seed=derive_seed("responses", self.seed, row["uuid"]),
            repetition_penalty=self.repetition_penalty,
            stop=stops.strings,
            stop_token_ids=stops.token_ids,
        )

    def rows_from_completions(
        self, rows: list[dict[str, Any]], context: Any, completions: list[list[Completion]]
    ) -> list[dict[str, Any]]:
        """Each row with its responses and their provenance (rows not asked for get none)."""
        todo, specs, texts = context
        by_uuid = {row["uuid"]: (spec, done, text) for row, spec, done, text in zip(todo, specs, completions, texts)}
        for row in rows:
            spec, done, text = by_uuid.get(row["uuid"], (None, [], None))
            query_error = row.get("request_error") or ""
            row.update(response_columns(done, self.thinking))
            row["request_error"] = row["request_error"] or query_error
            if text is None and CONVERSATION not in row:  # not sent: the prompt it would have had
                stock = self._template is None
                text = row["instruction"] if stock else render_response_prompt(self._template, row["instruction"])
            row["gen_response_configs"] = self._provenance(text, spec.seed if spec else None)
        return rows

    def _provenance(self, prompt: str | None, seed: int | None) -> dict[str, Any]:
        """A row's gen_response_configs (``seed`` None: the row was not sent)."""
        stock = self._template is None
        return response_provenance(
            prompt=prompt,
            temperature=self.temperature,
            top_p=self.top_p,
            repetition_penalty=self.repetition_penalty,
            max_tokens=self.max_tokens,
            stop_tokens=list(self._stop_tokens),
            generator=model_label(self.llm.model_name) if stock else self.llm.provenance_name,
            engine=self.engine,
            seed=seed,
            prompt_style="chat_template" if stock else self.prompt_style,
            thinking=self.thinking,
            chat_template_date=None if stock else self.llm.chat_template_date,
        )
