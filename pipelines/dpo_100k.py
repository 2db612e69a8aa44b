"""Magpie-Llama-3.1-Pro-DPO-100K: Magpie queries, 5 responses each, reward-scored best/worst pairs.

With no preset this is the real recipe (Llama-3.1-70B-Instruct on vLLM, ArmoRM-Llama3-8B
scores, 100K instructions); `--preset smoke` runs the same pipeline on tiny local models.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from magpie_dl.run.stopping import exit_on_stop_signals

if __name__ == "__main__":  # a script run, not an import of its steps: leave the importer's handlers alone
    exit_on_stop_signals()  # Ctrl-C while the libraries import: one line, not a traceback
from magpie_dl.backends import make_backend  # (first: it quiets distilabel's import warnings)
from distilabel.pipeline import Pipeline
from magpie_dl.config.dpo import RecipeConfig
from magpie_dl.run.recipes import DPO_100K
from magpie_dl.run.driver import main_for
from magpie_dl.steps.instructions import LoadInstructions
from magpie_dl.steps.magpie import query_stage
from magpie_dl.steps.pairing import BestWorstPairing
from magpie_dl.steps.responses import MultiResponseGeneration
from magpie_dl.steps.reward import RewardScoring
from magpie_dl.steps.turns import conversation_stage

if TYPE_CHECKING:
    from magpie_dl.distilabel_compat import AnyStep


def query_source(cfg: RecipeConfig, stored: dict) -> AnyStep:
    """Magpie queries from the generator model (one writer, or replicas on Ray), or an
    existing (curated) instruction set; returns the step whose rows are the queries."""
    gen = cfg.generator
    if cfg.instructions:
        return LoadInstructions(name="instructions", source=cfg.instructions, batch_size=gen.batch_size)
    llm = make_backend(cfg.backend, gen.model, cfg.seed)
    return query_stage(gen, llm, cfg.seed, cfg.scaleout.query_replicas, **stored)


def build_pipeline(cfg: RecipeConfig) -> Pipeline:
    """Magpie queries (>> reply >> next turn, per later turn) >> multi-generation >> reward scoring >> best/worst pairing."""
    stored = {"cache_dir": str(cfg.cache_dir)}
    with Pipeline(name="magpie-dpo-100k", description=__doc__,
                  cache_dir=cfg.cache_dir / "distilabel") as pipeline:  # its own cache, removed after the run
        # Later user turns (generator.num_turns > 1): the responses answer the last one.
        queries = conversation_stage(
            query_source(cfg, stored), cfg.generator, lambda: make_backend(cfg.backend, cfg.generator.model, cfg.seed),
            cfg.seed, reply_to_last=False, prompt_style=cfg.responses.prompt_style, **stored,
        )
        responses = MultiResponseGeneration.from_config(
            cfg.responses, name="responses", llm=make_backend(cfg.backend, cfg.response_model, cfg.seed),
            family=cfg.generator.family, seed=cfg.seed, **stored,
        )
        scores = RewardScoring.from_config(cfg.reward, name="reward", stand_in=cfg.backend.kind == "standin", **stored)
        pairs = BestWorstPairing.from_config(cfg.pairing, name="pairing", input_batch_size=cfg.reward.input_batch_size)
        queries >> responses >> scores >> pairs
    return pipeline


def main() -> int:
    """The recipe's command line (also the console script)."""
    return main_for(DPO_100K, build_pipeline, __doc__)


if __name__ == "__main__":
    sys.exit(main())
