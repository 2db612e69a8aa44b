"""BestWorstPairing: chosen = highest reward, rejected = lowest (or by another policy), edge cases explicit."""

from typing import TYPE_CHECKING, ClassVar, Mapping, Optional

from distilabel.mixins.runtime_parameters import RuntimeParameter
from distilabel.steps import StepInput

from magpie_dl.recipe.pairing import MIN, PairingRules, pair_columns
from magpie_dl.config.sections import PairingConfig
from magpie_dl.steps.base import RecipeStep
from magpie_dl.config.sections import setting

if TYPE_CHECKING:
    from distilabel.typing import StepColumns, StepOutput


class BestWorstPairing(RecipeStep):
    """Turns scored responses into a chosen/rejected pair, or the reason there is none
    (rules: ``magpie_dl.recipe.pairing``). Nothing is dropped: the export decides where rows go.

    Runtime parameters:
        - `min_margin`: the smallest chosen - rejected score difference kept.
        - `rejected_policy`: how the rejected response is picked (``min``, the reference, or
          ``mean_minus_2sd``); the config's ``pairing.rejected``.

    Input columns:
        - instruction, generations, ratings; optional finish_reasons (missing: unknown, not truncated),
          instruction_status.

    Output columns:
        - chosen, rejected (list of {role, content} or None), chosen_index, rejected_index, chosen_score,
          rejected_score, score_margin (None without a pair), response_status, pair_status (``kept`` or why not);
          with a policy other than ``min``, gen_response_configs gains ``pairing_rejected`` (the policy).
    """

    min_margin: RuntimeParameter[float] = setting(PairingConfig, "min_margin")  # the `pairing` section
    # Not `rejected`: that is the output column.
    rejected_policy: RuntimeParameter[str] = setting(PairingConfig, "rejected")

    config_names: ClassVar[Mapping[str, Optional[str]]] = {**RecipeStep.config_names, "rejected": "rejected_policy"}

    @property
    def inputs(self) -> "StepColumns":
        return {"instruction": True, "generations": True, "ratings": True, "finish_reasons": False}

    @property
    def outputs(self) -> "StepColumns":
        recorded = ["gen_response_configs"] if self.rejected_policy != MIN else []  # see pair_columns
        return [
            "chosen", "rejected", "chosen_index", "rejected_index", "chosen_score",
            "rejected_score", "score_margin", "response_status", "pair_status", *recorded,
        ]

    def process(self, inputs: StepInput) -> "StepOutput":  # type: ignore[override]
        rules = PairingRules(min_margin=self.min_margin, rejected=self.rejected_policy)
        for row in inputs:
            row.update(pair_columns(row, rules))
        yield inputs
