"""Magpie query steps: user queries an aligned model writes from its pre-query template."""

from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Optional, Sequence

from distilabel.mixins.runtime_parameters import RuntimeParameter
from distilabel.steps import StepInput
from pydantic import BaseModel, BeforeValidator, Field, PrivateAttr

from magpie_dl.backends.base import Completion, CompletionLLM, PromptInput, SamplingSpec
from magpie_dl.backends.chat_llm import refuse_chat_llm
from magpie_dl.config.sections import GeneratorConfig
from magpie_dl.recipe.cleaning import CleaningRules, mark_exact_duplicates
from magpie_dl.recipe.queries import SystemPromptPlan, derive_seed
from magpie_dl.recipe.rows import query_row
from magpie_dl.run.streaming import complete_in_batches
from magpie_dl.steps.base import ModelGeneratorStep, RecipeGeneratorStep, RecipeStep, StreamingStep
from magpie_dl.config.sections import setting
from magpie_dl.templates.families import (
    ModelFamily, ResolvedStops, resolve_family, resolve_single_token_ids, resolve_stops,
)
from magpie_dl.templates.prompts import pre_query_token_ids

if TYPE_CHECKING:
    from logging import Logger

    from magpie_dl.distilabel_compat import AnyStep
    from distilabel.typing import GeneratorStepOutput, StepColumns, StepOutput

QUERY_COLUMNS = [
    "uuid", "instruction", "raw_instruction", "cleaning_actions", "cleaning_removed", "instruction_status",
    "system_prompt_category", "gen_input_configs", "request_error",
]
# The row index a query slot carries from QuerySlots to ExactDuplicateQueries (dropped there).
INDEX_COLUMN = "query_index"


class MagpieQuerySettings(BaseModel):
    """The fields :class:`MagpieGenerator` and :class:`MagpieQueries` share, described where
    ``GeneratorConfig`` (the recipe's ``generator`` section) declares them; ``llm`` is a ``CompletionLLM``.
    """

    # A stock distilabel LLM is refused in one line naming what to pass, not pydantic's dump.
    llm: Annotated[CompletionLLM, BeforeValidator(refuse_chat_llm)]
    family: str = setting(GeneratorConfig, "family")
    system_prompt: Optional[str] = setting(GeneratorConfig, "system_prompt")
    system_prompts: Optional[dict[str, tuple[Optional[str], float]]] = setting(GeneratorConfig, "system_prompts")
    control_task: Optional[str] = setting(GeneratorConfig, "control_task")
    ban_first_token_markdown: bool = setting(GeneratorConfig, "ban_first_token_markdown")
    stop_at_newline: Optional[bool] = setting(GeneratorConfig, "stop_at_newline")
    min_chars: int = Field(default=3, description="Shorter cleaned queries are marked too_short.")
    max_chars: int = Field(default=8000, description="Longer cleaned queries are marked too_long.")

    temperature: RuntimeParameter[float] = setting(GeneratorConfig, "temperature")
    top_p: RuntimeParameter[float] = setting(GeneratorConfig, "top_p")
    max_tokens: RuntimeParameter[int] = setting(GeneratorConfig, "max_tokens")
    seed: RuntimeParameter[int] = Field(default=0, description="Run seed; row seeds derive from it.")


