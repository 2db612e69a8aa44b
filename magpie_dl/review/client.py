"""The Argilla client side: credentials, one retry policy for every call, errors without the key, the dataset handle.

Transient failures (connection errors, timeouts, 5xx, 429) are retried with exponential
backoff; anything else ends as a one-line :class:`ReviewError` with the key scrubbed out.
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Iterator, Optional, Tuple, TypeVar
from urllib.parse import urlsplit, urlunsplit

from magpie_dl.review import dataset as rd
from magpie_dl.scrub import scrub_text

if TYPE_CHECKING:
    import argilla as rg

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
