"""The local models directory: $MAGPIE_DL_MODELS, else the checkout's models/, with a one-line error."""

from __future__ import annotations

import os
import subprocess
import sys

from magpie_dl import paths
from magpie_dl.config.dpo import REPO_ROOT


def test_the_environment_variable_wins(monkeypatch, tmp_path):
    monkeypatch.setenv(paths.MODELS_ENV, str(tmp_path / "models"))
    assert paths.models_dir() == tmp_path / "models"
    assert paths.models_dir_problem(paths.models_dir() / "tiny") is None


def test_a_checkout_keeps_its_models_beside_the_source(monkeypatch):
    monkeypatch.delenv(paths.MODELS_ENV, raising=False)
    assert paths.CHECKOUT == REPO_ROOT and paths.models_dir() == REPO_ROOT / "models"


def test_an_installed_package_uses_a_user_cache(monkeypatch, tmp_path):
    monkeypatch.delenv(paths.MODELS_ENV, raising=False)
    monkeypatch.setattr(paths, "CHECKOUT", None)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert paths.models_dir() == tmp_path / "magpie_dl" / "models"


def test_a_file_is_refused_with_one_line(monkeypatch, tmp_path):
    afile = tmp_path / "models"
    afile.write_text("")
    monkeypatch.setenv(paths.MODELS_ENV, str(afile))
    problem = paths.models_dir_problem(paths.models_dir() / "tiny")
    assert problem == f"{paths.MODELS_ENV}={afile} is not a directory: set {paths.MODELS_ENV} to a directory for the local models"


def test_the_smoke_preset_reports_a_bad_models_dir_before_any_model_loads(tmp_path):
    afile = tmp_path / "models"
    afile.write_text("")
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "pipelines" / "dpo_100k.py"), "--preset", "smoke", "--output-dir", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=300, cwd=REPO_ROOT, env={**os.environ, paths.MODELS_ENV: str(afile)},
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1].endswith("is not a directory: set MAGPIE_DL_MODELS to a directory for the local models")
    assert not (tmp_path / "out").exists()