class QueryWriter:
    """Writes, cleans and annotates the Magpie queries of given row indices. A row's system prompt and
    seed derive from (``seed``, row index), so its query depends on neither batching nor replicas;
    exact duplicates need the earlier rows in order, so the caller marks them.
    """

    def __init__(self, settings: MagpieQuerySettings, plan: Optional[SystemPromptPlan] = None) -> None:
        self.settings = settings
        self.plan = plan or SystemPromptPlan.build(settings.system_prompt, settings.system_prompts, settings.control_task)
        self.family: Optional[ModelFamily] = None
        self.stops: Optional[ResolvedStops] = None
        self.ban_ids: tuple[int, ...] = ()
        self.newline = False

    def resolve(self, logger: "Logger") -> "QueryWriter":
        s, tokenizer = self.settings, self.settings.llm.tokenizer
        self.family = family = resolve_family(s.family, tokenizer, s.llm.chat_template_date)
        if family.note:
            logger.warning(family.note)  # one line: why the prompts are not the table's
        self.newline = family.stop_at_newline if s.stop_at_newline is None else s.stop_at_newline
        self.stops = resolve_stops(tokenizer, family.query_stop(self.newline))
        self.ban_ids = resolve_single_token_ids(tokenizer, family.first_token_ban if s.ban_first_token_markdown else ())
        return self

    def sampling_spec(self, row_seed: int) -> SamplingSpec:
        """The sampling parameters of one query."""
        s, stops = self.settings, self.stops
        assert stops is not None, "resolve() was not called"
        return SamplingSpec(
            n=1, temperature=s.temperature, top_p=s.top_p, max_tokens=s.max_tokens, seed=row_seed,
            stop=stops.strings, stop_token_ids=stops.token_ids, first_token_ban_ids=self.ban_ids,
        )

    def requests(self, indices: Sequence[int]) -> tuple[Any, list[PromptInput], list[SamplingSpec]]:
        """The requests of rows ``indices``: ``(context, prompts, specs)`` for :meth:`rows`."""
        seed, tokenizer = self.settings.seed, self.settings.llm.tokenizer
        picks = [self.plan.pick(seed, i) for i in indices]
        prompts, specs = [], []
        for i, (_, system) in zip(indices, picks):
            prompts.append(PromptInput(tuple(pre_query_token_ids(tokenizer, self.family, system))))
            specs.append(self.sampling_spec(derive_seed("query", seed, i)))
        return (list(indices), picks, specs), prompts, specs

    def rows(self, context: Any, completions: list[list[Completion]]) -> list[dict[str, Any]]:
        """The cleaned, annotated query rows of :meth:`requests`' rows."""
        s = self.settings
        rules = CleaningRules(min_chars=s.min_chars, max_chars=s.max_chars)
        indices, picks, specs = context
        return [
            query_row(
                completion, generator=s.llm.provenance_name, seed=s.seed, index=i, category=category,
                system_prompt=system, spec=spec, family=self.family, stop_at_newline=self.newline, rules=rules,
            )
            for i, (category, system), spec, [completion] in zip(indices, picks, specs, completions)
        ]


# Settings first, so pipeline.yaml keeps its key order (the base's fields, then these); they add
# fields only, so nothing else depends on the order.
class MagpieGenerator(MagpieQuerySettings, ModelGeneratorStep):
    """Synthesises user queries with Magpie: the model sees only its pre-query template.

    Emits exactly ``num_rows`` rows whatever the ``batch_size``, the same on a rerun; unusable
    queries are kept with a reason, a repeat of an earlier row's marked ``duplicate``.

    Runtime parameters:
        - `batch_size`, `max_in_flight` (:class:`~magpie_dl.steps.base.StreamingStep`), sampling.

    Output columns:
        - uuid, instruction, raw_instruction, cleaning_actions, cleaning_removed, instruction_status,
          system_prompt_category, gen_input_configs, request_error (``magpie_dl.recipe.rows``).

    Examples:
        >>> gen = MagpieGenerator(llm=TransformersBackend(model="models/tiny/generator"), num_rows=8)
        >>> gen.load(); rows, last = next(gen.process())
    """

    role: ClassVar[str] = "queries"  # replicated by scaleout.query_replicas (MagpieQueries; a generator runs once)
    config_names = {"num_instructions": "num_rows"}

    # Standalone, a handful of queries; the recipe's section says how many it writes.
    num_rows: int = setting(GeneratorConfig, "num_instructions", default=100)

    _writer: Optional[QueryWriter] = PrivateAttr(default=None)

    def load(self) -> None:
        writer = QueryWriter(self)  # a bad system-prompt plan fails before the model loads
        super().load()
        self._writer = writer.resolve(self._logger)

    def sampling_spec(self, row_seed: int) -> SamplingSpec:
        """Stops and bans as resolved at load (see :meth:`QueryWriter.sampling_spec`)."""
        assert self._writer is not None, "load() was not called"
        return self._writer.sampling_spec(row_seed)

    @property
    def outputs(self) -> "StepColumns":
        return list(QUERY_COLUMNS)

    def process(self, offset: int = 0) -> "GeneratorStepOutput":
        # Batches come out in row order, while later ones already run in the engine.
        writer, seen = self._writer, set[bytes]()
        assert writer is not None, "load() was not called"
        for context, completions in complete_in_batches(self.open_batches(), self._query_batches(writer, offset)):
            rows = writer.rows(context, completions)
            mark_exact_duplicates(rows, seen)
            yield rows, context[0][-1] == self.num_rows - 1

    def _query_batches(self, writer: QueryWriter, offset: int) -> Any:
        for start in range(offset, self.num_rows, self.batch_size):
            self.run.report_progress(0, 0)  # the batch started: the live display times the rate from here
            context, prompts, specs = writer.requests(range(start, min(start + self.batch_size, self.num_rows)))
            yield context, prompts, specs, self.run.row_tally(len(prompts))  # counted as each query finishes


