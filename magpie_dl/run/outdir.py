"""The output directory: whose it is, where a run under way keeps its state, how a finished run lands.

A directory is used only if it is empty (or new) or holds a run of the same recipe, which
a marker file written on first use says. Anything else (a home directory, a checkout, the
folder a run reads its instructions from) is refused with one line before any model
loads, so neither a run nor ``--fresh`` ever replaces or deletes a user's own files.

Layout of an output directory ``D``::

    .magpie_dl.json         marker: D holds runs of this project's <recipe>
    .lock                   held while a run writes to D
    cache/                  stored work (results.sqlite), read back by reruns
    cache/in_progress/      what describes the run under way (config.yaml, pipeline.yaml, ...)
    dataset/, left_out/, summary.json, config.yaml, pipeline.yaml, README.md, report.html, ...
                            the last *finished* run: one release, published together

A release is staged whole in ``D/.release-PID/`` and then moved into place; a stopped or
killed run leaves the previous release as it was. Staging left by dead runs is removed
by the next run (a complete release whose moves were cut short is finished first).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

MARKER = ".magpie_dl.json"
LOCK = ".lock"
CACHE = "cache"
IN_PROGRESS = "in_progress"
# What a release may hold: a new release replaces every one of these, so nothing from an
# older release outlives it (the curation recipe writes no dataset/ when nothing is selected).
RELEASE_NAMES = frozenset({
    "dataset", "left_out", "summary.json", "config.yaml", "pipeline.yaml", "README.md", "report.html",
    "instructions.jsonl", "left_out.jsonl", "selection.json",
})
_COMPLETE = ".complete"
# Staging names: ours (.release-PID, .replaced-PID) and the export's (.dataset.tmp-PID,
# .dataset.old-PID, .released-PID.arrow, .summary.json.tmp-PID, ...).
_STAGING = re.compile(r"^\.(release|replaced)-\d+$|^\..+\.(tmp|old)-\d+$|^\.released-\d+\.arrow$")
_IN_PROGRESS_NOTE = """\
In progress: the files here describe the run under way in this output directory, or the
last one that stopped before its end. They are not the finished dataset's: dataset/ and
the files beside it (README.md, config.yaml, pipeline.yaml, report.html, ...) all come
from the last run that finished, and are replaced only when another run finishes.
Rerunning resumes from the stored work in cache/.
"""


class OutputDirError(ValueError):
    """An output directory a run may not use; the message is one line for the user."""


def check_output_dir(out: str | Path, recipe: str, inputs: Iterable[str | Path | None] = ()) -> Path:
    """Whether a run of ``recipe`` may use ``out``; writes nothing. Returns its absolute path.

    Refused: a file or a path under a file; a directory that holds (or is inside) one of
    the run's ``inputs``; a non-empty directory without this project's marker; a marker
    of another recipe.
    """
    path = Path(os.path.abspath(Path(out).expanduser()))
    if path.exists() and not path.is_dir():
        raise OutputDirError(f"--output-dir {out} is a file, not a directory")
    ancestor = path
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise OutputDirError(f"--output-dir {out} is under {ancestor}, which is a file")
    real = path.resolve()
    for source in inputs:
        if not source or not Path(source).expanduser().exists():
            continue  # a hub id, or nothing local
        given = Path(source).expanduser().resolve()
        if given == real or given.is_relative_to(real) or real.is_relative_to(given):
            raise OutputDirError(
                f"--output-dir {out} holds this run's input {source}; write the output to another directory"
            )
    if path.is_dir():
        owner = _marked_recipe(path)
        if owner is None:
            foreign = sorted(set(_listdir(path, out)) - {LOCK})
            if foreign:
                shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
                raise OutputDirError(
                    f"--output-dir {out} is not empty and holds no run of this project ({shown}); "
                    "choose a new or empty directory"
                )
        elif owner != recipe:
            raise OutputDirError(
                f"--output-dir {out} holds a run of the {owner} recipe, not {recipe}; choose another directory"
            )
    return path


def claim(out: str | Path, recipe: str, inputs: Iterable[str | Path | None] = ()) -> Path:
    """Check ``out`` (:func:`check_output_dir`), create it and mark it as ``recipe``'s.

    Creating it is where a read-only place or ``/proc`` shows: that is one line too.
    """
    path = check_output_dir(out, recipe, inputs)
    try:
        path.mkdir(parents=True, exist_ok=True)
        if _marked_recipe(path) is None:
            marker = {"project": "magpie_dl", "recipe": recipe,
                      "note": "This directory holds the output of magpie_dl runs; runs replace what they wrote here."}
            _write_atomic(path / MARKER, json.dumps(marker, indent=2) + "\n")
    except OSError as exc:
        raise OutputDirError(f"--output-dir {out} cannot be written: {exc.strerror or exc}") from None
    return path


def in_progress_dir(out: str | Path) -> Path:
    """Where the run under way keeps what describes it (apart from the finished release)."""
    return Path(out) / CACHE / IN_PROGRESS


def start_in_progress(out: Path) -> Path:
    """A clean in-progress directory for a new run, with a note saying what it is."""
    folder = in_progress_dir(out)
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    (folder / "NOTE.txt").write_text(_IN_PROGRESS_NOTE)
    return folder


def remove_stale_staging(out: Path) -> list[str]:
    """Remove what dead runs left while staging a release; returns the names removed.

    Call it holding the directory's lock: then no live run is staging here. A release
    that was complete when its run died (moves into place cut short) is finished first.
    """
    removed = []
    for entry in sorted(Path(out).iterdir()) if Path(out).is_dir() else []:
        if not _STAGING.match(entry.name):
            continue
        if entry.name.startswith(".release-") and (entry / _COMPLETE).exists():
            _move_into_place(entry, out, out / entry.name.replace(".release-", ".replaced-", 1))
        _remove(entry)
        removed.append(entry.name)
    return removed


class Release:
    """A run's release being staged in ``path``; nothing reaches the output directory before :meth:`publish`."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.path = out / f".release-{os.getpid()}"
        self.published = False

    def add_in_progress(self) -> None:
        """Copy what describes the run (config.yaml, pipeline.yaml, ...) from its in-progress directory."""
        for source in in_progress_dir(self.out).iterdir():
            if source.name in RELEASE_NAMES:
                shutil.copy2(source, self.path / source.name)

    def publish(self) -> None:
        """Replace the previous release with this one (:func:`publish`); the in-progress state goes."""
        publish(self.path, self.out)
        self.published = True
        shutil.rmtree(in_progress_dir(self.out), ignore_errors=True)


