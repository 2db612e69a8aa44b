"""Work done is never lost at the end: a failure after the rows are stored is one line, not a traceback.

Every completion and score is in the result store (``DIR/cache``) the moment it is made,
so when what comes after the steps fails (distilabel's teardown writing its output files,
the export, the card), rerunning the same command reads everything back from the store
and publishes. :class:`NotPublished` carries such a failure to the driver, which prints
:meth:`NotPublished.line` and exits with :data:`EXIT_CODE`; the full traceback goes to a
file in the cache, scrubbed of secrets, for whoever wants to look.
"""

from __future__ import annotations

import traceback
from pathlib import Path

from magpie_dl import distilabel_compat
from magpie_dl.scrub import scrub_text

EXIT_CODE = 6  # the rows are stored but teardown or export failed (rerun publishes from the store)
DETAILS_NAME = "last_failure.txt"


class NotPublished(Exception):
    """The steps' work is stored, but making the release from it failed (``stage`` says where)."""

    def __init__(self, stage: str, cause: BaseException) -> None:
        super().__init__(stage, cause)
        self.stage, self.cause = stage, cause
        self.details: Path | None = None

    def kept_in(self, cache_dir: Path | str) -> NotPublished:
        """This failure with its traceback written to ``cache_dir`` (scrubbed of secrets)."""
        details = Path(cache_dir) / DETAILS_NAME
        try:
            details.parent.mkdir(parents=True, exist_ok=True)
            text = "".join(traceback.format_exception(type(self.cause), self.cause, self.cause.__traceback__))
            details.write_text(scrub_text(text))
            self.details = details
        except OSError:  # the disk that failed the export may fail this too: the line still stands
            pass
        return self

    def line(self, out_dir: Path | str) -> str:
        """The one line a user sees: what failed, that the work is kept, what to do."""
        message = scrub_text(str(self.cause).strip().splitlines()[0] if str(self.cause).strip() else "")
        cause = type(self.cause).__name__ + (f": {message}" if message else "")
        return (
            f"error: every step finished and its results are stored, but {self.stage} failed ({cause}); "
            f"nothing was published to {out_dir} (an earlier dataset there is untouched); rerun the same "
            f"command to publish from the stored work" + (f" (details: {self.details})" if self.details else "")
        )


def in_teardown(exc: BaseException) -> bool:
    """Whether ``exc`` was raised in distilabel's teardown, after its steps ran."""
    return distilabel_compat.in_teardown(exc)


__all__ = ["EXIT_CODE", "NotPublished", "in_teardown"]
