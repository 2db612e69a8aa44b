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

    magpie-dl-review push --input out/run/dataset --dataset-name magpie-review
    magpie-dl-review pull --input out/run/dataset --dataset-name magpie-review \\
        --output out/run/reviewed

Split by job: :mod:`.client` (credentials, retries, errors, the dataset handle), :mod:`.push`,
:mod:`.verdicts` (pure), :mod:`.pull`, :mod:`.cli`.
"""

from magpie_dl.review.cli import main
from magpie_dl.review.client import (
    DEFAULT_BATCH_SIZE,
    ENV_API_KEY,
    ENV_API_URL,
    MAX_BATCH_SIZE,
    ArgillaCredentials,
    RetryPolicy,
    ReviewError,
    connect,
    get_or_create_dataset,
    resolve_workspace,
)
from magpie_dl.review.pull import PullReport, fetch_verdicts, pull_reviewed, reviewed_dataset
from magpie_dl.review.push import PushReport, ReviewDatasetWriter, push_rows, push_to_argilla, to_record
from magpie_dl.review.verdicts import (
    CONFIRMED,
    CORRECTED,
    DISPUTED,
    DROPPED_BOTH_BAD,
    DROPPED_DISPUTED,
    DROPPED_TIE,
    DROPPED_UNREVIEWED,
    KEPT_TIE,
    SWAPPED,
    UNREVIEWED,
    Review,
    Verdict,
    aggregate_reviews,
    apply_verdict,
)

__all__ = [
    "CONFIRMED", "CORRECTED", "DEFAULT_BATCH_SIZE", "DISPUTED", "DROPPED_BOTH_BAD", "DROPPED_DISPUTED",
    "DROPPED_TIE", "DROPPED_UNREVIEWED", "ENV_API_KEY", "ENV_API_URL", "KEPT_TIE", "MAX_BATCH_SIZE",
    "SWAPPED", "UNREVIEWED", "ArgillaCredentials", "PullReport", "PushReport", "RetryPolicy", "Review",
    "ReviewDatasetWriter", "ReviewError", "Verdict", "aggregate_reviews", "apply_verdict", "connect",
    "fetch_verdicts", "get_or_create_dataset", "main", "pull_reviewed", "push_rows", "push_to_argilla",
    "resolve_workspace", "reviewed_dataset", "to_record",
]
