"""The curation recipe's command, with its global steps recording the columns of the rows they receive.

    GLOBAL_STEP_COLUMNS=FILE python -m tests.global_step_probe ARGS...  (ARGS: pipelines/magpie_instructions.py's)

Each global step's ``process`` is wrapped before the run starts (the step workers are forked
from this process, so they run the wrapper); each call appends one JSON line to FILE:
``{"step": name, "rows": n, "columns": [every column any received row has]}``.
"""

from __future__ import annotations

import functools
import json
import os
import sys


def _recording(process, path: str):
    @functools.wraps(process)  # distilabel reads the wrapped signature (its StepInput hint)
    def wrapper(self, inputs):
        columns = sorted({name for row in inputs for name in row})
        with open(path, "a") as handle:
            handle.write(json.dumps({"step": self.name, "rows": len(inputs), "columns": columns}) + "\n")
        yield from process(self, inputs)

    return wrapper


def main() -> int:
    from magpie_dl.pipelines import magpie_instructions
    from magpie_dl.steps.curation import CuratedSelection, NearDuplicateTagging

    path = os.environ["GLOBAL_STEP_COLUMNS"]
    for step in (NearDuplicateTagging, CuratedSelection):
        step.process = _recording(step.process, path)
    return magpie_instructions.main()


if __name__ == "__main__":
    sys.exit(main())
