"""distilabel's per-batch JSON copy of every step's output is not written by our runs (magpie_dl.distilabel_compat.patched)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from magpie_dl.config.dpo import REPO_ROOT

RUN = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    from distilabel.pipeline import Pipeline
    from distilabel.steps import LoadDataFromDicts
    from magpie_dl.run.driver import run_pipeline
    from tests.step_data_probe import CountCopies

    rows = [{"uuid": str(i), "text": "x" * 200} for i in range(300)]
    with Pipeline(name="copies", cache_dir=sys.argv[1]) as pipeline:
        LoadDataFromDicts(data=rows, batch_size=50) >> CountCopies(cache_dir=sys.argv[1], input_batch_size=50)
    if sys.argv[2] == "runner":
        out = run_pipeline(pipeline)
    else:  # distilabel as it is
        out = pipeline.run(use_cache=False, use_fs_to_pass_data=True)["default"]["train"]
    print(json.dumps({"rows": len(out), "copies": max(out["copies_seen"]),
                      "pipeline_unchanged": "_register_batch" not in vars(pipeline)}))
    """
)


def _run(tmp_path, how: str) -> dict:
    script = tmp_path / "copies.py"
    script.write_text(RUN)
    done = subprocess.run([sys.executable, str(script), str(tmp_path / how), how], capture_output=True, text=True,
                          timeout=300, cwd=REPO_ROOT, env={"PYTHONPATH": str(REPO_ROOT), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_run_keeps_no_copy_of_each_batch_and_loses_no_row(tmp_path):
    # distilabel alone writes one JSON copy per batch per step while the run goes on
    # (what grows to GBs at 100K; the runner removes distilabel's cache only at the end) ...
    assert _run(tmp_path, "distilabel")["copies"] >= 3
    # ... the runner's run writes none, and every row arrives.
    assert _run(tmp_path, "runner") == {"rows": 300, "copies": 0, "pipeline_unchanged": True}