@contextmanager
def release(out: Path) -> Iterator[Release]:
    """Stage a run's release: everything that describes the dataset is written into
    ``release.path`` and published together by ``release.publish()``.

    Unpublished at the end of the block (an exception: a stop, a full disk), the staging
    is discarded and the previous release stays exactly as it was.
    """
    staged = Release(Path(out))
    _remove(staged.path)
    staged.path.mkdir()
    try:
        yield staged
    finally:
        if not staged.published:
            _remove(staged.path)


def publish(staging: Path, out: Path) -> None:
    """Move a staged release into ``out``, replacing every file of the previous one.

    The ``.complete`` mark (listing the release's files) makes the release whole before
    the first move: if the run dies between moves, the next run finishes them
    (:func:`remove_stale_staging`).
    """
    names = sorted(p.name for p in staging.iterdir())
    _write_atomic(staging / _COMPLETE, json.dumps(names))
    _move_into_place(staging, out, out / f".replaced-{os.getpid()}")
    _remove(staging)


def _move_into_place(staging: Path, out: Path, replaced: Path) -> None:
    names = set(json.loads((staging / _COMPLETE).read_text()))
    replaced.mkdir(exist_ok=True)
    for name in sorted(RELEASE_NAMES | names):
        if name in names and not (staging / name).exists():
            continue  # moved before the run died
        target = out / name
        if target.exists() or target.is_symlink():
            _remove(replaced / name)
            target.rename(replaced / name)
        if name in names:
            (staging / name).rename(target)
    _remove(replaced)


def _marked_recipe(path: Path) -> str | None:
    marker = path / MARKER
    if not marker.is_file():
        return None
    try:
        data = json.loads(marker.read_text())
        return str(data["recipe"]) if data.get("project") == "magpie_dl" else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _listdir(path: Path, shown: str | Path) -> list[str]:
    try:
        return os.listdir(path)
    except OSError as exc:
        raise OutputDirError(f"--output-dir {shown} cannot be read: {exc.strerror or exc}") from None


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _write_atomic(target: Path, text: str) -> None:
    staging = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    staging.write_text(text)
    staging.replace(target)
