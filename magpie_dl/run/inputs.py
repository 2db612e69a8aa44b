"""Starting from an existing instruction set: a local dataset directory, a file, or a hub id.

Rows are normalised to what the response stage needs (``uuid``, ``instruction``,
``instruction_status``, ``gen_input_configs``) and keep every tag column they carry.
Problems with the source itself are one-line errors raised before any model loads;
problems with single rows (empty, enormous) mark the row, they never stop the run.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from magpie_dl.recipe.cleaning import CleaningRules, unusable_reason
from magpie_dl.recipe.queries import row_uuid
from magpie_dl.recipe.reasons import OK

_FILE_FORMATS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}


class InstructionSourceError(ValueError):
    """The instruction source cannot be used, phrased as what to change."""


def load_instructions(source: str, rules: CleaningRules = CleaningRules()) -> list[dict[str, Any]]:
    """Read and normalise the rows of ``source``."""
    rows = [normalise(row, i, source, rules) for i, row in enumerate(_read_rows(source))]
    if not rows:
        raise InstructionSourceError(f"{source} holds no instructions")
    seen: set[str] = set()
    for row in rows:
        if row["uuid"] in seen:
            raise InstructionSourceError(f"{source}: uuid {row['uuid']} appears twice; uuids must be unique")
        seen.add(row["uuid"])
    return rows


def _read_rows(source: str) -> list[dict[str, Any]]:
    path = Path(source).expanduser()
    try:
        if path.is_dir():
            return _read_saved_dataset(path)
        if path.suffix in _FILE_FORMATS:
            if not path.exists():
                raise InstructionSourceError(f"instruction file {source} does not exist")
            return _read_file(path)
        if source.count("/") == 1 and not path.exists():
            from datasets import load_dataset

            return load_dataset(source, split="train").to_list()
    except InstructionSourceError:
        raise
    except Exception as exc:  # datasets/pyarrow raise many types; the user needs one line
        raise InstructionSourceError(
            f"cannot read instructions from {source}: {exc.__class__.__name__}: {_first_line(exc)}"
        ) from None
    raise InstructionSourceError(
        f"instruction source {source} is not a dataset directory, a .jsonl/.json/.parquet/.csv file or a hub id"
    )


def _read_saved_dataset(path: Path) -> list[dict[str, Any]]:
    from datasets import Dataset, DatasetDict, load_from_disk

    data = load_from_disk(str(path))
    if isinstance(data, DatasetDict):
        data = data["train"] if "train" in data else next(iter(data.values()))
    assert isinstance(data, Dataset)
    return data.to_list()


def _read_file(path: Path) -> list[dict[str, Any]]:
    # utf-8-sig: files saved by some editors (and Excel) start with a byte-order mark.
    if path.suffix == ".jsonl":
        rows = []
        with path.open(encoding="utf-8-sig") as handle:
            for number, line in enumerate(handle, 1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError:
                        raise InstructionSourceError(f"{path}: line {number} is not valid JSON") from None
        return rows
    if path.suffix == ".json":
        try:
            content = json.loads(path.read_text(encoding="utf-8-sig"))
        except json.JSONDecodeError as exc:
            raise InstructionSourceError(f"{path}: not valid JSON (line {exc.lineno})") from None
        if not isinstance(content, list):
            raise InstructionSourceError(f"{path}: expected a JSON list of rows")
        return content
    if path.suffix == ".csv" and not _csv_has_rows(path):
        return []  # datasets would fail with a message about its own internals
    from datasets import load_dataset

    return load_dataset(_FILE_FORMATS[path.suffix], data_files=str(path), split="train").to_list()


def _csv_has_rows(path: Path) -> bool:
    """Whether a CSV file has a data row under its header; an empty file is refused."""
    with path.open(encoding="utf-8-sig", newline="") as handle:
        records = csv.reader(handle)
        header = next((record for record in records if any(cell.strip() for cell in record)), None)
        if header is None:
            raise InstructionSourceError(
                f"{path} is empty; a .csv needs a header row with an `instruction` column, then one row per instruction"
            )
        return any(any(cell.strip() for cell in record) for record in records)


def normalise(row: Any, index: int, source: str, rules: CleaningRules) -> dict[str, Any]:
    """One input row in the pipeline's shape; a row without text is marked, not dropped."""
    if not isinstance(row, dict) or "instruction" not in row:
        raise InstructionSourceError(f"{source}: row {index} has no `instruction` field")
    text = row["instruction"]
    if text is not None and not isinstance(text, str):
        raise InstructionSourceError(f"{source}: row {index} `instruction` is {type(text).__name__}, not text")
    text = text or ""
    out = dict(row)
    out["instruction"] = text
    out["uuid"] = _row_id(row.get("uuid"), index, source)
    out["instruction_status"] = unusable_reason(text.strip(), rules) or OK
    out["gen_input_configs"] = row.get("gen_input_configs") or {"source": source}
    return out


def _row_id(given: Any, index: int, source: str) -> str:
    """The row's uuid as text: a given id is kept as written (``0`` stays ``"0"``); only a
    missing one is derived from the source and the row's position."""
    if given is None:
        return row_uuid(source, 0, index)
    if isinstance(given, bool) or not isinstance(given, (str, int, float)):
        raise InstructionSourceError(f"{source}: row {index} `uuid` is {type(given).__name__}, not text or a number")
    text = str(given)
    if not text.strip():
        raise InstructionSourceError(f"{source}: row {index} has an empty `uuid`; give an id or leave the field out")
    return text


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else ""
