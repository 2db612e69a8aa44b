"""Pushing DPO rows to the review dataset: one record per row, upserted by uuid in retried batches."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator, List, Mapping, Optional, TypeVar, Union

from magpie_dl.review import dataset as rd
from magpie_dl.review.client import (
    DEFAULT_BATCH_SIZE,
    MAX_BATCH_SIZE,
    RetryPolicy,
    _call,
    connect,
    get_or_create_dataset,
)

if TYPE_CHECKING:
    import argilla as rg
    from datasets import Dataset, DatasetDict

logger = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass
class PushReport:
    """What a push did: where to, how many records, in how many batches."""

    dataset_name: str
    workspace: Optional[str]
    records: int = 0
    batches: int = 0
    url: str = ""

    def __str__(self) -> str:
        where = f"{self.workspace}/{self.dataset_name}" if self.workspace else self.dataset_name
        return f"pushed {self.records} records in {self.batches} batches to Argilla dataset {where} at {self.url}"


def _batches(items: Iterable[T], size: int) -> Iterator[List[T]]:
    batch: List[T] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def to_record(payload: rd.RecordPayload, dataset: "rg.Dataset") -> "rg.Record":
    """The SDK record for one payload, bound to ``dataset`` (needed to resolve question ids)."""
    import argilla as rg

    record = rg.Record(
        id=payload.id,
        fields=payload.fields,
        metadata=payload.metadata,
        suggestions=[
            rg.Suggestion(
                question_name=rd.QUESTION_PREFERENCE,
                value=payload.suggested_preference,
                agent=payload.suggestion_agent,
                type="model",
            )
        ],
    )
    record.dataset = dataset
    return record


class ReviewDatasetWriter:
    """An authenticated handle on one review dataset; ``write(rows)`` upserts them in batches.

    Construction connects and creates/reuses the dataset, so configuration mistakes (no server,
    wrong key, a dataset with other settings) surface before any row is processed.
    Upserts are keyed by the row uuid, which is what makes retrying a batch (and rerunning a whole
    push) safe: records are updated in place and reviewers' answers are untouched.
    """

    def __init__(
        self,
        dataset_name: str,
        workspace: Optional[str] = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        api_url: Optional[str] = None,
        api_key: Optional[str] = None,
        reward_agent: str = rd.DEFAULT_REWARD_AGENT,
        retry: RetryPolicy = RetryPolicy(),
    ) -> None:
        if not 1 <= batch_size <= MAX_BATCH_SIZE:
            raise ValueError(f"batch_size must be in 1..{MAX_BATCH_SIZE}, got {batch_size}")
        self.batch_size = batch_size
        self.reward_agent = reward_agent
        self.retry = retry
        self.client, self.credentials = connect(api_url, api_key, retry=retry)
        self.dataset = get_or_create_dataset(self.client, self.credentials, dataset_name, workspace, retry)
        self.report = PushReport(
            dataset_name=dataset_name, workspace=self.dataset.workspace.name, url=self.credentials.safe_url
        )

    def write(self, rows: Iterable[Mapping[str, Any]]) -> int:
        """Upserts one record per row; returns how many were sent. Raises ``ReviewError``."""
        sent = 0
        for batch in _batches(rows, self.batch_size):
            models = [to_record(rd.record_payload(row, self.reward_agent), self.dataset).api_model() for row in batch]
            # The bulk endpoint directly (not `dataset.records.log`): one HTTP call per batch that
            # `_call` can retry as a unit, and no progress bar per batch.
            _call(
                lambda: self.client.api.records.bulk_upsert(dataset_id=self.dataset.id, records=models),
                f"upsert of batch {self.report.batches + 1}",
                self.credentials,
                self.retry,
            )
            sent += len(models)
            self.report.records += len(models)
            self.report.batches += 1
            logger.info("Argilla: %d records sent", self.report.records)
        return sent


def push_rows(
    rows: Iterable[Mapping[str, Any]],
    dataset_name: str,
    workspace: Optional[str] = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    api_url: Optional[str] = None,
    api_key: Optional[str] = None,
    reward_agent: str = rd.DEFAULT_REWARD_AGENT,
    retry: RetryPolicy = RetryPolicy(),
) -> PushReport:
    """Creates/reuses the review dataset ``dataset_name`` and upserts one record per row."""
    writer = ReviewDatasetWriter(dataset_name, workspace, batch_size, api_url, api_key, reward_agent, retry)
    writer.write(rows)
    return writer.report


def _load_local(dataset: Union[str, Path, "Dataset", "DatasetDict"]) -> "DatasetDict":
    """A saved ``DatasetDict`` (path or object); a single ``Dataset`` becomes split ``train``."""
    from datasets import Dataset, DatasetDict, load_from_disk

    if isinstance(dataset, (str, Path)):
        dataset = load_from_disk(str(dataset))
    if isinstance(dataset, Dataset):
        dataset = DatasetDict({"train": dataset})
    return dataset


def push_to_argilla(
    dataset: Union[str, Path, "Dataset", "DatasetDict"],
    dataset_name: str,
    workspace: Optional[str] = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    api_url: Optional[str] = None,
    api_key: Optional[str] = None,
) -> PushReport:
    """Pushes every split of a DPO dataset (a path saved with ``save_to_disk`` or the object).

    This is what ``--argilla-dataset NAME`` in the recipes calls, after the local dataset is
    written, so a failed push loses nothing: fix the cause and rerun the push alone. Returns the
    report (``str()`` is a one-line summary); raises ``ReviewError`` (one line, no key).
    """
    splits = _load_local(dataset)
    rows = (row for split in splits.values() for row in split)
    return push_rows(rows, dataset_name, workspace, batch_size, api_url, api_key)