class QuerySlots(RecipeGeneratorStep):
    """Emits row indices ``0 .. num_rows - 1`` for :class:`MagpieQueries` replicas to fill: a
    generator step runs once, so this cheap one hands out the work that replicas then share.

    Output columns:
        - query_index (int)
    """

    config_names = {"num_instructions": "num_rows"}

    num_rows: int = setting(GeneratorConfig, "num_instructions", default=100)

    @property
    def outputs(self) -> "StepColumns":
        return [INDEX_COLUMN]

    def process(self, offset: int = 0) -> "GeneratorStepOutput":
        for start in range(offset, self.num_rows, self.batch_size):
            stop = min(start + self.batch_size, self.num_rows)
            yield [{INDEX_COLUMN: i} for i in range(start, stop)], stop == self.num_rows


class MagpieQueries(MagpieQuerySettings, StreamingStep):
    """Writes the Magpie queries of the row slots it receives; replicable (one engine each). Followed by
    :class:`ExactDuplicateQueries`, its rows equal :class:`MagpieGenerator`'s.

    Runtime parameters:
        - `input_batch_size`, `max_in_flight` (:class:`~magpie_dl.steps.base.StreamingStep`), sampling.

    Input columns:
        - query_index (int)

    Output columns:
        - the columns of :class:`MagpieGenerator`.
    """

    role: ClassVar[str] = "queries"  # replicated by scaleout.query_replicas

    _writer: Optional[QueryWriter] = PrivateAttr(default=None)

    def load(self) -> None:
        writer = QueryWriter(self)  # a bad system-prompt plan fails before the model loads
        super().load()
        self._writer = writer.resolve(self._logger)

    @property
    def inputs(self) -> "StepColumns":
        return [INDEX_COLUMN]

    @property
    def outputs(self) -> "StepColumns":
        return list(QUERY_COLUMNS)

    def completion_requests(self, rows: list[dict[str, Any]]) -> tuple[Any, list[PromptInput], list[SamplingSpec]]:
        assert self._writer is not None, "load() was not called"
        return self._writer.requests([slot[INDEX_COLUMN] for slot in rows])

    def rows_from_completions(
        self, rows: list[dict[str, Any]], context: Any, completions: list[list[Completion]]
    ) -> list[dict[str, Any]]:
        assert self._writer is not None, "load() was not called"
        for slot, row in zip(rows, self._writer.rows(context, completions)):
            slot.update(row)
        return rows


class ExactDuplicateQueries(RecipeStep):
    """Puts :class:`MagpieQueries`' rows back in ``query_index`` order, marks exact duplicates as
    :class:`MagpieGenerator` does, and drops the index. It keeps the keys seen, so it runs as one
    replica. A normal step, not a global one: rows stream through, and distilabel 1.5 can hand a
    global step a replicated predecessor's last batch before the others.

    Input columns:
        - query_index (int), instruction (str), instruction_status (str)

    Output columns:
        - instruction_status (str: ``duplicate`` where the query repeats an earlier row's)
    """

    _pending: dict[int, dict[str, Any]] = PrivateAttr(default_factory=dict)
    _next_index: int = PrivateAttr(default=0)
    _seen: set[bytes] = PrivateAttr(default_factory=set)

    def load(self) -> None:
        super().load()
        self._pending, self._next_index, self._seen = {}, 0, set()

    @property
    def inputs(self) -> "StepColumns":
        return [INDEX_COLUMN, "instruction", "instruction_status"]

    @property
    def outputs(self) -> "StepColumns":
        return ["instruction_status"]

    def process(self, inputs: StepInput) -> "StepOutput":  # type: ignore[override]
        self._pending.update((row[INDEX_COLUMN], row) for row in inputs)
        ready = []
        while self._next_index in self._pending:
            ready.append(self._pending.pop(self._next_index))
            self._next_index += 1
        mark_exact_duplicates(ready, self._seen)
        for row in ready:
            del row[INDEX_COLUMN]
        yield ready


def query_stage(
    config: GeneratorConfig, llm: CompletionLLM, seed: int, replicas: int = 1, cache_dir: Optional[str] = None
) -> "AnyStep":
    """The query stage of a recipe (call inside ``with Pipeline``); returns the step to connect on:
    one :class:`MagpieGenerator`, or ``QuerySlots >> MagpieQueries >> ExactDuplicateQueries``.
    """
    shared = {"llm": llm, "seed": seed, "cache_dir": cache_dir}
    if replicas == 1:
        return MagpieGenerator.from_config(config, name="magpie_generator", **shared)
    slots = QuerySlots.from_config(config, name="query_slots")
    queries = MagpieQueries.from_config(config, name="magpie_queries", **shared)
    in_order = ExactDuplicateQueries.from_config(config, name="exact_duplicates")
    slots >> queries >> in_order
    return in_order
