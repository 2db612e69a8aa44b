"""Human review of DPO pairs in Argilla: push pairs out, pull verdicts back.

Push
    ``push_to_argilla(dataset, "magpie-review")`` creates the review dataset (see
    ``review_dataset``) or reuses one with the same settings, then upserts one record per row in
    batches. The record id is the row's ``uuid``, so a rerun updates records in place and leaves
    reviewers' answers alone. Transient failures (connection errors, timeouts, 5xx, 429) are retried
    with exponential backoff; anything else stops the push with a one-line ``ReviewError``.

Pull
    ``pull_reviewed(local_dataset, "magpie-review")`` reads submitted answers and rewrites the local
    DPO dataset. Per row (several reviewers: strict majority of their labels, else *disputed*):

    =====================  ===============================================================
    verdict                 what happens to the pair
    =====================  ===============================================================
    no submitted review     kept unchanged (``unreviewed``), or dropped with ``keep_unreviewed=False``
    chosen                  kept (``confirmed``)
    rejected                chosen and rejected swapped (``swapped``)
    tie                     dropped (``dropped_tie``): equal responses teach DPO nothing but noise;
                            ``ties="keep"`` keeps the pair as it was (``kept_tie``)
    both_bad                dropped (``dropped_both_bad``)
    disputed                dropped (``dropped_disputed``): reviewers disagree, no reliable signal
    corrected response      overrides all of the above (``corrected``): it becomes chosen, and the
                            worse original (original chosen if reviewers said *rejected*, else
                            original rejected) becomes rejected
    =====================  ===============================================================

    Every kept row gets ``review_label``, ``review_action``, ``review_note`` and ``review_count``;
    counts per action are printed. A corrected chosen response has no index or reward score, so
    ``chosen_index``, ``chosen_score`` and ``score_margin`` are null there. After a swap
    ``score_margin`` (chosen minus rejected score) is negative: it records that the reward model
    disagreed with the reviewers.

Credentials come from ``ARGILLA_API_URL`` / ``ARGILLA_API_KEY`` (or arguments). The key is never
logged and never part of an exception message: every SDK/HTTP error is re-raised as ``ReviewError``
with the key scrubbed out.

CLI::

    python -m magpie_dl.review push --input out/run/dataset --dataset-name magpie-review
    python -m magpie_dl.review pull --input out/run/dataset --dataset-name magpie-review \\
        --output out/run/reviewed
"""

from __future__ import annotations

import argparse
import collections
import logging
import os
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import (
    TYPE_CHECKING,
    Any,
    Callable,
    Counter,
    Dict,
    Iterable,
    Iterator,
    List,
    Mapping,
    Optional,
    Sequence,
    Tuple,
    TypeVar,
    Union,
)
from urllib.parse import urlsplit, urlunsplit

from magpie_dl import review_dataset as rd
from magpie_dl.scrub import scrub_text

if TYPE_CHECKING:
    import argilla as rg
    from datasets import Dataset, DatasetDict

logger = logging.getLogger(__name__)

ENV_API_URL = "ARGILLA_API_URL"
ENV_API_KEY = "ARGILLA_API_KEY"
# The server accepts at most 500 records per bulk upsert.
MAX_BATCH_SIZE = 500
DEFAULT_BATCH_SIZE = 256

T = TypeVar("T")


