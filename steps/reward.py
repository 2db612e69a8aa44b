"""RewardScoring: every response scored by a reward model (ArmoRM in the recipe)."""

from collections import Counter
from dataclasses import asdict
from typing import TYPE_CHECKING, ClassVar, Dict, Optional

from distilabel.mixins.runtime_parameters import RuntimeParameter
from distilabel.steps import Step, StepInput
from pydantic import PrivateAttr

from magpie_dl.reasons import EMPTY_RESPONSE, FINISH_ERROR
from magpie_dl.scoring import RewardScorer, Scored, conversation_token_ids
from magpie_dl.sections import RewardConfig
from magpie_dl.store import cached_map, result_key
from steps.base import StoredResults
from steps.settings import Configured, setting

if TYPE_CHECKING:
    from distilabel.typing import StepColumns, StepOutput


class RewardScoring(Step, StoredResults, Configured):
    """Scores each (instruction, response) with a reward model, batch-invariantly.

    ArmoRM (recognised from its ``config.json``) runs on this library's implementation
    and gives its preference ``score``; any other model is a one-label sequence
    classifier and gives its logit. Inputs are the reward model's chat template over
    [user, assistant], cut at ``max_length`` tokens; batches are grouped by length.
    Empty or failed responses get no score (``None``) rather than a made-up one, and so
    do non-finite scores and ArmoRM inputs whose assistant header the cut removed; the
    reason is in ``rating_errors`` (``empty_response``, ``non_finite_score:...``,
    ``gating_tokens_missing``) and the step logs how many of each.

    Built from a recipe's ``reward`` section with ``RewardScoring.from_config(cfg.reward, ...)``.

    Attributes:
        model: reward model path or hub id.
        trust_remote_code: explicit opt-in to a model's own code, for architectures this
            library does not implement (ArmoRM never needs it).
        dtype, device: where and how the model runs.

    Runtime parameters:
        - `max_length`: truncation length in tokens (4096 in the recipe).
        - `scoring_batch_size`: most sequences per forward pass.
        - `scoring_batch_tokens`: most padded tokens (sequences x longest) per forward pass.

    Input columns:
        - instruction (str), generations (list[str]); optional finish_reasons (list[str]).

    Output columns:
        - ratings (list[float | None]), rating_truncated (list[bool]), rating_errors (list[str | None]).
    """

    role: ClassVar[str] = "reward"  # replicated by scaleout.reward_replicas

    config_names: ClassVar[Dict[str, Optional[str]]] = {
        "batch_size": "scoring_batch_size", "batch_tokens": "scoring_batch_tokens",
    }

    model: str = setting(RewardConfig, "model", default=...)  # required: no default model standalone
    trust_remote_code: bool = setting(RewardConfig, "trust_remote_code")
    # Standalone, the step runs where any machine can: the recipe's section says bfloat16 on cuda.
    dtype: str = setting(RewardConfig, "dtype", default="auto")
    device: str = setting(RewardConfig, "device", default="cpu")
    max_length: RuntimeParameter[int] = setting(RewardConfig, "max_length")
    scoring_batch_size: RuntimeParameter[int] = setting(RewardConfig, "batch_size")
    scoring_batch_tokens: RuntimeParameter[int] = setting(RewardConfig, "batch_tokens")

    _scorer: Optional[RewardScorer] = PrivateAttr(default=None)
    # 2: ArmoRM scored natively (the tiny reward model became an ArmoRM at the same path).
    CACHE_VERSION: ClassVar[str] = "2"

    def load(self) -> None:
        super().load()
        self.open_store()
        self._scorer = RewardScorer(
            self.model,
            max_length=self.max_length,
            batch_size=self.scoring_batch_size,
            batch_tokens=self.scoring_batch_tokens,
            dtype=self.dtype,
            device=self.device,
            trust_remote_code=self.trust_remote_code,
        )
        self._scorer.load()

    def unload(self) -> None:
        if self._scorer is not None:
            self._scorer.unload()
        super().unload()

    @property
    def inputs(self) -> "StepColumns":
        # finish_reasons is optional: when present, failed generations are not scored.
        return {"instruction": True, "generations": True, "finish_reasons": False}

    @property
    def outputs(self) -> "StepColumns":
        return ["ratings", "rating_truncated", "rating_errors"]

    def process(self, inputs: StepInput) -> "StepOutput":  # type: ignore[override]
        self.report_started()
        wanted = [
            (r, j)
            for r, row in enumerate(inputs)
            for j, text in enumerate(row["generations"] or [])
            if text and text.strip() and _finish(row, j) != FINISH_ERROR
        ]
        scored = self.score([(inputs[r]["instruction"], inputs[r]["generations"][j]) for r, j in wanted])
        for row in inputs:
            size = len(row["generations"] or [])
            row["ratings"], row["rating_truncated"] = [None] * size, [False] * size
            row["rating_errors"] = [None if _has_text(row, j) else EMPTY_RESPONSE for j in range(size)]
        for (r, j), result in zip(wanted, scored):
            inputs[r]["ratings"][j] = result.score
            inputs[r]["rating_truncated"][j] = result.truncated
            inputs[r]["rating_errors"][j] = result.error
        errors = Counter(result.error for result in scored if result.error)
        if errors:
            self._logger.warning(f"{sum(errors.values())} of {len(scored)} responses not scored: {dict(errors)}")
        self.report_progress(len(inputs), sum(result.num_tokens for result in scored))
        yield inputs


    def score(self, pairs: list[tuple[str, str]]) -> list[Scored]:
        """Scores through the durable store, keyed by model, exact tokens and max length."""
        tokenizer = self._scorer.tokenizer
        sequences = [conversation_token_ids(tokenizer, user, assistant) for user, assistant in pairs]
        keys = [result_key("score", self.CACHE_VERSION, self.model, self.max_length, ids) for ids in sequences]
        values = cached_map(
            self.store,
            self.name,
            keys,
            lambda missing: [asdict(s) for s in self._scorer.score_token_ids([sequences[i] for i in missing])],
        )
        return [Scored(**value) for value in values]


def _finish(row: dict, j: int) -> str | None:
    reasons = row.get("finish_reasons") or []
    return reasons[j] if j < len(reasons) else None


def _has_text(row: dict, j: int) -> bool:
    text = row["generations"][j]
    return bool(text and text.strip())
