"""A card a researcher can publish unchanged, and the summary beside it.

Real output directories: rows built here go through the real pairing step and the real
``write_dataset`` / ``write_card_and_report``; the models are local directories, with and
without the manifest that names their hub id, as a preset's models are.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from magpie_dl.config.dpo import REPO_ROOT, RecipeConfig
from magpie_dl.release import report
from magpie_dl.release.export import write_dataset
from test_report import _rows, assert_card_valid

SMOL_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
# SmolLM2's query prompt: its template writes a default system block when a conversation has none.
SMOL_PROMPT = ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
               "<|im_start|>user\n")


def _model_dir(root: Path, name: str, hub_id: str | None) -> Path:
    folder = root / "models" / name
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    if hub_id:
        (folder / "magpie_dl_model.json").write_text(json.dumps({"model": hub_id}))
    return folder


def _write(out: Path, rows: list[dict[str, Any]], cfg_overrides: dict[str, Any]) -> Path:
    cfg = RecipeConfig.model_validate({"output": {"dir": str(out), "test_fraction": 0.1}, **cfg_overrides}).public_dict()
    write_dataset(rows, out, test_fraction=0.1, seed=7, models=report.models_of(cfg))
    (out / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    report.write_card_and_report(out)
    return out


@pytest.fixture(scope="module")
def smol_output(tmp_path_factory) -> Path:
    """The demo's shape: SmolLM2 converted locally (a manifest names its id), family auto in the
    config, resolved to chatml in the rows, whose query prompt carries SmolLM2's system block."""
    root = tmp_path_factory.mktemp("smol")
    generator = _model_dir(root, "smollm2", SMOL_ID)
    reward = _model_dir(root, "reward", None)
    rows = _rows(24, tagged=False, seed=3)
    for row in rows:
        row["gen_input_configs"] = {"input_generator": SMOL_ID, "temperature": 1.0, "top_p": 1.0,
                                    "family": "chatml", "pre_query_template": SMOL_PROMPT}
    return _write(root / "out", rows, {"generator": {"model": str(generator), "family": "auto"},
                                       "reward": {"model": str(reward)}})


@pytest.fixture(scope="module")
def local_output(tmp_path_factory) -> Path:
    """Models in local folders that name no hub id."""
    root = tmp_path_factory.mktemp("local")
    generator = _model_dir(root, "my-generator", None)
    reward = _model_dir(root, "my-reward", None)
    rows = _rows(12, tagged=False, seed=4)
    for row in rows:
        row["gen_input_configs"] = {"input_generator": "models/my-generator", "family": "llama-3.1",
                                    "pre_query_template": "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n"}
    return _write(root / "out", rows, {"generator": {"model": str(generator)}, "reward": {"model": str(reward)}})


def _section(text: str, title: str) -> str:
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, flags=re.S | re.M)
    assert match, f"no '## {title}' section"
    return match.group(1)


def test_card_names_models_by_hub_id_never_by_local_path(smol_output: Path) -> None:
    card = assert_card_valid(smol_output)
    text = (smol_output / "README.md").read_text()
    root = str(smol_output.parent)
    assert root not in text, "a local path reached the card"
    assert f"| instructions | `{SMOL_ID}` |" in text and f"| responses | `{SMOL_ID}` |" in text
    assert "| reward | `reward (local)` |" in text
    assert f"`{SMOL_ID}` continues its own pre-query template" in _section(text, "Recipe")
    # The licence of the model that wrote the text, and a title from the recipe, not a folder name.
    assert card.data.license == "apache-2.0"
    assert card.data.pretty_name == "Magpie DPO pairs from SmolLM2-135M-Instruct (dpo_100k recipe)"
    assert "license of the text" not in text


def test_local_models_without_an_id_show_their_folder_name(local_output: Path) -> None:
    card = assert_card_valid(local_output)
    text = (local_output / "README.md").read_text()
    assert str(local_output.parent) not in text and "/models/" not in text
    assert "| instructions | `my-generator (local)` |" in text and "| reward | `my-reward (local)` |" in text
    assert "the license of the text written by my-generator (local) is not known" in text
    assert card.data.license == "other"
    assert card.data.pretty_name == "Magpie DPO pairs (dpo_100k recipe)"
    config = yaml.safe_load(re.search(r"## Resolved config\n\n```yaml\n(.*?)```", text, flags=re.S).group(1))
    assert config["generator"]["model"] == "my-generator (local)" and config["output"]["dir"] == "out (local)"


def test_family_and_system_prompt_lines_say_what_the_rows_say(smol_output: Path, local_output: Path) -> None:
    smol = _section((smol_output / "README.md").read_text(), "Recipe")
    assert "family `chatml`" in smol and "family `auto`" not in smol
    assert "no system prompt," not in smol and "default system block" in smol
    local = _section((local_output / "README.md").read_text(), "Recipe")
    assert "family `llama-3.1`, no system prompt)" in local
    assert "The query prompt of these rows:\n\n```text\n<|im_start|>system\nYou are a helpful AI" in (
        smol_output / "README.md").read_text()
    assert "`extract_input`" in (smol_output / "README.md").read_text()