class ReviewError(RuntimeError):
    """A push/pull failure, as one line that never contains the API key.

    ``transient`` says whether the underlying failure (network, timeout, 5xx, 429) might pass
    on a later attempt.
    """

    def __init__(self, message: str, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


# --- connection -----------------------------------------------------------------------------


@dataclass(frozen=True)
class ArgillaCredentials:
    """Where the server is and how to authenticate; ``repr`` never shows the key."""

    api_url: str
    api_key: str = field(repr=False)

    @classmethod
    def resolve(cls, api_url: Optional[str] = None, api_key: Optional[str] = None) -> "ArgillaCredentials":
        """Arguments first, then ``ARGILLA_API_URL`` / ``ARGILLA_API_KEY``."""
        url = api_url or os.environ.get(ENV_API_URL)
        key = api_key or os.environ.get(ENV_API_KEY)
        missing = [name for name, value in ((ENV_API_URL, url), (ENV_API_KEY, key)) if not value]
        if missing:
            raise ReviewError(f"Argilla is not configured: set {' and '.join(missing)}")
        return cls(api_url=str(url).rstrip("/"), api_key=str(key))

    @property
    def safe_url(self) -> str:
        """The URL without any user:password part, fit for messages."""
        parts = urlsplit(self.api_url)
        netloc = parts.hostname or ""
        if parts.port:
            netloc += f":{parts.port}"
        return urlunsplit((parts.scheme, netloc, parts.path, "", ""))

    def scrub(self, text: str) -> str:
        """``text`` with the key replaced and the password cut out of any URL."""
        return scrub_text(text, [self.api_key])


@dataclass(frozen=True)
class RetryPolicy:
    """How often transient failures are retried: ``attempts`` tries, backoff doubling each time."""

    attempts: int = 4
    backoff_s: float = 0.5
    max_backoff_s: float = 8.0

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        return min(self.backoff_s * 2 ** (attempt - 1), self.max_backoff_s)


def _cause_chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and its explicit causes: the SDK wraps HTTP errors (``SettingsError from ...``,
    ``ArgillaCredentialsError from UnauthorizedError``)."""
    current: Optional[BaseException] = exc
    while current is not None:
        yield current
        current = current.__cause__


def _status_code(exc: BaseException) -> Optional[int]:
    """The HTTP status behind ``exc``, if any exception in its cause chain carries one."""
    for link in _cause_chain(exc):
        code = getattr(link, "status_code", None)
        if isinstance(code, int):
            return code
    return None


def _is_transient(exc: BaseException) -> bool:
    """Network trouble, timeouts, 5xx and 429 may pass on retry; 4xx and bad data will not."""
    import httpx

    if any(isinstance(link, httpx.TransportError) for link in _cause_chain(exc)):
        return True
    code = _status_code(exc)
    return code is not None and (code >= 500 or code in (408, 429))


def _review_error(exc: BaseException, what: str, credentials: ArgillaCredentials) -> ReviewError:
    """One sanitised line explaining ``exc``; the SDK's text is kept only after scrubbing."""
    import httpx

    code = _status_code(exc)
    if code == 401:
        reason = f"the server rejected the API key (check {ENV_API_KEY})"
    elif code == 403:
        reason = "the API key's user is not allowed to do this (403)"
    elif isinstance(exc, httpx.ConnectError):
        reason = "cannot connect (is the server running and the URL right?)"
    elif isinstance(exc, httpx.TimeoutException):
        reason = f"timed out ({type(exc).__name__})"
    else:
        detail = " ".join(str(exc).split())[:300]
        reason = f"{type(exc).__name__}{f' {code}' if code else ''}: {detail}"
    message = credentials.scrub(f"Argilla {what} failed at {credentials.safe_url}: {reason}")
    return ReviewError(message, transient=_is_transient(exc))


def _call(
    action: Callable[[], T], what: str, credentials: ArgillaCredentials, retry: RetryPolicy = RetryPolicy()
) -> T:
    """Runs ``action`` with retries on transient errors; every failure ends as a ``ReviewError``."""
    for attempt in range(1, retry.attempts + 1):
        try:
            return action()
        except ReviewError:
            raise
        except Exception as exc:  # noqa: BLE001 - translated below, never swallowed
            if not _is_transient(exc) or attempt == retry.attempts:
                # `from None`: the chained SDK exception would repeat unsanitised text in tracebacks.
                raise _review_error(exc, what, credentials) from None
            delay = retry.delay(attempt)
            logger.warning(
                "Argilla %s failed (%s), retry %d/%d in %.1fs",
                what,
                type(exc).__name__,
                attempt,
                retry.attempts - 1,
                delay,
            )
            time.sleep(delay)
    raise AssertionError("unreachable")  # pragma: no cover


def connect(
    api_url: Optional[str] = None,
    api_key: Optional[str] = None,
    timeout_s: int = 60,
    retry: RetryPolicy = RetryPolicy(),
) -> Tuple["rg.Argilla", ArgillaCredentials]:
    """An authenticated client (the SDK checks the key on construction) and its credentials."""
    try:
        import argilla as rg
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("Argilla review needs the SDK: pip install -e '.[argilla]'") from exc

    credentials = ArgillaCredentials.resolve(api_url, api_key)
    # SDK-level retries=0: our `_call` owns retrying, with backoff and a log line per retry.
    client = _call(
        lambda: rg.Argilla(api_url=credentials.api_url, api_key=credentials.api_key, timeout=timeout_s, retries=0),
        "login",
        credentials,
        retry,
    )
    return client, credentials


# --- dataset --------------------------------------------------------------------------------


def resolve_workspace(client: "rg.Argilla", workspace: Optional[str]) -> str:
    """``workspace`` if it exists, else (when None) the user's first workspace, by name."""
    with warnings.catch_warnings():
        # The SDK warns when a workspace is not found; we raise our own error instead.
        warnings.simplefilter("ignore")
        if workspace is None:
            return client.workspaces.default.name
        if client.workspaces(name=workspace) is None:
            raise ReviewError(f"Argilla workspace {workspace!r} does not exist")
    return workspace


def _find_dataset(client: "rg.Argilla", name: str, workspace: str) -> Optional["rg.Dataset"]:
    with warnings.catch_warnings():
        # The SDK warns when a dataset is not found; here that is an expected answer.
        warnings.simplefilter("ignore")
        return client.datasets(name=name, workspace=workspace)


def _check_settings(client: "rg.Argilla", dataset: "rg.Dataset", name: str) -> None:
    expected = rd.settings_signature(rd.build_settings(client))
    found = rd.settings_signature(dataset.settings)
    if expected != found:
        raise ReviewError(
            f"Argilla dataset {name!r} already exists with different settings "
            f"({rd.describe_mismatch(expected, found)}); use another dataset name or delete it"
        )


def get_or_create_dataset(
    client: "rg.Argilla",
    credentials: ArgillaCredentials,
    name: str,
    workspace: Optional[str] = None,
    retry: RetryPolicy = RetryPolicy(),
) -> "rg.Dataset":
    """The review dataset ``name``: reused when its settings match ours, created when absent."""
    import argilla as rg

    workspace = _call(lambda: resolve_workspace(client, workspace), "workspace lookup", credentials, retry)
    def lookup() -> Optional["rg.Dataset"]:
        return _call(lambda: _find_dataset(client, name, workspace), "dataset lookup", credentials, retry)

    def drop_unpublished(dataset: "rg.Dataset") -> None:
        # An unpublished leftover of an interrupted creation (a killed run, or a failed attempt
        # whose SDK rollback did not run). Drafts cannot hold records, so deleting loses nothing.
        logger.warning("Deleting unpublished leftover Argilla dataset %r before creating it again", name)
        _call(dataset.delete, "cleanup of an unpublished dataset", credentials, retry)

    existing = lookup()
    if existing is not None and existing.api_model().status == "ready":
        _check_settings(client, existing, name)
        logger.info("Reusing Argilla dataset %r in workspace %r", name, workspace)
        return existing
    if existing is not None:
        drop_unpublished(existing)

    def create() -> "rg.Dataset":
        dataset = rg.Dataset(name=name, workspace=workspace, settings=rd.build_settings(client), client=client)
        return dataset.create()

    # Creation is several requests (dataset, each field/question/metadata property, publish), so
    # it is not retried blindly: after a failure, look at what the server has.
    for attempt in range(1, retry.attempts + 1):
        try:
            created = _call(create, "dataset creation", credentials, RetryPolicy(attempts=1))
            logger.info("Created Argilla dataset %r in workspace %r", name, workspace)
            return created
        except ReviewError as error:
            existing = lookup()
            if existing is not None and existing.api_model().status == "ready":
                # Published meanwhile: by a concurrent push, or by our attempt whose reply was lost.
                _check_settings(client, existing, name)
                return existing
            if existing is not None:
                drop_unpublished(existing)
            if not error.transient or attempt == retry.attempts:
                raise
            logger.warning(
                "Argilla dataset creation failed, retry %d/%d in %.1fs",
                attempt,
                retry.attempts - 1,
                retry.delay(attempt),
            )
            time.sleep(retry.delay(attempt))
    raise AssertionError("unreachable")  # pragma: no cover


# --- push -----------------------------------------------------------------------------------


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


# --- pull -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Review:
    """One reviewer's submitted answers for one record."""

    preference: Optional[str]
    correction: Optional[str] = None
    note: Optional[str] = None


@dataclass(frozen=True)
class Verdict:
    """All submitted reviews of one record, aggregated.

    ``label`` is the strict-majority preference, ``"disputed"`` when no label has a strict majority,
    or None when nobody submitted. ``correction`` is set only when reviewers who wrote one agree
    on it; different corrections cancel out (``conflicting_corrections``).
    """

    label: Optional[str]
    reviews: int
    correction: Optional[str] = None
    notes: Tuple[str, ...] = ()
    conflicting_corrections: bool = False


DISPUTED = "disputed"

# review_action values
UNREVIEWED = "unreviewed"
CONFIRMED = "confirmed"
SWAPPED = "swapped"
CORRECTED = "corrected"
KEPT_TIE = "kept_tie"
DROPPED_TIE = "dropped_tie"
DROPPED_BOTH_BAD = "dropped_both_bad"
DROPPED_DISPUTED = "dropped_disputed"
DROPPED_UNREVIEWED = "dropped_unreviewed"


def aggregate_reviews(reviews: Sequence[Review]) -> Verdict:
    """Majority label, agreed correction and all notes of one record's submitted reviews."""
    votes = collections.Counter(review.preference for review in reviews if review.preference)
    label: Optional[str] = None
    if votes:
        (top, top_count), *rest = votes.most_common()
        # A strict majority of the votes cast, not just a plurality: 1-1 or 2-1-1 is a dispute.
        label = top if top_count * 2 > sum(votes.values()) else DISPUTED
    corrections = {review.correction.strip() for review in reviews if review.correction and review.correction.strip()}
    notes = tuple(review.note.strip() for review in reviews if review.note and review.note.strip())
    return Verdict(
        label=label,
        reviews=len(reviews),
        correction=next(iter(corrections)) if len(corrections) == 1 else None,
        notes=notes,
        conflicting_corrections=len(corrections) > 1,
    )


def _message_pair(instruction: str, content: str) -> List[Dict[str, str]]:
    return [{"role": "user", "content": instruction}, {"role": "assistant", "content": content}]


def apply_verdict(
    row: Mapping[str, Any], verdict: Optional[Verdict], ties: str = "drop", keep_unreviewed: bool = True
) -> Tuple[Optional[Dict[str, Any]], str]:
    """(reviewed row or None when dropped, review_action) for one DPO row; see the module table."""
    if ties not in ("drop", "keep"):
        raise ValueError(f"ties must be 'drop' or 'keep', got {ties!r}")
    out = dict(row)
    label = verdict.label if verdict else None
    out["review_label"] = label
    out["review_note"] = "\n\n".join(verdict.notes) if verdict and verdict.notes else None
    out["review_count"] = verdict.reviews if verdict else 0

    def done(action: str, keep: bool) -> Tuple[Optional[Dict[str, Any]], str]:
        out["review_action"] = action
        return (out if keep else None), action

    if verdict is None or verdict.reviews == 0:
        return done(UNREVIEWED, True) if keep_unreviewed else done(DROPPED_UNREVIEWED, False)

    if verdict.correction:
        # The worse original stays as rejected: the original chosen only if reviewers said so.
        if label == rd.LABEL_REJECTED:
            out["rejected"] = row["chosen"]
            out["rejected_index"] = row.get("chosen_index")
            out["rejected_score"] = row.get("chosen_score")
        out["chosen"] = _message_pair(row["instruction"], verdict.correction)
        out["chosen_index"] = None
        out["chosen_score"] = None
        out["score_margin"] = None
        return done(CORRECTED, True)

    if label == rd.LABEL_CHOSEN:
        return done(CONFIRMED, True)
    if label == rd.LABEL_REJECTED:
        out["chosen"], out["rejected"] = row["rejected"], row["chosen"]
        out["chosen_index"], out["rejected_index"] = row.get("rejected_index"), row.get("chosen_index")
        out["chosen_score"], out["rejected_score"] = row.get("rejected_score"), row.get("chosen_score")
        if out["chosen_score"] is not None and out["rejected_score"] is not None:
            out["score_margin"] = out["chosen_score"] - out["rejected_score"]
        return done(SWAPPED, True)
    if label == rd.LABEL_TIE:
        return done(KEPT_TIE, True) if ties == "keep" else done(DROPPED_TIE, False)
    if label == rd.LABEL_BOTH_BAD:
        return done(DROPPED_BOTH_BAD, False)
    if label == DISPUTED:
        return done(DROPPED_DISPUTED, False)
    raise ValueError(f"unknown review label {label!r}")


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


# --- CLI ------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m magpie_dl.review",
        description=f"Review DPO pairs in Argilla ({ENV_API_URL} / {ENV_API_KEY} from the environment).",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    push = commands.add_parser("push", help="push a saved DPO DatasetDict to an Argilla review dataset")
    pull = commands.add_parser("pull", help="write a reviewed DPO DatasetDict from submitted reviews")
    for sub in (push, pull):
        sub.add_argument("--input", required=True, type=Path, help="DPO dataset saved with save_to_disk")
        sub.add_argument("--dataset-name", required=True, help="Argilla dataset name")
        sub.add_argument("--workspace", default=None, help="Argilla workspace (default: the user's first)")
    push.add_argument(
        "--batch-size", type=int, default=DEFAULT_BATCH_SIZE, help=f"records per request (max {MAX_BATCH_SIZE})"
    )
    pull.add_argument("--output", required=True, type=Path, help="where to save the reviewed DatasetDict")
    pull.add_argument("--ties", choices=("drop", "keep"), default="drop", help="what to do with pairs judged a tie")
    pull.add_argument("--drop-unreviewed", action="store_true", help="keep only pairs someone reviewed")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    # httpx and the SDK log every request at INFO; keep the output to our own progress lines.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("argilla.sdk").setLevel(logging.WARNING)
    from datasets.utils.logging import disable_progress_bar

    disable_progress_bar()  # the CLI prints its own summary lines
    try:
        if args.command == "push":
            print(push_to_argilla(args.input, args.dataset_name, args.workspace, args.batch_size))
        else:
            _, report = pull_reviewed(
                args.input,
                args.dataset_name,
                output=args.output,
                workspace=args.workspace,
                ties=args.ties,
                keep_unreviewed=not args.drop_unreviewed,
            )
            print(report.format())
            print(f"reviewed dataset written to {args.output}")
    except ReviewError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
