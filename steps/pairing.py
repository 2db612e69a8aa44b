"""BestWorstPairing: chosen = highest reward, rejected = lowest, edge cases explicit."""

from typing import TYPE_CHECKING

from distilabel.mixins.runtime_parameters import RuntimeParameter
from distilabel.steps import StepInput

from magpie_dl.recipe.pairing import PairingRules, pair_columns
from magpie_dl.config.sections import PairingConfig
from magpie_dl.steps.base import RecipeStep
from magpie_dl.config.sections import setting

if TYPE_CHECKING:
    from distilabel.typing import StepColumns, StepOutput


class BestWorstPairing(RecipeStep):
    """Turns scored responses into a chosen/rejected pair, or a reason there is none.

    Truncated (finish reason ``length``), empty or failed responses and responses
    without a finite score are never chosen or rejected. Ties go to the lowest index.
    Rows where fewer than two responses are usable, all scores tie, or the margin is
    below ``min_margin`` get ``pair_status`` set to the reason and no pair; rows whose
    instruction was unusable get ``instruction_<status>``. Nothing is dropped here:
    the export decides where each row goes.

    Runtime parameters:
        - `min_margin`: the smallest chosen - rejected score difference kept.

    Input columns:
        - instruction (str), generations (list[str]), ratings (list[float | None]),
          finish_reasons (list[str]); optional instruction_status (str).

    Output columns:
        - chosen, rejected (list of {role, content} or None), chosen_index, rejected_index (int | None),
          chosen_score, rejected_score, score_margin (float | None), response_status (list[str]),
          pair_status (str: ``kept`` or the reason).
    """

    min_margin: RuntimeParameter[float] = setting(PairingConfig, "min_margin")  # the `pairing` section

    @property
    def inputs(self) -> "StepColumns":
        return ["instruction", "generations", "ratings", "finish_reasons"]

    @property
    def outputs(self) -> "StepColumns":
        return [
            "chosen", "rejected", "chosen_index", "rejected_index", "chosen_score",
            "rejected_score", "score_margin", "response_status", "pair_status",
        ]

    def process(self, inputs: StepInput) -> "StepOutput":  # type: ignore[override]
        rules = PairingRules(min_margin=self.min_margin)
        for row in inputs:
            row.update(pair_columns(row, rules))
        yield inputs
