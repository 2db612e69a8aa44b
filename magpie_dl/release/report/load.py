"""Reading a run's output directory once: the kept pairs, the left-out rows, summary, config, selection."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:
    from datasets import Dataset, DatasetDict

    from magpie_dl.release.export import Summary


@dataclass
class RunOutput:
    """Everything a card or report is made from, read once from an output directory."""

    out_dir: Path
    config: dict[str, Any]
    summary: dict[str, Any]
    pairs: DatasetDict
    left_out: Dataset | None
    # What instruction selection did (SelectionReport.to_dict()), when the run selected.
    selection: dict[str, Any] | None = None

    @property
    def num_pairs(self) -> int:
        return sum(len(split) for split in self.pairs.values())

    def pair_column(self, name: str) -> list[Any] | None:
        """A column over all splits (train first), or None when the dataset lacks it."""
        return _concat(column_values(split, name) for split in self.pairs.values())

    def all_column(self, name: str) -> list[Any] | None:
        """A column over kept and left-out rows: every instruction that reached the output."""
        kept = self.pair_column(name)
        if kept is None:
            return None
        left = column_values(self.left_out, name) if self.left_out is not None else None
        return kept + (left or [None] * (len(self.left_out) if self.left_out is not None else 0))

    def assistant_lengths(self, side: str) -> list[int]:
        """Characters in the assistant turn of ``chosen`` or ``rejected``, over all splits."""
        return _concat(_assistant_lengths(split, side) for split in self.pairs.values()) or []


def load_output(
    out_dir: Path | str,
    cfg_dict: Mapping[str, Any] | None = None,
    summary: Summary | Mapping[str, Any] | None = None,
) -> RunOutput:
    """Read an output directory; ``cfg_dict`` / ``summary`` override the files when given."""
    from datasets import DatasetDict

    out = Path(out_dir)
    if not (out / "dataset").exists():
        raise FileNotFoundError(f"{out / 'dataset'} does not exist: is {out} the output of a run?")
    if cfg_dict is None:
        cfg_path = out / "config.yaml"
        cfg_dict = (yaml.safe_load(cfg_path.read_text()) or {}) if cfg_path.exists() else {}
    if summary is None:
        summary_path = out / "summary.json"
        summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    elif not isinstance(summary, Mapping):
        summary = dict(summary.__dict__)
    left_out = _load_split(out / "left_out") if (out / "left_out").exists() else None
    splits = json.loads((out / "dataset" / "dataset_dict.json").read_text())["splits"]
    pairs = DatasetDict({name: _load_split(out / "dataset" / name) for name in splits})
    return RunOutput(out, dict(cfg_dict), dict(summary), pairs, left_out, _find_selection(out, cfg_dict, summary))


def _find_selection(out: Path, cfg: Mapping[str, Any], summary: Mapping[str, Any]) -> dict[str, Any] | None:
    """The selection report of the instructions this run paired, if there is one.

    The curation recipe writes ``selection.json`` beside the ``dataset/`` that
    ``--instructions`` points at; a copy in the output directory or a ``selection`` entry
    in the summary wins.
    """
    if summary.get("selection"):
        return dict(summary["selection"])
    candidates = [out / "selection.json"]
    source = cfg.get("instructions")
    if isinstance(source, str) and source and Path(source).exists():
        candidates += [Path(source) / "selection.json", Path(source).parent / "selection.json"]
    for path in candidates:
        if path.is_file():
            return json.loads(path.read_text())
    return None


def _load_split(path: Path) -> Dataset:
    """One saved split; an empty one saved without columns reads as an empty dataset.

    ``datasets`` writes a zero-row, zero-column dataset (no pairs kept, or nothing left
    out) with no data files and then cannot load it back (IndexError); such a split is
    legitimately empty, so it is read as empty instead of failing the report.
    """
    from datasets import Dataset

    state = json.loads((path / "state.json").read_text())
    if not state.get("_data_files"):
        return Dataset.from_dict({})
    return Dataset.load_from_disk(str(path))


def column_values(ds: Dataset | None, name: str) -> list[Any] | None:
    """One column of ``ds`` as a list; None when there is no dataset or no such column."""
    # Straight from Arrow: the report must not materialise 100K rows of responses.
    if ds is None or name not in ds.column_names:
        return None
    return ds.data.column(name).to_pylist()


def _concat(parts: Iterable[list[Any] | None]) -> list[Any] | None:
    out: list[Any] | None = None
    for part in parts:
        if part is not None:
            out = (out or []) + part
    return out


def _assistant_lengths(ds: Dataset, side: str) -> list[int] | None:
    """Characters in the last message of each row's ``side`` conversation (None: no column)."""
    import numpy as np
    import pyarrow.compute as pc

    if side not in ds.column_names:
        return None
    lengths: list[int] = []
    # Arrow all the way: 100K conversations are never turned into Python strings.
    for chunk in ds.data.column(side).chunks:
        flat = pc.list_flatten(chunk)
        if len(flat) == 0:
            continue
        parents = pc.list_parent_indices(chunk).to_numpy()
        is_last = np.append(parents[1:] != parents[:-1], True)  # last message of each row
        contents = pc.struct_field(flat.filter(is_last), "content")
        lengths.extend(n for n in pc.utf8_length(contents).to_pylist() if n is not None)
    return lengths
