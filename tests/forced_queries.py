"""A query a test needs, built rather than hoped for: a stub at the model boundary.

Which queries the tiny generator writes depends on the machine that trained it, so a
test that needs, say, an exact duplicate at row 15 cannot wait for the model to write
one. :class:`ForcedQueriesBackend` is the real transformers backend except that the
completions of chosen sampling seeds (Magpie rows: ``derive_seed("query", run seed,
row)``) are replaced by given texts; every other completion is the model's own.

In a test process, construct it directly. To run a recipe's CLI with it (local step
workers and Ray actors alike), run this file as the script::

    python tests/forced_queries.py '{"<seed>": "text", ...}' pipelines/dpo_100k.py ARGS...

It makes the recipe build this backend wherever it would build the transformers one,
then runs the recipe as ``python pipelines/dpo_100k.py ARGS...`` would. The forced
texts are fields of the backend, so they travel with the step to wherever it runs;
processes that rebuild the step (Ray workers) need ``tests/`` on their ``PYTHONPATH``.
"""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path
from typing import Any

from pydantic import Field

# Run as a script (and in Ray workers), the checkout's packages come first, as the recipes do it.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from magpie_dl.backends.base import Completion, PromptInput, SamplingSpec  # noqa: E402
from magpie_dl.backends.transformers import TransformersBackend  # noqa: E402
from magpie_dl.recipe.queries import derive_seed  # noqa: E402

# What the backend forces when built by a recipe run through main() (set there).
_FORCED: dict[str, str] = {}


def query_seeds(run_seed: int, texts_by_row: dict[int, str]) -> dict[str, str]:
    """``{row: text}`` as ``{sampling seed of that row's Magpie query: text}``.

    Seeds are strings: distilabel's step signature takes only string keys.
    """
    return {str(derive_seed("query", run_seed, row)): text for row, text in texts_by_row.items()}


class ForcedQueriesBackend(TransformersBackend):
    """The transformers backend, with the completion of each seed in ``forced`` replaced.

    A forced completion is the given text, ended by the tokenizer's EOS token (a finished
    turn, as a model that stopped would report it).
    """

    forced: dict[str, str] = Field(default_factory=lambda: dict(_FORCED))

    def complete(self, prompts: list[PromptInput], sampling: list[SamplingSpec]) -> list[list[Completion]]:
        results = super().complete(prompts, sampling)
        for i, spec in enumerate(sampling):
            if spec.n == 1 and str(spec.seed) in self.forced:
                text = self.forced[str(spec.seed)]
                ids = self.tokenizer.encode(text, add_special_tokens=False) + [self.tokenizer.eos_token_id]
                results[i] = [Completion(text=text, token_ids=ids, finish_reason="stop")]
        return results


def main(argv: list[str]) -> None:
    """``FORCED_JSON SCRIPT ARGS...``: run a recipe script with the forced backend."""
    import magpie_dl.backends.transformers as transformers_backend

    forced, script, args = argv[0], argv[1], argv[2:]
    _FORCED.update(json.loads(forced))
    # make_backend looks the class up in magpie_dl.backends.transformers each time it builds one.
    transformers_backend.TransformersBackend = ForcedQueriesBackend  # type: ignore[misc]
    sys.argv = [str(script), *args]
    runpy.run_path(script, run_name="__main__")


def run_args(forced: dict[str, str], script: Any) -> list[str]:
    """The command line (after the interpreter) that runs ``script`` with ``forced``."""
    return [__file__, json.dumps(forced), str(script)]


if __name__ == "__main__":
    # Import this file as its module (not as __main__), so that pickled backends name
    # ``forced_queries.ForcedQueriesBackend``, which step workers can import.
    from forced_queries import main as _main

    _main(sys.argv[1:])
