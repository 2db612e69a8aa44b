"""A distilabel step that sends DPO pairs to the Argilla review dataset (``magpie_dl.review``)."""

# No `from __future__ import annotations`: distilabel reads the evaluated `StepInput` hint.

from typing import TYPE_CHECKING, Optional

from distilabel.mixins.runtime_parameters import RuntimeParameter
from distilabel.steps import Step, StepInput
from pydantic import Field, PrivateAttr

from magpie_dl import review
from magpie_dl.review import dataset as rd
from magpie_dl.steps.base import OptionalRuntimeParameter

if TYPE_CHECKING:
    from distilabel.typing import StepColumns, StepOutput


class PushToArgillaReview(Step):
    """Upserts each DPO row as an Argilla review record (keyed by ``uuid``) and passes it on unchanged.

    The URL and key come from ``ARGILLA_API_URL`` / ``ARGILLA_API_KEY`` at ``load()``, never from
    fields, so they stay out of ``pipeline.yaml`` and the card.

    Attributes:
        reward_agent: the author shown on the pre-filled preference suggestion.

    Runtime parameters:
        - `dataset_name`, `dataset_workspace`, `records_batch_size`: where and how to upsert.

    Input columns:
        - uuid, instruction, chosen, rejected, the scores shown to reviewers; optional tags (metadata).

    Output columns:
        - argilla_pushed (bool): whether the batch was upserted (``magpie-dl-review push`` retries).
    """

    dataset_name: RuntimeParameter[str] = Field(default=None, description="Name of the Argilla review dataset.")
    dataset_workspace: OptionalRuntimeParameter[str] = Field(
        default=None, description="Argilla workspace; None means the user's first workspace."
    )
    records_batch_size: RuntimeParameter[int] = Field(
        default=review.DEFAULT_BATCH_SIZE,
        description=f"Records per upsert request to Argilla (at most {review.MAX_BATCH_SIZE}).",
    )
    reward_agent: str = rd.DEFAULT_REWARD_AGENT

    _writer: Optional[review.ReviewDatasetWriter] = PrivateAttr(default=None)

    @property
    def inputs(self) -> "StepColumns":
        required = ["uuid", "instruction", "chosen", "rejected", "responses", "rewards_armorm"]
        required += ["chosen_index", "rejected_index", "chosen_score", "rejected_score", "score_margin"]
        optional = ["task_category", "difficulty", "input_quality", "language"]
        optional += ["gen_input_configs", "gen_response_configs"]
        return {**{name: True for name in required}, **{name: False for name in optional}}

    @property
    def outputs(self) -> "StepColumns":
        return ["argilla_pushed"]

    def load(self) -> None:
        """Connects (URL/key from the environment) and creates or reuses the dataset."""
        super().load()
        if not self.dataset_name:
            raise ValueError("PushToArgillaReview needs the runtime parameter `dataset_name`")
        self._writer = review.ReviewDatasetWriter(
            dataset_name=self.dataset_name,
            workspace=self.dataset_workspace,
            batch_size=self.records_batch_size,
            reward_agent=self.reward_agent,
        )

    def unload(self) -> None:
        self._writer = None
        super().unload()

    def process(self, inputs: StepInput) -> "StepOutput":  # type: ignore[override]
        """Upserts the batch; marks every row with whether that worked."""
        assert self._writer is not None, "load() was not called"
        try:
            self._writer.write(inputs)
            pushed = True
        except review.ReviewError as exc:
            # Already one sanitised line; the traceback would add nothing but noise.
            self._logger.warning(f"Argilla push of {len(inputs)} rows failed: {exc}")
            pushed = False
        for row in inputs:
            row["argilla_pushed"] = pushed
        yield inputs
