"""MagpieGenerator: user queries written by an aligned model from its pre-query template."""

from typing import Any, Optional, TYPE_CHECKING

from distilabel.mixins.runtime_parameters import RuntimeParameter
from distilabel.steps import GeneratorStep
from pydantic import Field, PrivateAttr

from magpie_dl.backends.base import CompletionLLM, PromptInput, SamplingSpec
from magpie_dl.cleaning import CleaningRules, clean_query
from magpie_dl.families import ModelFamily, resolve_family, resolve_single_token_ids, resolve_stops
from magpie_dl.magpie import SystemPromptPlan, derive_seed, row_uuid
from magpie_dl.prompts import pre_query_token_ids
from magpie_dl.store import cached_complete
from steps.base import StoredResults

if TYPE_CHECKING:
    from distilabel.typing import GeneratorStepOutput, StepColumns

    from magpie_dl.config import BackendConfig, GeneratorConfig


class MagpieGenerator(GeneratorStep, StoredResults):
    """Synthesises user queries with Magpie: the model sees only its pre-query template.

    Emits exactly ``num_rows`` rows whatever the ``batch_size``. Each row's system prompt
    and sampling seed derive from (``seed``, row index), so a rerun reproduces the rows.
    Raw queries are cleaned; unusable ones are kept and marked with a reason.

    Attributes:
        llm: a ``CompletionLLM`` backend (transformers, vLLM, OpenAI-compatible server).
        family: model family name, or ``auto`` to detect it from the tokenizer.
        num_rows: how many queries to write.
        system_prompt: one fixed system prompt for every query.
        system_prompts: weighted categories: ``{name: (prompt or None, weight)}``.
        control_task: ``math``, ``code`` or ``translation``: a built-in system prompt.
        ban_first_token_markdown: ban the family's markdown tokens at the first position.

    Runtime parameters:
        - `batch_size`: rows per batch sent to the backend.
        - `temperature`, `top_p`, `max_tokens`, `seed`: sampling.

    Output columns:
        - uuid (str), instruction (str), raw_instruction (str), cleaning_actions (list[str]),
          instruction_status (str: ``ok`` or why unusable), system_prompt_category (str | None),
          gen_input_configs (dict: provenance).

    Examples:
        >>> gen = MagpieGenerator(llm=TransformersBackend(model="models/tiny/generator"), num_rows=8)
        >>> gen.load(); rows, last = next(gen.process())
    """

    llm: CompletionLLM
    family: str = Field(default="auto", description="Model family, or `auto` to detect it.")
    num_rows: int = Field(default=100, ge=1, description="How many queries to write.")
    system_prompt: str | None = None
    system_prompts: dict[str, tuple[str | None, float]] | None = None
    control_task: str | None = None
    ban_first_token_markdown: bool = True
    min_chars: int = Field(default=3, description="Shorter cleaned queries are marked too_short.")
    max_chars: int = Field(default=8000, description="Longer cleaned queries are marked too_long.")

    temperature: RuntimeParameter[float] = Field(default=1.0, description="Sampling temperature.")
    top_p: RuntimeParameter[float] = Field(default=1.0, description="Nucleus sampling mass.")
    max_tokens: RuntimeParameter[int] = Field(default=1024, description="Maximum query tokens.")
    seed: RuntimeParameter[int] = Field(default=0, description="Run seed; row seeds derive from it.")

    _family: Optional[ModelFamily] = PrivateAttr(default=None)
    _plan: Optional[SystemPromptPlan] = PrivateAttr(default=None)

    @classmethod
    def from_config(
        cls, config: "GeneratorConfig", backend: "BackendConfig", seed: int, **kwargs: Any
    ) -> "MagpieGenerator":
        """The step for a recipe's ``generator`` section; ``kwargs`` set the rest (name, cache_dir...)."""
        from magpie_dl.backends import make_backend

        return cls(
            llm=make_backend(backend, config.model, seed),
            family=config.family,
            num_rows=config.num_instructions,
            batch_size=config.batch_size,
            system_prompt=config.system_prompt,
            control_task=config.control_task,
            system_prompts=config.system_prompts,
            ban_first_token_markdown=config.ban_first_token_markdown,
            temperature=config.temperature,
            top_p=config.top_p,
            max_tokens=config.max_tokens,
            seed=seed,
            **kwargs,
        )

    def load(self) -> None:
        super().load()
        self.open_store()
        self._plan = SystemPromptPlan.build(self.system_prompt, self.system_prompts, self.control_task)
        self.llm.load()
        self._family = resolve_family(self.family, self.llm.tokenizer)

    def unload(self) -> None:
        self.llm.unload()
        super().unload()

    @property
    def outputs(self) -> "StepColumns":
        return [
            "uuid", "instruction", "raw_instruction", "cleaning_actions", "instruction_status",
            "system_prompt_category", "gen_input_configs",
        ]

    def sampling_spec(self, row_seed: int) -> SamplingSpec:
        """The sampling parameters of one query."""
        tokenizer, family = self.llm.tokenizer, self._family
        stops = resolve_stops(tokenizer, family.stop)
        bans = resolve_single_token_ids(tokenizer, family.first_token_ban) if self.ban_first_token_markdown else ()
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

    def process(self, offset: int = 0) -> "GeneratorStepOutput":
        rules = CleaningRules(min_chars=self.min_chars, max_chars=self.max_chars)
        seen: set[str] = set()
        for start in range(offset, self.num_rows, self.batch_size):
            indices = range(start, min(start + self.batch_size, self.num_rows))
            rows = self.write_queries(indices, rules, seen)
            self.report_progress(len(rows), sum(r["gen_input_configs"]["num_tokens"] for r in rows))
            yield rows, indices[-1] == self.num_rows - 1

    def write_queries(self, indices: range, rules: CleaningRules, seen: set[str]) -> list[dict[str, Any]]:
        """Sample, clean and annotate the queries of rows ``indices``."""
        tokenizer, family = self.llm.tokenizer, self._family
        picks = [self._plan.pick(self.seed, i) for i in indices]
        prompts, specs = [], []
        for i, (_, system) in zip(indices, picks):
            prompts.append(PromptInput(tuple(pre_query_token_ids(tokenizer, family, system))))
            specs.append(self.sampling_spec(derive_seed("query", self.seed, i)))
        completions = cached_complete(self.store, self.name, self.CACHE_VERSION, self.llm, prompts, specs)
        rows = []
        for i, (category, system), spec, [completion] in zip(indices, picks, specs, completions):
            cleaned = clean_query(completion.text, rules)
            status = cleaned.reason or _status_of(completion.finish_reason)
            key = " ".join(cleaned.instruction.lower().split())
            if status == "ok" and key in seen:
                status = "duplicate"  # an exact copy of an earlier row's query
            seen.add(key)
            rows.append(
                {
                    "uuid": row_uuid(self.llm.model_name, self.seed, i),
                    "instruction": cleaned.instruction,
                    "raw_instruction": completion.text,
                    "cleaning_actions": list(cleaned.actions),
                    "instruction_status": status,
                    "system_prompt_category": category,
                    "gen_input_configs": {
                        "input_generator": self.llm.model_name,
                        "temperature": spec.temperature,
                        "top_p": spec.top_p,
                        "max_tokens": spec.max_tokens,
                        "seed": spec.seed,
                        "pre_query_template": family.pre_query_prompt(system),
                        "family": family.name,
                        "finish_reason": completion.finish_reason,
                        "num_tokens": completion.num_tokens,
                    },
                }
            )
        return rows


def _status_of(finish_reason: str) -> str:
    """A query that hit max_tokens or failed is not a finished query."""
    return {"stop": "ok", "length": "truncated"}.get(finish_reason, "generation_failed")
