"""Run a recipe's own command with the instant engine and scorer of ``benchmarks/overhead.py``.

    .venv/bin/python benchmarks/instant_recipe.py pipelines/dpo_100k.py --backend transformers ...

The model boundary only: ``make_backend`` returns ``InstantLLM`` (canned text with the
model's real tokenizer) and the reward step scores without a model; the command line,
checks, distilabel pipeline, store, export, card and report are the recipe's own.
"""

import runpy
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import magpie_dl.backends  # noqa: E402
import steps.reward  # noqa: E402
from benchmarks.overhead import InstantLLM, InstantRewardScoring  # noqa: E402

if __name__ == "__main__":
    script, *args = sys.argv[1:]
    sys.argv = [script, *args]
    magpie_dl.backends.make_backend = lambda config, model, seed=0: InstantLLM(model=model)
    steps.reward.RewardScoring = InstantRewardScoring
    runpy.run_path(script, run_name="__main__")
