"""Released score columns: ArmoRM keeps its released name and its per-objective rewards; any other
reward model's scores go to a column that claims no model, and the card says which model, on
which scale, and what ``chosen`` means. ArmoRM on vLLM is refused before anything loads."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml

from magpie_dl.config.dpo import RecipeConfig
from magpie_dl.release import report
from magpie_dl.release.export import write_dataset
from magpie_dl.reward.armorm import OBJECTIVES
from magpie_dl.reward.columns import released_scores
from magpie_dl.reward.scoring import RewardScorer
from recipe_cli import run_recipe_cli
from test_report import _rows


def _release(out: Path, reward_model: str, armorm: bool) -> Path:
    rows = _rows(12, tagged=False, seed=5)
    for row in rows:
        n = len(row["generations"] or [])
        row["reward_objectives"] = [[0.5] * len(OBJECTIVES) for _ in range(n)] if armorm else [None] * n
    cfg = RecipeConfig.model_validate({"output": {"dir": str(out), "test_fraction": 0.1},
                                       "reward": {"model": reward_model}}).public_dict()
    write_dataset(rows, out, test_fraction=0.1, seed=7, models=report.models_of(cfg), scores=released_scores(armorm))
    (out / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    report.write_card_and_report(out)
    return out


def test_a_classifiers_scores_do_not_claim_armorm_and_the_card_says_what_they_are(tmp_path):
    from datasets import load_from_disk

    out = _release(tmp_path / "out", "Skywork/Skywork-Reward-V2-Llama-3.1-8B", armorm=False)
    train = load_from_disk(str(out / "dataset"))["train"]
    assert "rewards_armorm" not in train.column_names and "rewards_armorm_objectives" not in train.column_names
    assert "rewards" in train.column_names and set(train["reward_model"]) == {"Skywork/Skywork-Reward-V2-Llama-3.1-8B"}
    row = train[0]
    assert [entry["score"] for entry in row["rewards"]][row["chosen_index"]] == row["chosen_score"]
    card = (out / "README.md").read_text()
    scores = card.split("## Scores", 1)[1].split("\n## ", 1)[0]
    assert "Reward model: `Skywork/Skywork-Reward-V2-Llama-3.1-8B`" in scores
    assert "raw logit" in scores and "unbounded" in scores and "`chosen` is the response this model prefers most" in scores
    assert "may be partly circular" in scores  # Skywork-Reward was trained on Magpie's DPO releases


def test_armorm_keeps_its_released_column_and_its_objectives(tmp_path):
    from datasets import load_from_disk

    out = _release(tmp_path / "out", "RLHFlow/ArmoRM-Llama3-8B-v0.1", armorm=True)
    train = load_from_disk(str(out / "dataset"))["train"]
    assert "rewards_armorm" in train.column_names and "rewards" not in train.column_names
    objectives = train[0]["rewards_armorm_objectives"]
    assert len(objectives) == len(train[0]["responses"]) and all(len(o) == len(OBJECTIVES) for o in objectives if o)
    scores = (out / "README.md").read_text().split("## Scores", 1)[1].split("\n## ", 1)[0]
    assert "`RLHFlow/ArmoRM-Llama3-8B-v0.1`" in scores and "`rewards_armorm_objectives`" in scores
    assert "helpsteer-helpfulness" in scores and "circular" not in scores


def test_armorm_objectives_are_its_regression_outputs(tiny_models):
    """The stored objectives are the tiny ArmoRM's regression layer at the last token of each input,
    computed again here by the model alone."""
    import torch

    from magpie_dl.reward.armorm_modules import load
    from magpie_dl.reward.scoring import conversation_token_ids

    scorer = RewardScorer(tiny_models["reward"], max_length=512, batch_size=4, dtype="float32")
    scorer.load()
    pairs = [("How do I bake bread?", "Mix flour, water and salt."), ("Why?", "Because " * 30)]
    scored = scorer.score_pairs(pairs)
    model = load(tiny_models["reward"], dtype=torch.float32)
    for pair, result in zip(pairs, scored):
        ids = conversation_token_ids(scorer.tokenizer, *pair)
        with torch.inference_mode():
            hidden = model.model(input_ids=torch.tensor([ids])).last_hidden_state[0, -1]
            expected = model.regression_layer(hidden).tolist()
        assert result.objectives is not None and len(result.objectives) == len(OBJECTIVES) == len(expected)
        assert all(math.isclose(a, b, rel_tol=1e-4, abs_tol=1e-4) for a, b in zip(result.objectives, expected))


def test_armorm_on_vllm_is_refused_before_anything_loads(tmp_path, tiny_models):
    out = tmp_path / "never"
    result = run_recipe_cli("--preset", "smoke", "--output-dir", str(out), "--reward.engine", "vllm")
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "is ArmoRM, which vLLM does not serve; use --reward.engine transformers" in lines[0]
    assert not out.exists()


def test_pooling_endpoints_without_the_vllm_engine_are_refused(tiny_classifiers):
    from magpie_dl.config.dpo import ConfigError
    from magpie_dl.run.recipes import DPO_100K

    cfg = RecipeConfig.model_validate({"reward": {"model": tiny_classifiers["llama"], "base_urls": ["http://127.0.0.1:9"]}})
    with pytest.raises(ConfigError, match="add --reward.engine vllm"):
        DPO_100K.check(cfg)
    DPO_100K.check(cfg.model_copy(update={"reward": cfg.reward.model_copy(update={"engine": "vllm"})}))


def test_a_reward_model_on_served_endpoints_holds_no_gpu_in_the_plan():
    """A pooling model is a GPU step like the others (one per replica on cuda), unless it is served elsewhere."""
    from magpie_dl.run.scaleout import engine_gpus
    from magpie_dl.steps.reward import RewardScoring

    cfg = RecipeConfig()
    local = RewardScoring(name="reward_local", model="org/rm", engine="vllm", device="cuda")
    served = RewardScoring(name="reward_served", model="org/rm", engine="vllm", device="cuda",
                           base_urls=["http://127.0.0.1:8000"])
    assert (engine_gpus(local, cfg), engine_gpus(served, cfg)) == (1, 0)
