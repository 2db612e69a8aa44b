"""Magpie query steps: user queries written by an aligned model from its pre-query template.

One writer (:class:`MagpieGenerator`) or, data parallel on Ray, three steps that give
the same rows: :class:`QuerySlots` emits row indices, :class:`MagpieQueries` replicas
write the queries of the indices they receive, and :class:`ExactDuplicateQueries`
puts the rows back in row order and marks exact duplicates. :func:`query_stage` picks.
"""

from typing import Any, Dict, Optional, Sequence, TYPE_CHECKING
from typing import ClassVar

from distilabel.mixins.runtime_parameters import RuntimeParameter
from distilabel.steps import GeneratorStep, Step, StepInput
from pydantic import Field, PrivateAttr

from magpie_dl.backends.base import Completion, CompletionLLM, PromptInput, SamplingSpec
from magpie_dl.recipe.cleaning import CleaningRules, mark_exact_duplicates
from magpie_dl.templates.families import (
    ModelFamily, ResolvedStops, resolve_family, resolve_single_token_ids, resolve_stops,
)
from magpie_dl.recipe.rows import query_row
from magpie_dl.recipe.queries import SystemPromptPlan, derive_seed
from magpie_dl.templates.prompts import pre_query_token_ids
from magpie_dl.config.sections import GeneratorConfig
from magpie_dl.run.streaming import complete_in_batches
from magpie_dl.steps.settings import Configured, setting
from magpie_dl.steps.streaming import StreamedCompletions, StreamingStep

if TYPE_CHECKING:
    from magpie_dl.distilabel_compat import AnyStep
    from distilabel.typing import GeneratorStepOutput, StepColumns, StepOutput

QUERY_COLUMNS = [
    "uuid", "instruction", "raw_instruction", "cleaning_actions", "cleaning_removed", "instruction_status",
    "system_prompt_category", "gen_input_configs", "request_error",
]
# The row index a query slot carries from QuerySlots to ExactDuplicateQueries (dropped there).
INDEX_COLUMN = "query_index"


class MagpieQueryWriter(StreamedCompletions, Configured):
    """Mixin: writes, cleans and annotates the Magpie queries of given row indices.

    Each row's system prompt and sampling seed derive from (``seed``, row index), so a
    row's query does not depend on batching, on which step wrote it, or on replicas.
    Raw queries are cleaned; unusable ones are kept and marked with a reason. Exact
    duplicates are not marked here: that needs the rows before, in index order.
    The fields are declared by the recipe's ``generator`` section, and a recipe builds
    the steps from it: ``MagpieGenerator.from_config(cfg.generator, llm=..., seed=...)``.

    Attributes:
        llm: a ``CompletionLLM`` backend (transformers, vLLM, OpenAI-compatible server).
        family: model family name, or ``auto`` to detect it from the tokenizer.
        system_prompt: one fixed system prompt for every query.
        system_prompts: weighted categories: ``{name: (prompt or None, weight)}``.
        control_task: ``math``, ``code`` or ``translation``: a built-in system prompt.
        ban_first_token_markdown: ban the family's markdown tokens at the first position.
        stop_at_newline: stop a query at its first newline (the reference's early stop);
            ``None`` takes the family's default. Recorded in ``gen_input_configs``.
    """

    role: ClassVar[str] = "queries"  # replicated by scaleout.query_replicas (MagpieQueries; a generator runs once)

    llm: CompletionLLM
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

    _family: Optional[ModelFamily] = PrivateAttr(default=None)
    _plan: Optional[SystemPromptPlan] = PrivateAttr(default=None)
    # Resolved once per load: resolving stops scans the whole vocabulary (~0.1 s at 128K).
    _stops: Optional[ResolvedStops] = PrivateAttr(default=None)
    _ban_ids: tuple[int, ...] = PrivateAttr(default=())
    _newline: bool = PrivateAttr(default=False)

    def load(self) -> None:
        """The system-prompt plan (a bad one fails before the model loads), the store and the
        engine (:class:`~steps.base.LLMStep`), then the family and its stops."""
        self._plan = SystemPromptPlan.build(self.system_prompt, self.system_prompts, self.control_task)
        super().load()
        tokenizer = self.llm.tokenizer
        self._family = family = resolve_family(self.family, tokenizer, self.llm.chat_template_date)
        if family.note:
            self._logger.warning(family.note)  # one line: why the prompts are not the table's
        self._newline = family.stop_at_newline if self.stop_at_newline is None else self.stop_at_newline
        self._stops = resolve_stops(tokenizer, family.query_stop(self._newline))
        bans = family.first_token_ban if self.ban_first_token_markdown else ()
        self._ban_ids = resolve_single_token_ids(tokenizer, bans)

    def sampling_spec(self, row_seed: int) -> SamplingSpec:
        """The sampling parameters of one query (stops and bans as resolved at load)."""
        stops, bans = self._stops, self._ban_ids
        return SamplingSpec(
            n=1,
            temperature=self.temperature,
            top_p=self.top_p,
            max_tokens=self.max_tokens,
            seed=row_seed,
            stop=stops.strings,
            stop_token_ids=stops.token_ids,
            first_token_ban_ids=bans,
        )

    def query_requests(self, indices: Sequence[int]) -> tuple[Any, list[PromptInput], list[SamplingSpec]]:
        """The requests of rows ``indices``: ``(context, prompts, specs)`` for :meth:`query_rows`."""
        tokenizer, family = self.llm.tokenizer, self._family
        picks = [self._plan.pick(self.seed, i) for i in indices]
        prompts, specs = [], []
        for i, (_, system) in zip(indices, picks):
            prompts.append(PromptInput(tuple(pre_query_token_ids(tokenizer, family, system))))
            specs.append(self.sampling_spec(derive_seed("query", self.seed, i)))
        return (list(indices), picks, specs), prompts, specs

    def query_rows(self, context: Any, completions: list[list[Completion]]) -> list[dict[str, Any]]:
        """Clean and annotate the queries of :meth:`query_requests`' rows."""
        rules = CleaningRules(min_chars=self.min_chars, max_chars=self.max_chars)
        indices, picks, specs = context
        rows = [
            query_row(
                completion, generator=self.llm.provenance_name, seed=self.seed, index=i, category=category,
                system_prompt=system, spec=spec, family=self._family, stop_at_newline=self._newline, rules=rules,
            )
            for i, (category, system), spec, [completion] in zip(indices, picks, specs, completions)
        ]
        return rows


