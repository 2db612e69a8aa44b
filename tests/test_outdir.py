"""The output directory is the run's alone: whose it is, what lands in it, and when
(:mod:`magpie_dl.run.outdir`; the recipe scripts' side is in test_output_dir_cli.py)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from magpie_dl.run import outdir
from magpie_dl.run.outdir import MARKER, OutputDirError, check_output_dir, claim, publish, release, remove_stale_staging
from output_dirs import snapshot, users_files


# ------------------------------------------------------------------ rules


def test_new_and_empty_directories_are_accepted_and_marked(tmp_path):
    assert check_output_dir(tmp_path / "new" / "deeper", "dpo_100k") == tmp_path / "new" / "deeper"
    assert not (tmp_path / "new").exists()  # checking writes nothing
    path = claim(tmp_path / "new" / "deeper", "dpo_100k")
    assert json.loads((path / MARKER).read_text())["recipe"] == "dpo_100k"
    claim(tmp_path / "new" / "deeper", "dpo_100k")  # a run of the same recipe: again
    (tmp_path / "empty").mkdir()
    claim(tmp_path / "empty", "dpo_100k")


def test_a_directory_with_other_files_is_refused(tmp_path):
    users_files(tmp_path / "mine")
    with pytest.raises(OutputDirError, match="not empty and holds no run of this project"):
        check_output_dir(tmp_path / "mine", "dpo_100k")


def test_another_recipes_directory_is_refused(tmp_path):
    claim(tmp_path / "curated", "magpie_instructions")
    with pytest.raises(OutputDirError, match="holds a run of the magpie_instructions recipe"):
        check_output_dir(tmp_path / "curated", "dpo_100k")


def test_the_output_never_holds_the_input(tmp_path):
    source = tmp_path / "d" / "dataset"
    source.mkdir(parents=True)
    for out, given in ((tmp_path / "d", source), (source, source), (source / "sub", source)):
        with pytest.raises(OutputDirError, match="holds this run's input"):
            check_output_dir(out, "dpo_100k", [str(given)])
    check_output_dir(tmp_path / "other", "dpo_100k", [str(source), None, "someone/hub-dataset"])


def test_files_and_unwritable_places_are_one_line(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputDirError, match="is a file, not a directory"):
        check_output_dir(tmp_path / "file", "dpo_100k")
    with pytest.raises(OutputDirError, match="which is a file"):
        check_output_dir(tmp_path / "file" / "out", "dpo_100k")
    with pytest.raises(OutputDirError, match="cannot be written"):
        claim("/proc/magpie_dl_out", "dpo_100k")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through a read-only mode")
def test_a_read_only_directory_is_one_line(tmp_path):
    parent = tmp_path / "ro"
    parent.mkdir()
    parent.chmod(0o555)
    with pytest.raises(OutputDirError, match="cannot be written"):
        claim(parent / "out", "dpo_100k")


# ------------------------------------------------------------------ releases


def release_files(root: Path, tag: str) -> None:
    (root / "dataset").mkdir()
    (root / "dataset" / "rows.txt").write_text(tag)
    for name in ("README.md", "config.yaml", "summary.json"):
        (root / name).write_text(tag)


def test_a_release_replaces_the_previous_one_whole(tmp_path):
    out = claim(tmp_path / "out", "dpo_100k")
    with release(out) as first:
        release_files(first.path, "one")
        (first.path / "report.html").write_text("one")
        first.publish()
    with release(out) as second:
        release_files(second.path, "two")
        second.publish()
    assert (out / "dataset" / "rows.txt").read_text() == (out / "README.md").read_text() == "two"
    assert not (out / "report.html").exists()  # nothing of the older release outlives it
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [MARKER, "dataset", "README.md", "config.yaml", "summary.json"])


def test_an_unpublished_release_changes_nothing(tmp_path):
    out = claim(tmp_path / "out", "dpo_100k")
    with release(out) as first:
        release_files(first.path, "one")
        first.publish()
    before = snapshot(out)
    with pytest.raises(KeyboardInterrupt):
        with release(out) as second:
            release_files(second.path, "two")
            raise KeyboardInterrupt
    with release(out) as third:
        release_files(third.path, "three")  # never published
    assert snapshot(out) == before


def test_stale_staging_of_dead_runs_is_removed(tmp_path):
    out = claim(tmp_path / "out", "dpo_100k")
    for name in (".dataset.tmp-4242", ".left_out.old-4242", ".release-4243", ".replaced-4243"):
        (out / name).mkdir()
        (out / name / "x").write_text("stale")
    (out / ".released-4242.arrow").write_text("stale")
    (out / ".summary.json.tmp-4242").write_text("stale")
    (out / ".hidden-but-mine").write_text("user")  # not a staging name: kept
    removed = remove_stale_staging(out)
    assert len(removed) == 6
    assert sorted(p.name for p in out.iterdir()) == sorted([MARKER, ".hidden-but-mine"])


def test_a_complete_release_cut_short_is_finished_by_the_next_run(tmp_path):
    out = claim(tmp_path / "out", "dpo_100k")
    with release(out) as first:
        release_files(first.path, "one")
        first.publish()
    staging = out / ".release-999999"
    staging.mkdir()
    release_files(staging, "two")
    # The run died after the mark and the first move: README.md is already in place.
    (staging / ".complete").write_text(json.dumps(sorted(p.name for p in staging.iterdir())))
    (out / ".replaced-999999").mkdir()
    (out / "README.md").rename(out / ".replaced-999999" / "README.md")  # (the old one, moved aside)
    (staging / "README.md").rename(out / "README.md")
    remove_stale_staging(out)
    assert all((out / name).read_text() == "two" for name in ("README.md", "config.yaml", "summary.json"))
    assert (out / "dataset" / "rows.txt").read_text() == "two"
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [MARKER, "dataset", "README.md", "config.yaml", "summary.json"])


def test_in_progress_state_lives_apart_and_says_so(tmp_path):
    out = claim(tmp_path / "out", "dpo_100k")
    folder = outdir.start_in_progress(out)
    assert folder == out / "cache" / "in_progress"
    assert "In progress" in (folder / "NOTE.txt").read_text()
    (folder / "config.yaml").write_text("seed: 1\n")
    with release(out) as staged:
        release_files(staged.path, "one")
        (staged.path / "config.yaml").unlink()
        staged.add_in_progress()
        staged.publish()
    assert (out / "config.yaml").read_text() == "seed: 1\n"
    assert not folder.exists()  # a finished run leaves no in-progress state


def test_publish_needs_nothing_but_the_staging(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    staging = out / ".release-1"
    staging.mkdir()
    (staging / "summary.json").write_text("{}")
    publish(staging, out)
    assert sorted(p.name for p in out.iterdir()) == ["summary.json"]
