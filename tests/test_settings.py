"""Each setting declared once: in its config section, reused by the step that takes the section whole."""

from __future__ import annotations

import pytest
from pydantic import BaseModel, Field, ValidationError

from magpie_dl.config.dpo import ConfigError
from magpie_dl.config.curation import build_parser, resolve
from magpie_dl.config.sections import (
    DedupSection, GeneratorConfig, InstructRewardConfig, PairingConfig, ResponsesConfig, RewardConfig,
    SelectionSection, TaggingConfig,
)
from magpie_dl.config.sections import setting
from magpie_dl.steps.curation import (
    CuratedSelection, InstructionTagging, InstructReward, LanguageTagging, NearDuplicateTagging, SafetyTagging,
)
from magpie_dl.steps.magpie import ExactDuplicateQueries, MagpieGenerator, MagpieQueries, QuerySlots
from magpie_dl.steps.turns import FollowUpQuery
from magpie_dl.steps.pairing import BestWorstPairing
from magpie_dl.steps.responses import MultiResponseGeneration
from magpie_dl.steps.reward import RewardScoring


class _Owner(BaseModel):
    rate: float = Field(0.5, gt=0.0, le=1.0, description="A rate.")
    names: list[str] = Field(default_factory=lambda: ["a"], description="Names.")


class _User(BaseModel):
    rate: float = setting(_Owner, "rate")
    names: list[str] = setting(_Owner, "names")
    loose: float = setting(_Owner, "rate", default=2.0, le=None)


def test_setting_takes_the_declarations_default_description_and_bounds():
    user = _User()
    assert (user.rate, user.names, user.loose) == (0.5, ["a"], 2.0)
    assert _User.model_fields["rate"].description == "A rate." == _User.model_fields["loose"].description
    with pytest.raises(ValidationError, match="rate"):
        _User(rate=1.5)
    with pytest.raises(ValidationError, match="loose"):
        _User(loose=0.0)  # the bound kept (gt 0); the one dropped (le 1) lets 2.0 in


# (step, the section a recipe builds it from, the section's fields the step leaves to the
# caller): a section field that reaches no step field by mistake (a rename forgotten) fails here.
TURNS = ("num_turns", "reply_temperature", "reply_max_tokens")  # read by magpie_dl.steps.turns.conversation_stage
SECTIONS = [
    (MagpieGenerator, GeneratorConfig, {"model", *TURNS}),
    (MagpieQueries, GeneratorConfig, {"model", "num_instructions", *TURNS}),
    # Turn 1's system prompts are not a later turn's; conversation_stage passes the turn settings.
    (FollowUpQuery, GeneratorConfig, {"model", "num_instructions", "system_prompt", "system_prompts", "control_task", *TURNS}),
    (QuerySlots, GeneratorConfig, set(GeneratorConfig.model_fields) - {"num_instructions", "batch_size"}),
    (ExactDuplicateQueries, GeneratorConfig, set(GeneratorConfig.model_fields) - {"batch_size"}),
    (MultiResponseGeneration, ResponsesConfig, {"model"}),
    (MultiResponseGeneration, InstructRewardConfig, {"enabled"}),
    (RewardScoring, RewardConfig, set()),
    (BestWorstPairing, PairingConfig, set()),
    (InstructionTagging, TaggingConfig, {"judge_model", "languages", "guard_model"}),
    (SafetyTagging, TaggingConfig, {"judge_model", "tasks", "max_tokens", "languages", "guard_model"}),
    (LanguageTagging, TaggingConfig, {"judge_model", "tasks", "max_tokens", "guard_model"}),
    (InstructReward, InstructRewardConfig, {"enabled", "temperature", "max_tokens"}),
    (NearDuplicateTagging, DedupSection, set()),
    (CuratedSelection, SelectionSection, set()),
]


@pytest.mark.parametrize("step,section,callers", SECTIONS, ids=lambda x: getattr(x, "__name__", ""))
def test_every_setting_of_a_section_reaches_its_step(step, section, callers):
    taken = {name for name in section.model_fields if step.config_names.get(name, name) in step.model_fields}
    assert set(section.model_fields) - taken == callers


def test_a_step_is_built_from_its_section_whole():
    section = RewardConfig(model="org/reward", max_length=77, batch_size=3, batch_tokens=99, dtype="float16",
                           device="cpu", trust_remote_code=True, input_batch_size=5)
    step = RewardScoring.from_config(section, name="reward", cache_dir="store")
    assert (step.model, step.max_length, step.scoring_batch_size, step.scoring_batch_tokens, step.dtype,
            step.device, step.trust_remote_code, step.input_batch_size, step.cache_dir) == (
        "org/reward", 77, 3, 99, "float16", "cpu", True, 5, "store")
    assert RewardScoring.from_config(section, name="r2", max_length=12).max_length == 12  # keyword arguments win


def test_a_runtime_parameter_is_its_sections_declaration():
    field, declared = MultiResponseGeneration.model_fields["temperature"], ResponsesConfig.model_fields["temperature"]
    assert (field.default, field.description) == (declared.default, declared.description)
    info = {p["name"]: p.get("description") for p in RewardScoring(model="m", name="r").get_runtime_parameters_info()}
    assert info["scoring_batch_tokens"] == RewardConfig.model_fields["batch_tokens"].description
    with pytest.raises(ValidationError, match="max_length"):
        RewardScoring(model="m", name="r", max_length=4)  # the section's bound: at least 8 tokens


def test_the_selection_section_checks_the_librarys_rules_before_the_run():
    """The recipe's selection section is the library's declaration: bad weights fail at the command line."""
    with pytest.raises(ConfigError) as err:
        resolve(build_parser("x").parse_args(["--selection.category_mix", "{Math: -1, Planning: 0}"]))
    assert str(err.value) == "--selection.category_mix: weights must be finite, >= 0, and not all 0"
