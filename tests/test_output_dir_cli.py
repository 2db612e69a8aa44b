"""Each directory a run may not use, through the recipe scripts as a user runs them:
one line, exit 2, before any model loads, and nothing of the user's touched."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from magpie_dl.config.dpo import REPO_ROOT
from output_dirs import snapshot, users_files
from recipe_cli import run_recipe_cli


def refused(result: subprocess.CompletedProcess, text: str) -> None:
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --output-dir") and text in lines[0], result.stderr
    assert "Traceback" not in result.stderr


SMOKE = ("--preset", "smoke", "--num-instructions", "4")


def test_fresh_never_touches_a_users_directory(tiny_models, tmp_path):
    mine = users_files(tmp_path / "mine")
    before = snapshot(mine)
    refused(run_recipe_cli(*SMOKE, "--output-dir", str(mine), "--fresh", timeout=300),
            "holds no run of this project")
    assert snapshot(mine) == before


def test_a_curated_set_is_never_overwritten_by_its_own_pairing_run(tiny_models, tmp_path):
    from datasets import Dataset

    curated = tmp_path / "curated"
    Dataset.from_list([{"uuid": "a", "instruction": "Say hi."}]).save_to_disk(str(curated / "dataset"))
    before = snapshot(curated)
    refused(run_recipe_cli(*SMOKE, "--instructions", str(curated / "dataset"), "--output-dir", str(curated),
                           timeout=300), "holds this run's input")
    assert snapshot(curated) == before


def test_the_working_directory_with_other_files_is_refused(tiny_models, tmp_path):
    work = users_files(tmp_path / "work")
    before = snapshot(work)
    result = subprocess.run([sys.executable, str(REPO_ROOT / "pipelines" / "dpo_100k.py"), *SMOKE, "--output-dir", "."],
                            capture_output=True, text=True, timeout=300, cwd=work)
    refused(result, "holds no run of this project")
    assert snapshot(work) == before


@pytest.mark.parametrize("where", ["file", "under_file", "proc"])
def test_bad_places_are_one_line_before_any_model_loads(tiny_models, tmp_path, where):
    (tmp_path / "file").write_text("x")
    out = {"file": tmp_path / "file", "under_file": tmp_path / "file" / "out", "proc": Path("/proc/magpie_dl_out")}
    refused(run_recipe_cli(*SMOKE, "--output-dir", str(out[where]), timeout=300), "")


def test_the_curation_recipe_refuses_a_users_directory(tiny_models, tmp_path):
    mine = users_files(tmp_path / "mine")
    before = snapshot(mine)
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "pipelines" / "magpie_instructions.py"), "--preset", "smoke",
         "--output-dir", str(mine)], capture_output=True, text=True, timeout=300, cwd=REPO_ROOT)
    refused(result, "holds no run of this project")
    assert snapshot(mine) == before


@pytest.mark.slow
def test_an_empty_working_directory_is_a_fine_output_dir(tiny_models, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    result = subprocess.run([sys.executable, str(REPO_ROOT / "pipelines" / "dpo_100k.py"), *SMOKE,
                             "--responses.num_generations", "2", "--output-dir", "."],
                            capture_output=True, text=True, timeout=600, cwd=work)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (work / "dataset" / "dataset_dict.json").exists() and (work / "README.md").exists()
    assert not [p.name for p in work.iterdir() if p.name.startswith(".") and p.name not in (".lock", ".magpie_dl.json")]
