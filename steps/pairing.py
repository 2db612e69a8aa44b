"""BestWorstPairing: chosen = highest reward, rejected = lowest, edge cases explicit."""

from typing import TYPE_CHECKING

from distilabel.mixins.runtime_parameters import RuntimeParameter
from distilabel.steps import Step, StepInput
from pydantic import Field

from magpie_dl.pairing import PairingRules, pick_best_worst

if TYPE_CHECKING:
    from distilabel.typing import StepColumns, StepOutput

KEPT = "kept"


class BestWorstPairing(Step):
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

    min_margin: RuntimeParameter[float] = Field(default=0.0, description="Smallest score margin kept.")

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
            pair = pick_best_worst(row["generations"], row["ratings"], row["finish_reasons"], rules)
            status = row.get("instruction_status", "ok")
            row["pair_status"] = f"instruction_{status}" if status != "ok" else (pair.reason or KEPT)
            row["response_status"] = list(pair.statuses)
            kept = row["pair_status"] == KEPT
            row["chosen_index"] = pair.chosen_index if kept else None
            row["rejected_index"] = pair.rejected_index if kept else None
            row["chosen_score"] = pair.chosen_score if kept else None
            row["rejected_score"] = pair.rejected_score if kept else None
            row["score_margin"] = pair.margin if kept else None
            row["chosen"] = _messages(row, pair.chosen_index) if kept else None
            row["rejected"] = _messages(row, pair.rejected_index) if kept else None
        yield inputs


def _messages(row: dict, index: int) -> list[dict[str, str]]:
    return [
        {"role": "user", "content": row["instruction"]},
        {"role": "assistant", "content": row["generations"][index]},
    ]