class MagpieGenerator(MagpieQueryWriter, GeneratorStep):
    """Synthesises user queries with Magpie: the model sees only its pre-query template.

    Emits exactly ``num_rows`` rows whatever the ``batch_size``. Each row's system prompt
    and sampling seed derive from (``seed``, row index), so a rerun reproduces the rows.
    Raw queries are cleaned; unusable ones are kept and marked with a reason; a usable
    query equal (case and spacing folded) to an earlier row's is marked ``duplicate``.

    Attributes:
        num_rows: how many queries to write; the rest as in :class:`MagpieQueryWriter`.

    Runtime parameters:
        - `batch_size`: rows per batch sent to the backend.
        - `temperature`, `top_p`, `max_tokens`, `seed`: sampling.
        - `max_in_flight`: sequences in flight across batches: later batches' queries enter
          the engine while a batch's longest finish (:mod:`steps.streaming`).

    Output columns:
        - uuid (str), instruction (str), raw_instruction (str), cleaning_actions (list[str]:
          the cleaner's rules, in order), cleaning_removed (list[str]: what each removed),
          instruction_status (str: ``ok`` or why unusable), system_prompt_category (str | None),
          gen_input_configs (dict: provenance).

    Examples:
        >>> gen = MagpieGenerator(llm=TransformersBackend(model="models/tiny/generator"), num_rows=8)
        >>> gen.load(); rows, last = next(gen.process())
    """

    config_names: ClassVar[Dict[str, Optional[str]]] = {"num_instructions": "num_rows"}

    # Standalone, a handful of queries; the recipe's section says how many it writes.
    num_rows: int = setting(GeneratorConfig, "num_instructions", default=100)

    @property
    def outputs(self) -> "StepColumns":
        return list(QUERY_COLUMNS)

    def process(self, offset: int = 0) -> "GeneratorStepOutput":
        # Later batches are already in the engine while a batch's longest queries finish
        # (and while distilabel hands the batch on); batches still come out in row order.
        seen: set[bytes] = set()
        for context, completions in complete_in_batches(self.open_batches(), self._query_batches(offset)):
            rows = self.query_rows(context, completions)
            mark_exact_duplicates(rows, seen)
            yield rows, context[0][-1] == self.num_rows - 1

    def _query_batches(self, offset: int) -> Any:
        for start in range(offset, self.num_rows, self.batch_size):
            self.report_started()
            context, prompts, specs = self.query_requests(range(start, min(start + self.batch_size, self.num_rows)))
            yield context, prompts, specs, self.row_tally(len(prompts))  # counted as each query finishes


