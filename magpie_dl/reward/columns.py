"""Where a run's reward scores go in the released rows, and what they mean.

The recipe's release names its score column after its model: ``rewards_armorm``. That name
stays for ArmoRM (and for the stand-in, which imitates the recipe's release); any other
reward model's scores go to ``rewards``, which claims no model, and ``reward_model`` names the
model on every row. ArmoRM's per-objective rewards go beside its score.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from magpie_dl.reward.armorm import OBJECTIVES

ARMORM_SCORES = "rewards_armorm"
ARMORM_OBJECTIVES = "rewards_armorm_objectives"
SCORES = "rewards"
MODEL = "reward_model"


@dataclass(frozen=True)
class ReleasedScores:
    """The released score columns of one run.

    Attributes:
        scores: the column of ``[{"score": x}, ...]``, one entry per response.
        objectives: ArmoRM's per-objective rewards column (one list of
            ``len(OBJECTIVES)`` floats or None per response), None for other models.
    """

    scores: str
    objectives: str | None


def released_scores(armorm: bool) -> ReleasedScores:
    """ArmoRM's released names, or the model-neutral ones for any other reward model."""
    return ReleasedScores(ARMORM_SCORES, ARMORM_OBJECTIVES) if armorm else ReleasedScores(SCORES, None)


def score_column(columns: Collection[str]) -> str | None:
    """The score column a released dataset with these ``columns`` has (None: neither)."""
    return next((name for name in (ARMORM_SCORES, SCORES) if name in columns), None)


def scale_words(columns: Collection[str]) -> str:
    """What the scores in a release with these ``columns`` are, on which scale, and what
    ``chosen`` means with them: one sentence for the card."""
    if score_column(columns) == SCORES:
        return (f"Each score (`{SCORES}`; `{MODEL}` names the model) is the raw logit of a one-label sequence "
                "classifier over the chat-templated [user, assistant] conversation: unbounded, not a probability "
                "(no sigmoid), and only differences between responses to the same instruction mean anything; "
                "higher = preferred, so `chosen` is the response this model prefers most.")
    objectives = (f"; its {len(OBJECTIVES)} per-objective rewards ({', '.join(OBJECTIVES)}, in this order) are in "
                  f"`{ARMORM_OBJECTIVES}`, to re-pair on another objective without scoring again"
                  if ARMORM_OBJECTIVES in columns else "")
    return (f"Each score (`{ARMORM_SCORES}`) is ArmoRM's preference score, a gated mix of its objectives' rewards "
            f"(about 0.1 on its scale){objectives}; higher = preferred, so `chosen` is the response it prefers most.")


def circularity_note(model: str) -> str:
    """A caution for the card when the reward model was trained on Magpie's own releases ("" if not known)."""
    if "skywork-reward" in model.lower():
        return ("Skywork-Reward's training data included the Magpie DPO series, so scoring Magpie-style responses "
                "with it may be partly circular.")
    return ""
