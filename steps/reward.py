"""RewardScoring: every response scored by a reward model (ArmoRM in the recipe)."""

import os
from dataclasses import asdict
from typing import TYPE_CHECKING, ClassVar, Optional, Union

from distilabel.mixins.runtime_parameters import RuntimeParameter
from distilabel.steps import StepInput
from pydantic import Field, PrivateAttr

from magpie_dl.recipe.conversation import CONVERSATION, prompt_messages
from magpie_dl.run.progress import RowTally
from magpie_dl.reward.scoring import RewardScorer, Scored, conversations_token_ids, responses_to_score, set_ratings
from magpie_dl.config.sections import RewardConfig
from magpie_dl.run.store import cached_map, result_key
from magpie_dl.steps.base import DevicePlacedStep
from magpie_dl.config.sections import setting

if TYPE_CHECKING:
    from distilabel.typing import StepColumns, StepOutput

    from magpie_dl.backends.standin import StandInScorer
    from magpie_dl.backends.vllm_pooling import PoolingScorer


# The bearer token for `vllm serve` endpoints, as the responses' server backend reads it.
API_KEY_ENV = "MAGPIE_DL_API_KEY"

# What a response answers: an instruction, or (multi-turn) the conversation up to its last user turn.
Prompt = Union[str, tuple[dict[str, str], ...]]


def scored_prompt(row: dict) -> Prompt:
    """The prompt a row's responses are scored with: the whole conversation when it has more than one turn."""
    messages = prompt_messages(row)
    return messages[0]["content"] if len(messages) == 1 else tuple(messages)


