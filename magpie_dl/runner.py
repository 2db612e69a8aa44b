"""Running a recipe: config, lock, pipeline, export, summary, optional push.

``pipelines/*.py`` define the graph; everything around it (parsing, validation before
any model loads, the output directory lock, writing the dataset and printing the
summary) is the same for every recipe and lives here.
"""

from __future__ import annotations

import fcntl
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from magpie_dl.config import PRESETS, TINY_DIR, ConfigError, RecipeConfig, build_parser, resolve
from magpie_dl.export import Summary, write_dataset

if TYPE_CHECKING:
    from distilabel.pipeline import Pipeline


class OutputLockedError(RuntimeError):
    """Another run holds the output directory."""


@contextmanager
def output_lock(out_dir: Path) -> Iterator[None]:
    """Hold ``out_dir/.lock`` for the run; a second run on the same directory fails fast.

    An advisory ``flock`` is released by the kernel when the process dies, so a killed
    run never leaves a stale lock behind.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    handle = open(out_dir / ".lock", "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise OutputLockedError(
            f"another run is writing to {out_dir}; wait for it or choose another --output-dir"
        ) from None
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        yield
    finally:
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


def run_recipe(build: Callable[[RecipeConfig], Pipeline], cfg: RecipeConfig) -> Summary:
    """Build and run the pipeline, write the dataset, return the summary."""
    out_dir = Path(cfg.output.dir)
    with output_lock(out_dir):
        pipeline = build(cfg)
        (out_dir / "config.yaml").write_text(yaml.safe_dump(cfg.public_dict(), sort_keys=False))
        pipeline.save(out_dir / "pipeline.yaml", format="yaml")
        distiset = pipeline.run(use_cache=False)
        rows = distiset["default"]["train"].to_list()
        summary = write_dataset(rows, out_dir, cfg.output.test_fraction, cfg.seed)
    if cfg.output.push_to_hub:
        push_to_hub(out_dir, cfg.output.push_to_hub, cfg.output.private)
    return summary


def push_to_hub(out_dir: Path, repo_id: str, private: bool) -> None:
    """Push ``out_dir/dataset`` to the Hub; the token comes from HF_TOKEN, never from flags."""
    from datasets import load_from_disk

    token = os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN")
    load_from_disk(str(out_dir / "dataset")).push_to_hub(repo_id, private=private, token=token)


def main_for(build: Callable[[RecipeConfig], Pipeline], description: str, argv: list[str] | None = None) -> int:
    """The command line of a recipe script; returns the exit code."""
    args = build_parser(description).parse_args(argv)
    try:
        if args.preset == "smoke":
            _ensure_tiny_models()
        cfg = resolve(args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.print_config:
        print(yaml.safe_dump(cfg.public_dict(), sort_keys=False), end="")
        return 0
    started = time.perf_counter()
    try:
        summary = run_recipe(build, cfg)
    except OutputLockedError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    out_dir = Path(cfg.output.dir)
    print(f"\ndataset: {out_dir / 'dataset'}  (pipeline.yaml, left_out/, summary.json beside it)")
    for line in summary.lines():
        print(f"  {line}")
    print(f"  wall time: {time.perf_counter() - started:.1f}s")
    return 0


def _ensure_tiny_models() -> None:
    """The smoke preset builds its tiny local models on first use (deterministic, offline)."""
    from magpie_dl import tiny

    if not (TINY_DIR / "manifest.json").exists():
        logging.getLogger("magpie_dl").warning("building tiny local models in %s", TINY_DIR)
        tiny.ensure(TINY_DIR)


__all__ = ["PRESETS", "main_for", "output_lock", "run_recipe"]
