"""A step that records how many per-batch copies distilabel has written so far (tests/test_step_data.py).

In an importable module: distilabel reloads steps by their import path.
"""

from pathlib import Path

from distilabel.steps import Step, StepInput


class CountCopies(Step):
    """Adds ``copies_seen``: the ``steps_data`` JSON files under ``cache_dir`` when the batch arrived."""

    cache_dir: str

    @property
    def outputs(self) -> list[str]:
        return ["copies_seen"]

    def process(self, inputs: StepInput):  # type: ignore[override]
        seen = len(list(Path(self.cache_dir).glob("*/steps_data/*/batch_*.json")))
        yield [{**row, "copies_seen": seen} for row in inputs]
