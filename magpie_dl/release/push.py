"""After a DPO run: push the release to the Hugging Face Hub, or its pairs to Argilla.

A failed push is one line (scrubbed of secrets) and leaves the local release as it was.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from magpie_dl.release.report import CARD_FILENAME, REPORT_FILENAME
from magpie_dl.scrub import REDACTED, scrub_text

if TYPE_CHECKING:
    from magpie_dl.config.dpo import RecipeConfig

# Uploaded beside the data (distilabel's own convention uploads the pipeline too): the
# card, then what reproduces and explains the run.
HUB_FILES = (CARD_FILENAME, "config.yaml", "pipeline.yaml", REPORT_FILENAME)


def hub_files(out_dir: Path) -> dict[str, bytes]:
    """The files of :data:`HUB_FILES` that ``out_dir`` has, by name, with every secret value redacted.

    The card and the report were scrubbed when written (and the report's embedded images
    must not be touched); the two YAML files are scrubbed here.
    """
    files: dict[str, bytes] = {}
    for name in HUB_FILES:
        path = out_dir / name
        if path.is_file():
            files[name] = scrub_text(path.read_text(), mask=REDACTED).encode() if name.endswith(".yaml") else path.read_bytes()
    return files


def push_to_hub(out_dir: Path, repo_id: str, private: bool) -> None:
    """Push the card, config, pipeline and report, then ``out_dir/dataset``; the token comes from HF_TOKEN, never from flags.

    The card goes first because ``DatasetDict.push_to_hub`` reads the repo's README.md
    and only refreshes its ``configs`` / ``dataset_info`` (byte sizes), keeping the rest;
    uploading the card afterwards would overwrite those with the local estimates.
    """
    from datasets import load_from_disk
    from huggingface_hub import CommitOperationAdd, HfApi

    token = os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN")
    files = hub_files(out_dir)
    if files:
        api = HfApi(token=token)
        api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
        api.create_commit(
            repo_id=repo_id, repo_type="dataset", commit_message="Dataset card, config, pipeline and report",
            operations=[CommitOperationAdd(path_in_repo=name, path_or_fileobj=data) for name, data in files.items()],
        )
    load_from_disk(str(out_dir / "dataset")).push_to_hub(repo_id, private=private, token=token)


def push_for_hub(cfg: RecipeConfig) -> bool:
    """Push to the Hub; a failure is one line, scrubbed of secrets, and the local data stays."""
    try:
        push_to_hub(Path(cfg.output.dir), cfg.output.push_to_hub, cfg.output.private)
        print(f"  hub: pushed to {cfg.output.push_to_hub}")
        return True
    except Exception as exc:  # any client or network error: the user needs one clean line
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        print(
            f"error: hub push failed: {scrub_text(f'{exc.__class__.__name__}: {first}')}; "
            f"the local dataset in {cfg.output.dir} is intact",
            file=sys.stderr,
        )
        return False


def push_for_review(cfg: RecipeConfig) -> bool:
    """Push the written pairs to Argilla; on failure say how to retry the push alone."""
    from magpie_dl.review import ReviewError, push_to_argilla

    dataset = Path(cfg.output.dir) / "dataset"
    try:
        print(f"  argilla: {push_to_argilla(dataset, cfg.output.argilla_dataset, cfg.output.argilla_workspace)}")
        return True
    except ReviewError as exc:
        print(
            f"error: argilla push failed: {exc}; the local dataset is intact, retry with: "
            f"magpie-dl-review push --input {dataset} --dataset-name {cfg.output.argilla_dataset}",
            file=sys.stderr,
        )
        return False
