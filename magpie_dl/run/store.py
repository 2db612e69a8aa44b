"""Durable results: every expensive call is stored as it finishes, keyed by what decides it.

A full run is days of GPU time, and distilabel's own resume hangs after a hard kill, so
a rerun simply runs the pipeline again and every generation or score already stored is
read back instead of recomputed. Keys hash everything that determines a result (the
model, the exact prompt tokens, the sampling parameters including the seed, the
step's code version): change one and only what it affects is recomputed.

The store is one SQLite file in WAL mode: each step process has its own connection,
each batch is one transaction, so a process killed mid-write loses at most that batch
and never corrupts what is stored.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from magpie_dl.backends.base import Completion, PromptInput, SamplingSpec

STORE_FILE = "results.sqlite"


def result_key(*parts: Any) -> str:
    """A stable key over JSON-able parts."""
    blob = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


class ResultStore:
    """Key -> JSON value, shared by the step processes of one output directory."""

    def __init__(self, directory: str | Path) -> None:
        self.path = Path(directory) / STORE_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        with self._connect() as db:
            db.execute("CREATE TABLE IF NOT EXISTS results (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            db.execute(
                "CREATE TABLE IF NOT EXISTS usage (step TEXT PRIMARY KEY, reused INTEGER NOT NULL, computed INTEGER NOT NULL)"
            )
            db.execute(
                "CREATE TABLE IF NOT EXISTS progress (step TEXT PRIMARY KEY, rows INTEGER NOT NULL, tokens INTEGER NOT NULL)"
            )
            # When each step first counted (and what), and when it last did: wall-clock times
            # from the step processes, so a rate does not depend on when the display looked.
            db.execute(
                "CREATE TABLE IF NOT EXISTS progress_times (step TEXT PRIMARY KEY, first REAL NOT NULL, "
                "first_rows INTEGER NOT NULL, first_tokens INTEGER NOT NULL, last REAL NOT NULL)"
            )

    def _connect(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=60, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable against process kills
            self._local.db = db
        return db

    def get_many(self, keys: Sequence[str]) -> dict[str, Any]:
        found: dict[str, Any] = {}
        db = self._connect()
        for start in range(0, len(keys), 500):
            chunk = list(keys[start : start + 500])
            marks = ",".join("?" * len(chunk))
            for key, value in db.execute(f"SELECT key, value FROM results WHERE key IN ({marks})", chunk):
                found[key] = json.loads(value)
        return found

    def put_many(self, items: Iterable[tuple[str, Any]]) -> None:
        rows = [(key, json.dumps(value, separators=(",", ":"))) for key, value in items]
        if not rows:
            return
        db = self._connect()
        db.execute("BEGIN IMMEDIATE")
        try:
            db.executemany("INSERT OR REPLACE INTO results (key, value) VALUES (?, ?)", rows)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def count_usage(self, step: str, reused: int, computed: int) -> None:
        self._connect().execute(
            "INSERT INTO usage (step, reused, computed) VALUES (?, ?, ?) ON CONFLICT(step) DO UPDATE SET "
            "reused = reused + excluded.reused, computed = computed + excluded.computed",
            (step, reused, computed),
        )

    def reset_usage(self) -> None:
        """Forget the previous run's usage and progress counters (not its results)."""
        db = self._connect()
        db.execute("DELETE FROM usage")
        db.execute("DELETE FROM progress")
        db.execute("DELETE FROM progress_times")

    def count_progress(self, step: str, rows: int, tokens: int) -> None:
        """Rows a step has finished in this run, and the tokens it generated or scored."""
        db, now = self._connect(), time.time()
        db.execute(
            "INSERT INTO progress (step, rows, tokens) VALUES (?, ?, ?) ON CONFLICT(step) DO UPDATE SET "
            "rows = rows + excluded.rows, tokens = tokens + excluded.tokens",
            (step, rows, tokens),
        )
        db.execute(
            "INSERT INTO progress_times (step, first, first_rows, first_tokens, last) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT(step) DO UPDATE SET last = excluded.last",
            (step, now, rows, tokens, now),
        )

    def progress_times(self) -> dict[str, tuple[float, int, int, float]]:
        """Per step: (time of its first count, rows and tokens counted then, time of its last count)."""
        rows = self._connect().execute("SELECT step, first, first_rows, first_tokens, last FROM progress_times")
        return {step: (first, done, tokens, last) for step, first, done, tokens, last in rows}

    def progress(self) -> dict[str, tuple[int, int]]:
        rows = self._connect().execute("SELECT step, rows, tokens FROM progress")
        return {step: (done, tokens) for step, done, tokens in rows}

    def usage(self) -> dict[str, dict[str, int]]:
        rows = self._connect().execute("SELECT step, reused, computed FROM usage ORDER BY step")
        return {step: {"reused": reused, "computed": computed} for step, reused, computed in rows}

    def __len__(self) -> int:
        return self._connect().execute("SELECT COUNT(*) FROM results").fetchone()[0]


def cached_map(
    store: ResultStore | None,
    step: str,
    keys: Sequence[str],
    compute: Callable[[list[int]], list[Any]],
    storable: Callable[[Any], bool] = lambda _: True,
) -> list[Any]:
    """Values for ``keys``: stored ones read back, the rest computed (by index) and stored.

    ``compute`` receives the indices of the missing keys and returns their values in
    that order. Values ``storable`` rejects (transient failures) are returned but not
    stored, so a rerun tries them again.
    """
    if store is None:
        return compute(list(range(len(keys))))
    found = store.get_many(keys)
    missing = [i for i, key in enumerate(keys) if key not in found]
    values = compute(missing) if missing else []
    store.put_many((keys[i], value) for i, value in zip(missing, values) if storable(value))
    store.count_usage(step, reused=len(keys) - len(missing), computed=len(missing))
    by_index = dict(zip(missing, values))
    return [by_index[i] if i in by_index else found[key] for i, key in enumerate(keys)]


def completion_key(version: str, model_name: str, prompt: PromptInput, spec: SamplingSpec) -> str:
    """The store key of one prompt's completions: everything that decides them."""
    # A chat-only LLM's prompt has messages and no token ids (magpie_dl.backends.chat_llm).
    tokens = list(prompt.token_ids) if prompt.token_ids else [dict(m) for m in prompt.messages or ()]
    return result_key("complete", version, model_name, tokens, spec.as_config(), spec.json_schema)


def stored_form(completions: list[Completion]) -> list[dict[str, Any]]:
    """One prompt's completions as the store keeps them: what the rows are built from.

    Not the token ids: as JSON they were most of the store (several GB at 500K prompts x 5
    samples) and nothing reads them back.
    """
    return [
        {"text": c.text, "finish_reason": c.finish_reason, "num_tokens": c.num_tokens}
        | ({"error": c.error} if c.error is not None else {})
        for c in completions
    ]


def from_stored(value: list[dict[str, Any]]) -> list[Completion]:
    """Completions from their stored form; a record stored with its token ids (before
    they were left out) gives the same completion, its count taken from the ids."""
    return [Completion(**c) for c in value]


def storable_completions(value: list[dict[str, Any]]) -> bool:
    """Failed completions are not stored: a rerun tries them again."""
    return all(c["finish_reason"] != "error" for c in value)