def test_card_has_limitations_and_a_trl_snippet(smol_output: Path) -> None:
    text = (smol_output / "README.md").read_text()
    limits = _section(text, "Limitations")
    assert "reward model" in limits and "longer" in limits and "not tagged" in limits
    usage = _section(text, "Usage")
    assert "from trl import DPOConfig, DPOTrainer" in usage and 'select_columns(["chosen", "rejected"])' in usage
    assert "DPOTrainer(" in usage and "train_dataset=train" in usage
    compile(re.findall(r"```python\n(.*?)```", usage, flags=re.S)[-1], "trl_snippet", "exec")


def test_usage_snippet_loads_the_local_dataset(smol_output: Path) -> None:
    """The card's first snippet, run as written in the directory that holds the card."""
    usage = _section((smol_output / "README.md").read_text(), "Usage")
    snippet = re.findall(r"```python\n(.*?)```", usage, flags=re.S)[0]
    assert "load_dataset(" not in snippet  # load_dataset(DIR) fails on a save_to_disk directory
    check = snippet + "\nprint(json.dumps({k: len(v) for k, v in ds.items()}), pair['chosen'][-1]['role'])\n"
    result = subprocess.run([sys.executable, "-c", "import json\n" + check], cwd=smol_output,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    sizes, role = result.stdout.strip().rsplit(" ", 1)
    summary = json.loads((smol_output / "summary.json").read_text())
    assert json.loads(sizes) == summary["splits"] and role == "assistant"


def test_usage_after_a_push_names_the_repo(smol_output: Path, tmp_path: Path) -> None:
    out = tmp_path / "pushed"
    shutil.copytree(smol_output, out)
    report.write_card(out, repo_id="someone/smol-pairs")
    usage = _section((out / "README.md").read_text(), "Usage")
    assert 'load_dataset("someone/smol-pairs")' in usage and 'load_from_disk("dataset")' in usage
    assert 'load_dataset("someone/smol-pairs", split="train")' in usage


def test_summary_has_models_seed_and_score_statistics(smol_output: Path) -> None:
    from datasets import load_from_disk

    summary = json.loads((smol_output / "summary.json").read_text())
    assert summary["seed"] == 7
    assert summary["models"]["instructions"] == SMOL_ID and summary["models"]["reward"] == "reward (local)"
    pairs = load_from_disk(str(smol_output / "dataset"))
    for column in ("chosen_score", "rejected_score", "score_margin"):
        values = [v for split in pairs.values() for v in split[column]]
        stats = summary["scores"][column]
        assert stats["n"] == len(values) == summary["pairs_kept"]
        assert stats["mean"] == pytest.approx(sum(values) / len(values), rel=1e-9)
        assert (stats["min"], stats["max"]) == (min(values), max(values))
    # Counts are unchanged beside them.
    assert {"instructions", "usable_instructions", "responses", "pairs_kept", "left_out", "splits"} <= set(summary)


def _compare(a: Path, b: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(REPO_ROOT / "scripts" / "compare_runs.py"), str(a), str(b)],
                          capture_output=True, text=True, timeout=120)


def test_compare_runs_ignores_timings_only(smol_output: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    shutil.copytree(smol_output, again)
    summary = json.loads((again / "summary.json").read_text())
    summary["timings"] = {"run_s": 123.4, "steps": {"responses": {"first_result_s": 1.0, "last_result_s": 9.0}}}
    (again / "summary.json").write_text(json.dumps(summary))
    result = _compare(smol_output, again)
    assert result.returncode == 0 and "IDENTICAL" in result.stdout, result.stderr[-2000:]
    summary["scores"]["score_margin"]["mean"] += 1.0
    (again / "summary.json").write_text(json.dumps(summary))
    assert _compare(smol_output, again).returncode != 0


def test_curation_recipe_writes_its_card_and_report(tmp_path: Path) -> None:
    """The curation recipe's export (as the driver calls it) writes README.md and report.html too."""
    from datasets import Dataset

    from magpie_dl.config.curation import build_parser, resolve
    from magpie_dl.run.recipes import MAGPIE_INSTRUCTIONS
    from report_pages import blank_reason, embedded_plots, parse
    from test_curation_outputs import curated_rows

    cfg = resolve(build_parser("x").parse_args(["--preset", "smoke", "--output-dir", str(tmp_path / "out")]))
    staging = tmp_path / "staging"
    staging.mkdir()
    selection = {"input_rows": 2, "selected_rows": 1, "dropped": {"near_duplicate": 1},
                 "category_mix_before": {"Coding & Debugging": 2}, "category_mix_after": {"Coding & Debugging": 1}}
    (staging / "selection.json").write_text(json.dumps(selection))
    curated = MAGPIE_INSTRUCTIONS.export(cfg, Dataset.from_list(curated_rows()), staging, tmp_path / "out")
    assert curated.selected == 1
    card = (staging / "README.md").read_text()
    assert str(tmp_path) not in card and "/models/" not in card
    assert "**1 instructions** selected" in card and "| `near_duplicate` | 1 |" in card
    assert "| instructions | `generator (local)` |" in card and 'load_from_disk("dataset")' in card
    plots = embedded_plots(parse(staging / "report.html"))
    assert set(plots) == {"task_category", "difficulty", "input_quality"}
    assert all(blank_reason(png) is None for png in plots.values())
