"""Running the recipe script as a user would, for tests."""

from __future__ import annotations

import os
import subprocess
import sys

from magpie_dl.config.dpo import REPO_ROOT


def run_recipe_cli(*args: str, timeout: int = 600, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run ``pipelines/dpo_100k.py`` as a user would, capturing its output (``env``: extra variables)."""
    return subprocess.run(
        [sys.executable, str(REPO_ROOT / "pipelines" / "dpo_100k.py"), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO_ROOT,
        env={**os.environ, **(env or {})},
    )