class QuerySlots(GeneratorStep, Configured):
    """Emits the row indices ``0 .. num_rows - 1`` for :class:`MagpieQueries` replicas to fill.

    A generator step runs once; a normal step can be replicated. This cheap generator
    hands the work out as slots so that the expensive part runs on every replica.

    Attributes:
        num_rows: how many queries the run writes.

    Runtime parameters:
        - `batch_size`: slots per batch (one engine batch of :class:`MagpieQueries`).

    Output columns:
        - query_index (int)
    """

    config_names: ClassVar[Dict[str, Optional[str]]] = {"num_instructions": "num_rows"}

    num_rows: int = setting(GeneratorConfig, "num_instructions", default=100)

    @property
    def outputs(self) -> "StepColumns":
        return [INDEX_COLUMN]

    def process(self, offset: int = 0) -> "GeneratorStepOutput":
        for start in range(offset, self.num_rows, self.batch_size):
            stop = min(start + self.batch_size, self.num_rows)
            yield [{INDEX_COLUMN: i} for i in range(start, stop)], stop == self.num_rows


class MagpieQueries(StreamingStep, MagpieQueryWriter, Step):
    """Writes the Magpie queries of the row slots it receives; replicable (one engine each).

    The rows equal :class:`MagpieGenerator`'s except for exact duplicates, which
    :class:`ExactDuplicateQueries` marks after this step, in row order.

    Runtime parameters:
        - `input_batch_size`: slots per batch sent to the backend.
        - `temperature`, `top_p`, `max_tokens`, `seed`: sampling.
        - `max_in_flight`: sequences in flight across batches (in a pipeline, queued batches
          stream into the engine: :mod:`steps.streaming`).

    Input columns:
        - query_index (int)

    Output columns:
        - the columns of :class:`MagpieGenerator`.
    """

    config_names: ClassVar[Dict[str, Optional[str]]] = {"batch_size": "input_batch_size"}

    @property
    def inputs(self) -> "StepColumns":
        return [INDEX_COLUMN]

    @property
    def outputs(self) -> "StepColumns":
        return list(QUERY_COLUMNS)

    def process(self, inputs: StepInput) -> "StepOutput":  # type: ignore[override]
        yield self.complete_rows(inputs)

    def completion_requests(self, rows: list[dict[str, Any]]) -> tuple[Any, list[PromptInput], list[SamplingSpec]]:
        return self.query_requests([slot[INDEX_COLUMN] for slot in rows])

    def rows_from_completions(self, rows: list[dict[str, Any]], context: Any, completions: list[list[Completion]]) -> list[dict[str, Any]]:
        for slot, row in zip(rows, self.query_rows(context, completions)):
            slot.update(row)
        return rows


class ExactDuplicateQueries(Step, Configured):
    """Marks exact duplicate queries in row order, as :class:`MagpieGenerator` does; one replica.

    :class:`MagpieQueries` replicas finish batches in any order. This step puts the rows
    back in ``query_index`` order (holding a row until every lower index has passed) and
    marks a usable query equal (case and spacing folded) to a lower-index row's
    ``duplicate``, then drops the index: the rows equal a single generator's. It keeps
    the keys seen so far, so it must run as one replica (``step_replicas`` gives it one).
    distilabel already hands a normal step its predecessor's batches in order, so rows
    stream through; a global step would do too, but distilabel 1.5 can hand a global
    step the last batch of a replicated predecessor before the others.

    Input columns:
        - query_index (int), instruction (str), instruction_status (str)

    Output columns:
        - instruction_status (str: ``duplicate`` where the query repeats an earlier row's)
    """

    config_names: ClassVar[Dict[str, Optional[str]]] = {"batch_size": "input_batch_size"}

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
    """The query stage of a recipe (call inside ``with Pipeline``); returns the step to connect on.

    ``llm`` is the generator's engine (``make_backend(cfg.backend, config.model, seed)``).
    ``replicas == 1``: one :class:`MagpieGenerator`. More: ``QuerySlots >> MagpieQueries
    >> ExactDuplicateQueries``, whose ``magpie_queries`` step Ray replicates
    (``scaleout.query_replicas``); off Ray it runs once. Both give the same rows.
    """
    shared = {"llm": llm, "seed": seed, "cache_dir": cache_dir}
    if replicas == 1:
        return MagpieGenerator.from_config(config, name="magpie_generator", **shared)
    slots = QuerySlots.from_config(config, name="query_slots")
    queries = MagpieQueries.from_config(config, name="magpie_queries", **shared)
    in_order = ExactDuplicateQueries.from_config(config, name="exact_duplicates")
    slots >> queries >> in_order
    return in_order