class RewardScoring(DevicePlacedStep):
    """Scores each (instruction, response) with a reward model, batch-invariantly (``magpie_dl.reward``).

    A response that cannot be scored gets ``None``, never a made-up score, and a reason in ``rating_errors``.
    distilabel's ``FormatTextGenerationDPO`` cannot take a ``None`` rating: pair with
    :class:`~magpie_dl.steps.pairing.BestWorstPairing`, which leaves unscored responses out.

    Runtime parameters:
        - `max_length`: truncation in tokens; `scoring_batch_size`, `scoring_batch_tokens`: per pass.

    Input columns:
        - instruction (str), generations (list[str]); optional finish_reasons (failures are not scored),
          conversation (multi-turn: the responses answer its last user turn, and the whole chat is scored).

    Output columns:
        - ratings (list[float | None]: ArmoRM's score, or a one-label classifier's raw logit), rating_truncated
          (list[bool]: the input's end was cut at max_length or the model's limit), rating_errors
          (list[str | None]), reward_objectives (list[list[float] | None]: ArmoRM's per-objective rewards).
    """

    role: ClassVar[str] = "reward"  # replicated by scaleout.reward_replicas

    config_names = {"batch_size": "scoring_batch_size", "batch_tokens": "scoring_batch_tokens"}

    model: str = setting(RewardConfig, "model", default=...)  # required: no default model standalone
    trust_remote_code: bool = setting(RewardConfig, "trust_remote_code")
    engine: str = setting(RewardConfig, "engine")
    base_urls: list[str] = setting(RewardConfig, "base_urls")
    # Standalone, the step runs on any machine; the recipe's section says how it runs there.
    dtype: str = setting(RewardConfig, "dtype", default="auto")
    device: str = setting(RewardConfig, "device", default="cpu")
    max_length: RuntimeParameter[int] = setting(RewardConfig, "max_length")
    scoring_batch_size: RuntimeParameter[int] = setting(RewardConfig, "batch_size")
    scoring_batch_tokens: RuntimeParameter[int] = setting(RewardConfig, "batch_tokens")
    stand_in: bool = Field(False, description="Score with magpie_dl's instant stand-in (scale runs and tests: "
                           "never real scores); only the model's tokenizer is loaded.")

    _scorer: Optional[Union[RewardScorer, "StandInScorer", "PoolingScorer"]] = PrivateAttr(default=None)
    # 2: ArmoRM scored natively (the tiny reward model became an ArmoRM at the same path).
    # 3: results carry ArmoRM's per-objective rewards; inputs cut at the model's own limit.
    CACHE_VERSION: ClassVar[str] = "3"

    @property
    def gpus_per_replica(self) -> Optional[int]:
        """GPUs the placement plan reserves for one replica: none when ``vllm serve`` endpoints
        score (the model runs elsewhere); else None, which leaves it to ``device``."""
        return 0 if self.engine == "vllm" and self.base_urls else None

    def model_to_load(self) -> Union[RewardScorer, "StandInScorer", "PoolingScorer"]:
        """The reward scorer, loaded and freed in place of an ``llm``: transformers, vLLM's
        pooling runner (an engine here or ``vllm serve`` endpoints), or the stand-in."""
        if self.stand_in:
            from magpie_dl.backends.standin import StandInScorer

            self._scorer = StandInScorer(self.model, self.max_length)
            return self._scorer
        if self.engine == "vllm" and self.base_urls:
            from magpie_dl.backends.vllm_pooling import ServedPoolingScorer

            self._scorer = ServedPoolingScorer(self.model, self.base_urls, max_length=self.max_length,
                                               api_key=os.environ.get(API_KEY_ENV),
                                               trust_remote_code=self.trust_remote_code)
            return self._scorer
        # Pinned to this replica's planned device, "cuda" is that device (not device 0 for all).
        device = "cuda" if self.device.startswith("cuda") and self.pin_planned_devices() else self.device
        if self.engine == "vllm":
            from magpie_dl.backends.vllm_pooling import VLLMPoolingScorer

            self._scorer = VLLMPoolingScorer(self.model, max_length=self.max_length, dtype=self.dtype,
                                             trust_remote_code=self.trust_remote_code)
            return self._scorer
        self._scorer = RewardScorer(
            self.model,
            max_length=self.max_length,
            batch_size=self.scoring_batch_size,
            batch_tokens=self.scoring_batch_tokens,
            dtype=self.dtype,
            device=device,
            trust_remote_code=self.trust_remote_code,
        )
        return self._scorer

    @property
    def inputs(self) -> "StepColumns":
        # finish_reasons is optional: when present, failed generations are not scored.
        return {"instruction": True, "generations": True, "finish_reasons": False, CONVERSATION: False}

    @property
    def outputs(self) -> "StepColumns":
        return ["ratings", "rating_truncated", "rating_errors", "reward_objectives"]

    def process(self, inputs: StepInput) -> "StepOutput":  # type: ignore[override]
        self.report_started()
        wanted = responses_to_score(inputs)
        tally = self.row_tally(len(inputs), [r for r, _ in wanted])  # a row counts once all its responses are scored
        scored = self.score([(scored_prompt(inputs[r]), inputs[r]["generations"][j]) for r, j in wanted], tally)
        errors = set_ratings(inputs, wanted, scored)
        if errors:
            self._logger.warning(f"{sum(errors.values())} of {len(scored)} responses not scored: {dict(errors)}")
        tally.close()  # rows whose scores were all read back from the store
        yield inputs

    def score(self, pairs: list[tuple[Prompt, str]], tally: Optional[RowTally] = None) -> list[Scored]:
        """Scores through the durable store (keyed by model, exact tokens and max length);
        ``tally`` (over ``pairs``) hears of each forward pass."""
        tokenizer = self._scorer.tokenizer
        sequences = conversations_token_ids(tokenizer, pairs)
        # Never read back as the real model's (stand-in) or as another engine's scores (vLLM's pooling runner
        # agrees with transformers only within float tolerance).
        model = f"stand-in:{self.model}" if self.stand_in else f"vllm:{self.model}" if self.engine == "vllm" else self.model
        keys = [result_key("score", self.CACHE_VERSION, model, self.max_length, ids) for ids in sequences]

        def compute(missing: list[int]) -> list[dict]:
            def scored(done: list[int], tokens: int) -> None:
                if tally is not None:
                    tally.done([missing[k] for k in done], tokens)

            return [asdict(s) for s in self._scorer.score_token_ids([sequences[i] for i in missing], scored)]

        values = cached_map(self.store, self.name, keys, compute)
        return [Scored(**value) for value in values]

