"""Work done is never lost at the end: a failure after every step finished is one line and exit 6,
and rerunning the same command publishes from the store (magpie_dl.run.unpublished, the runner)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from magpie_dl.config.dpo import REPO_ROOT
from magpie_dl.run.unpublished import EXIT_CODE
from tests.recipe_cli import run_recipe_cli

# The DPO recipe's real command line, with one failure put in after the steps (argv[1] says where).
FAILING_AT_THE_END = textwrap.dedent(
    """
    import sys
    from dataclasses import replace

    import magpie_dl.run.leaf_output as leaf_output
    from magpie_dl.run.recipes import DPO_100K
    from magpie_dl.run.driver import main_for
    from magpie_dl.pipelines.dpo_100k import build_pipeline

    where, argv = sys.argv[1], sys.argv[2:]
    recipe = DPO_100K
    if where == "export":
        def export(cfg, rows, staging, shown_as):
            raise OSError(28, "No space left on device (put in by the test)")
        recipe = replace(DPO_100K, export=export)
    else:  # distilabel's teardown: its write buffer fails to close
        def finish(self):
            raise OSError(28, "No space left on device (put in by the test)")

        leaf_output.LeafFiles.finish = finish
    sys.exit(main_for(recipe, build_pipeline, "test", argv))
    """
)


@pytest.mark.parametrize("where", ["teardown", "export"])
def test_a_failure_after_the_steps_is_one_line_and_the_rerun_publishes(tmp_path, where):
    script = tmp_path / "failing_at_the_end.py"
    script.write_text(FAILING_AT_THE_END)
    out = tmp_path / "out"
    args = ["--preset", "smoke", "--num-instructions", "12", "--quiet", "--output-dir", str(out)]
    failed = subprocess.run([sys.executable, str(script), where, *args], capture_output=True, text=True,
                            timeout=600, cwd=REPO_ROOT)
    assert failed.returncode == EXIT_CODE, failed.stderr[-3000:]
    lines = [line for line in failed.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in failed.stderr, failed.stderr[-3000:]
    stage = "writing the run's rows (distilabel's teardown)" if where == "teardown" else "the export"
    assert f"but {stage} failed (OSError: [Errno 28] No space left on device" in lines[0]
    assert "rerun the same command to publish" in lines[0]
    assert "No space left" in (out / "cache" / "last_failure.txt").read_text()
    assert not (out / "dataset").exists()

    rerun = run_recipe_cli(*args)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["instructions"] == 12 and (out / "dataset").is_dir()
    # Nothing was computed again: every response and score came back from the store.
    reused = next(line for line in rerun.stdout.splitlines() if "stored results reused" in line)
    for part in reused.split(":", 1)[1].split(","):
        done, total = part.split()[-1].split("/")
        assert done == total, reused
