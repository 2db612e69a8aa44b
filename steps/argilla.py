"""A distilabel step that sends DPO pairs to the Argilla review dataset (``magpie_dl.review``).

No ``from __future__ import annotations`` here: distilabel finds the input parameter of
``process`` by its evaluated ``StepInput`` annotation, and a string annotation hides it.
"""

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
    """Upserts each DPO row as a review record in Argilla and passes the rows on unchanged.

    The dataset is created on ``load()``, or reused when one with the same settings exists (one
    with other settings stops the pipeline at load with a one-line error). Each incoming batch is
    upserted in requests of ``records_batch_size`` records, retried on transient failures, keyed by
    the row ``uuid`` so a rerun updates records instead of duplicating them.

    The server URL and key are read from ``ARGILLA_API_URL`` / ``ARGILLA_API_KEY`` in ``load()``.
    They are deliberately not step attributes, so they never end up in ``pipeline.yaml`` or the
    Distiset card.

    Attributes:
        reward_agent: the name shown as the author of the pre-filled preference suggestion.

    Runtime parameters:
        - `dataset_name`: the Argilla dataset to write to.
        - `dataset_workspace`: its workspace; `None` means the user's first workspace.
        - `records_batch_size`: records per upsert request (at most 500).

    Input columns:
        - uuid (`str`): the record id.
        - instruction (`str`), chosen / rejected (`list[dict]`): the pair.
        - responses (`list[str]`), rewards_armorm (`list[dict]`), chosen_index / rejected_index
          (`int`), chosen_score / rejected_score / score_margin (`float`): shown to reviewers.
        - optional tags: task_category, difficulty, input_quality, language,
          gen_input_configs, gen_response_configs (become metadata when present).

    Output columns:
        - argilla_pushed (`bool`): True once the row's batch was upserted; False when the push
          failed for a reason ``magpie_dl.review`` reports (logged once per batch). A row whose
          push crashed unexpectedly gets None from distilabel. The rows themselves are unchanged,
          so a failed push loses nothing: rerun ``python -m magpie_dl.review push`` later.

    Examples:
        >>> step = PushToArgillaReview(dataset_name="magpie-review")  # doctest: +SKIP
        >>> step.load()  # doctest: +SKIP
        >>> rows = next(step.process(dpo_rows))  # doctest: +SKIP
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
