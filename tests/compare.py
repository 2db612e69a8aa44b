"""Comparing two runs' outputs: floats within a stated tolerance, everything else exactly."""

from __future__ import annotations

import math
from typing import Any

# Scores (float32) computed in another batch composition or another process differ in the
# last bits: padding widths change the matmul shapes and so the summation order, and the
# reward head's sums cancel, which magnifies that. Seen: 6e-8 between a Ray and a local run,
# 1.1e-5 (-1.0074871 vs -1.0074983) between a killed run's rerun and the uninterrupted run in
# the crash harness on a fresh clone. 1e-4 is about 10x the worst seen, and far below any
# difference that means a real change (another input, model or truncation moves a score of
# the tiny reward model by 1e-2 or more).
FLOAT_TOLERANCE = 1e-4


def assert_same(a: Any, b: Any, path: str = "rows") -> None:
    """``a == b`` recursively, except floats, equal within ``FLOAT_TOLERANCE`` (abs or rel)."""
    if isinstance(a, float) and isinstance(b, float):
        close = math.isclose(a, b, rel_tol=FLOAT_TOLERANCE, abs_tol=FLOAT_TOLERANCE)
        assert close or (math.isnan(a) and math.isnan(b)), f"{path}: {a} != {b}"
    elif isinstance(a, dict) and isinstance(b, dict):
        assert a.keys() == b.keys(), f"{path}: keys differ: {sorted(a.keys() ^ b.keys())}"
        for key in a:
            assert_same(a[key], b[key], f"{path}.{key}")
    elif isinstance(a, list) and isinstance(b, list):
        assert len(a) == len(b), f"{path}: {len(a)} != {len(b)} items"
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{path}[{i}]")
    else:
        assert type(a) is type(b) and a == b, f"{path}: {a!r} != {b!r}"
