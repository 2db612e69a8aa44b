"""Pulling submitted reviews back: verdicts per record, applied to the local DPO dataset in chunks."""

from __future__ import annotations

import collections
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Counter, Dict, List, Mapping, Optional, Tuple, Union

from magpie_dl.review import dataset as rd
from magpie_dl.review.client import (
    MAX_BATCH_SIZE,
    ReviewError,
    RetryPolicy,
    _call,
    _check_settings,
    _find_dataset,
    connect,
    resolve_workspace,
)
from magpie_dl.review.push import _load_local
from magpie_dl.review.verdicts import Review, Verdict, aggregate_reviews, apply_verdict

if TYPE_CHECKING:
    import argilla as rg
    from datasets import Dataset, DatasetDict


def _submitted_reviews(record: "rg.Record") -> List[Review]:
    """Submitted answers grouped per reviewer; drafts and discarded answers do not count."""
    per_user: Dict[Any, Dict[str, Any]] = collections.defaultdict(dict)
    for response in record.responses:
        status = getattr(response.status, "value", response.status)
        if status == "submitted":
            per_user[response.user_id][response.question_name] = response.value
    return [
        Review(
            preference=answers.get(rd.QUESTION_PREFERENCE),
            correction=answers.get(rd.QUESTION_CORRECTION),
            note=answers.get(rd.QUESTION_NOTE),
        )
        for answers in per_user.values()
    ]


def fetch_verdicts(
    dataset_name: str,
    workspace: Optional[str] = None,
    api_url: Optional[str] = None,
    api_key: Optional[str] = None,
    retry: RetryPolicy = RetryPolicy(),
) -> Dict[str, Verdict]:
    """Verdict per record id (= row uuid) for every record of the review dataset."""
    client, credentials = connect(api_url, api_key, retry=retry)
    workspace = _call(lambda: resolve_workspace(client, workspace), "workspace lookup", credentials, retry)
    dataset = _call(lambda: _find_dataset(client, dataset_name, workspace), "dataset lookup", credentials, retry)
    if dataset is None:
        raise ReviewError(f"Argilla dataset {dataset_name!r} does not exist at {credentials.safe_url}")
    _check_settings(client, dataset, dataset_name)

    def read_all() -> Dict[str, Verdict]:
        # Re-read from the start on a retry: a half-read page set is not worth resuming.
        return {
            str(record.id): aggregate_reviews(_submitted_reviews(record))
            for record in dataset.records(with_responses=True, with_suggestions=False, batch_size=MAX_BATCH_SIZE)
        }

    return _call(read_all, "record download", credentials, retry)


@dataclass
class PullReport:
    """Counts of a pull: review_action per split, and records with no local row."""

    actions: Dict[str, Counter[str]] = field(default_factory=dict)
    unmatched_records: int = 0
    conflicting_corrections: int = 0

    def totals(self) -> Counter[str]:
        total: Counter[str] = collections.Counter()
        for counts in self.actions.values():
            total.update(counts)
        return total

    def format(self) -> str:
        lines = []
        for split, counts in self.actions.items():
            kept = sum(n for action, n in counts.items() if not action.startswith("dropped"))
            detail = ", ".join(f"{action} {n}" for action, n in sorted(counts.items()))
            lines.append(f"{split}: {kept} kept of {sum(counts.values())} ({detail})")
        if self.conflicting_corrections:
            lines.append(
                f"records whose reviewers wrote different corrections (ignored): {self.conflicting_corrections}"
            )
        if self.unmatched_records:
            lines.append(f"Argilla records with no row in the local dataset: {self.unmatched_records}")
        return "\n".join(lines)


_ROWS_PER_CHUNK = 5000


def _rows_to_dataset(rows: List[Dict[str, Any]], features: Any) -> "Dataset":
    """Rows as a Dataset with fixed ``features``, also when there are none (every row dropped),
    where ``Dataset.from_list`` would lose the columns."""
    from datasets import Dataset

    return Dataset.from_dict({name: [row[name] for row in rows] for name in features}, features=features)


def reviewed_dataset(
    local: "DatasetDict", verdicts: Mapping[str, Verdict], ties: str = "drop", keep_unreviewed: bool = True
) -> Tuple["DatasetDict", PullReport]:
    """Applies verdicts to every split; the schema gains the four ``review_*`` columns.

    Rows are converted back to Arrow every ``_ROWS_PER_CHUNK`` rows: a 100K-row split with five
    long responses per row would take several GB as Python dicts.
    """
    from datasets import DatasetDict, Features, Value, concatenate_datasets

    report = PullReport()
    seen: set = set()
    out = {}
    for split_name, split in local.items():
        features = Features(
            {
                **split.features,
                "review_label": Value("string"),
                "review_action": Value("string"),
                "review_note": Value("string"),
                "review_count": Value("int32"),
            }
        )
        counts: Counter[str] = collections.Counter()
        chunks: List["Dataset"] = []
        kept_rows: List[Dict[str, Any]] = []
        for row in split:
            uuid = str(row["uuid"])
            verdict = verdicts.get(uuid)
            if verdict is not None:
                seen.add(uuid)
                report.conflicting_corrections += int(verdict.conflicting_corrections)
            new_row, action = apply_verdict(row, verdict, ties=ties, keep_unreviewed=keep_unreviewed)
            counts[action] += 1
            if new_row is not None:
                kept_rows.append(new_row)
            if len(kept_rows) == _ROWS_PER_CHUNK:
                chunks.append(_rows_to_dataset(kept_rows, features))
                kept_rows = []
        chunks.append(_rows_to_dataset(kept_rows, features))
        report.actions[split_name] = counts
        out[split_name] = concatenate_datasets(chunks) if len(chunks) > 1 else chunks[0]
    report.unmatched_records = len(set(verdicts) - seen)
    return DatasetDict(out), report


def pull_reviewed(
    local: Union[str, Path, "Dataset", "DatasetDict"],
    dataset_name: str,
    output: Optional[Union[str, Path]] = None,
    workspace: Optional[str] = None,
    ties: str = "drop",
    keep_unreviewed: bool = True,
    api_url: Optional[str] = None,
    api_key: Optional[str] = None,
) -> Tuple["DatasetDict", PullReport]:
    """Reads verdicts from Argilla, applies them to the local DPO dataset and saves it to ``output``."""
    splits = _load_local(local)
    verdicts = fetch_verdicts(dataset_name, workspace, api_url, api_key)
    reviewed, report = reviewed_dataset(splits, verdicts, ties=ties, keep_unreviewed=keep_unreviewed)
    if output is not None:
        reviewed.save_to_disk(str(output))
    return reviewed, report
