"""Up-front estimates for ``--dry-run``: prompts, tokens and GPU-hours, from stated assumptions."""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field


class EstimateConfig(BaseModel):
    """Throughput and length assumptions behind ``--dry-run``; set them from your own runs."""

    model_config = ConfigDict(extra="forbid")

    query_tokens: int = Field(120, ge=1, description="Assumed mean tokens per generated query.")
    response_tokens: int = Field(600, ge=1, description="Assumed mean tokens per response.")
    template_tokens: int = Field(40, ge=0, description="Assumed chat-template tokens around each text.")
    generation_tokens_per_gpu_s: float = Field(
        2500.0, gt=0, description="Assumed generated tokens/s per GPU (vLLM, large batches)."
    )
    scoring_tokens_per_gpu_s: float = Field(
        20000.0, gt=0, description="Assumed reward-model input tokens/s per GPU."
    )


@dataclass(frozen=True)
class Estimate:
    """What a run will ask of the hardware."""

    query_prompts: int
    response_requests: int
    reply_requests: int
    completions: int
    generated_tokens: int
    scored_sequences: int
    scored_tokens: int
    gpu_hours_queries: float
    gpu_hours_responses: float
    gpu_hours_scoring: float
    # Of the two above, what the later turns' queries and the replies to earlier turns take.
    gpu_hours_later_queries: float = 0.0
    gpu_hours_replies: float = 0.0

    @property
    def gpu_hours_generation(self) -> float:
        return self.gpu_hours_queries + self.gpu_hours_responses

    @property
    def gpu_hours(self) -> float:
        return self.gpu_hours_generation + self.gpu_hours_scoring

    def hours_by_work(self) -> dict[str, float]:
        """GPU-hours of each kind of work, keyed as the steps' roles (the placement plan's stages)."""
        return {"queries": self.gpu_hours_queries - self.gpu_hours_later_queries,
                "later_queries": self.gpu_hours_later_queries,
                "replies": self.gpu_hours_replies,
                "responses": self.gpu_hours_responses - self.gpu_hours_replies,
                "reward": self.gpu_hours_scoring}

    def lines(self) -> list[str]:
        return [
            f"query prompts: {self.query_prompts:,}",
            *([f"replies to earlier turns: {self.reply_requests:,}"] if self.reply_requests else []),
            f"response requests: {self.response_requests:,} ({self.completions:,} completions)",
            f"generated tokens: {self.generated_tokens:,}",
            f"scored sequences: {self.scored_sequences:,} ({self.scored_tokens:,} tokens)",
            f"GPU-hours: {self.gpu_hours:,.1f} (generation {self.gpu_hours_generation:,.1f}, "
            f"scoring {self.gpu_hours_scoring:,.1f})",
        ]


def estimate(
    instructions: int, responses_per_instruction: int, generate_queries: bool, assume: EstimateConfig,
    num_turns: int = 1,
) -> Estimate:
    """The work of a run of ``instructions`` conversations of ``num_turns`` user turns, the last
    answered ``responses_per_instruction`` times: every turn's query (turn 1's only when the run
    writes them), one reply to each earlier turn, and scored sequences that carry the history."""
    later = num_turns - 1
    queries = (instructions if generate_queries else 0) + instructions * later
    replies = instructions * later
    completions = instructions * responses_per_instruction
    generated = queries * assume.query_tokens + (replies + completions) * assume.response_tokens
    turn_tokens = assume.query_tokens + assume.response_tokens + assume.template_tokens
    scored_tokens = completions * turn_tokens * num_turns
    return Estimate(
        query_prompts=queries,
        response_requests=instructions,
        reply_requests=replies,
        completions=completions,
        generated_tokens=generated,
        scored_sequences=completions,
        scored_tokens=scored_tokens,
        gpu_hours_queries=queries * assume.query_tokens / assume.generation_tokens_per_gpu_s / 3600,
        gpu_hours_responses=(replies + completions) * assume.response_tokens / assume.generation_tokens_per_gpu_s / 3600,
        gpu_hours_scoring=scored_tokens / assume.scoring_tokens_per_gpu_s / 3600,
        gpu_hours_later_queries=instructions * later * assume.query_tokens / assume.generation_tokens_per_gpu_s / 3600,
        gpu_hours_replies=replies * assume.response_tokens / assume.generation_tokens_per_gpu_s / 3600,
    )
