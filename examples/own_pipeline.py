"""magpie_dl's steps in a distilabel pipeline of your own: instructions in, DPO pairs out.

    python own_pipeline.py [MODELS_DIR]

MODELS_DIR holds ``generator/`` (a chat model) and ``reward/`` (a reward model); by default the
tiny test models (``magpie_dl.paths.TINY_DIR``: ``make models`` builds them).
"""

import sys
from pathlib import Path

from distilabel.pipeline import Pipeline
from distilabel.steps import LoadDataFromDicts

from magpie_dl.backends.transformers import TransformersBackend
from magpie_dl.distilabel_compat import streaming
from magpie_dl.paths import TINY_DIR
from magpie_dl.steps.pairing import BestWorstPairing
from magpie_dl.steps.responses import MultiResponseGeneration
from magpie_dl.steps.reward import RewardScoring

models = Path(sys.argv[1]) if len(sys.argv) > 1 else TINY_DIR

with Pipeline(name="my-dpo-pairs") as pipeline:
    instructions = LoadDataFromDicts(data=[  # rows carrying only `instruction`: uuids are derived
        {"instruction": "Give me three tips for a tidy desk."},
        {"instruction": "How do I make a simple vegetable soup?"},
        {"instruction": "Suggest a name for a small bakery."},
    ])
    # Any distilabel LLM works here too (TransformersLLM, vLLM, OpenAILLM...); ours gives exact
    # prompts, finish reasons and per-row seeds.
    responses = MultiResponseGeneration(
        llm=TransformersBackend(model=str(models / "generator")), num_generations=3, max_tokens=64, seed=7
    )
    reward = RewardScoring(model=str(models / "reward"))
    pairs = BestWorstPairing()
    instructions >> responses >> reward >> pairs

if __name__ == "__main__":
    with streaming(pipeline):  # optional: batches overlap on the engine
        distiset = pipeline.run(use_cache=False)
    rows = distiset["default"]["train"]
    kept = [row for row in rows if row["chosen"] is not None]
    for row in rows:
        print(f"{row['pair_status']:>14}  {row['instruction']}")
    print(f"{len(kept)} of {len(rows)} instructions paired")
