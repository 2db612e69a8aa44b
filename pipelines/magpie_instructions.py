"""Magpie instructions, curated: generate queries, tag them, drop near-duplicates, select a
category-balanced high-quality set (the "select ~100K instructions" stage of the recipe).

    python pipelines/magpie_instructions.py --preset smoke
    python pipelines/dpo_100k.py --instructions out/instructions_smoke/dataset

With no preset this is the full recipe: Llama-3.1-70B-Instruct queries, a Llama-3-8B-Instruct
judge, FsfairX-LLaMA3-RM instruct rewards (kept >= -5), all-mpnet-base-v2 embeddings, 100K
selected, 30% of them from Information + Advice seeking and 70% from the other categories. Writes ``dataset/``,
``instructions.jsonl``, ``left_out.jsonl`` and ``selection.json`` to the output directory.
"""

from __future__ import annotations

import sys

from magpie_dl.run.stopping import exit_on_stop_signals

if __name__ == "__main__":  # a script run, not an import of its steps: leave the importer's handlers alone
    exit_on_stop_signals()  # Ctrl-C while the libraries import: one line, not a traceback
from magpie_dl.backends import make_backend  # (first: it quiets distilabel's import warnings)
from magpie_dl.backends.base import CompletionLLM
from distilabel.pipeline import Pipeline
from magpie_dl.config.curation import InstructionsConfig
from magpie_dl.run.outdir import in_progress_dir
from magpie_dl.run.recipes import MAGPIE_INSTRUCTIONS
from magpie_dl.run.driver import main_for
from magpie_dl.steps.curation import (
    CuratedSelection,
    InstructionTagging,
    InstructReward,
    LanguageTagging,
    NearDuplicateTagging,
    SafetyTagging,
)
from magpie_dl.steps.magpie import query_stage
from magpie_dl.steps.responses import MultiResponseGeneration
from magpie_dl.steps.set_aside import set_aside_for
from magpie_dl.steps.reward import RewardScoring
from magpie_dl.steps.turns import conversation_stage

# The instruct-reward response and its scores live beside, not in, the DPO columns.
RESPONSE_COLUMNS = {
    "generations": "instruct_response",
    "finish_reasons": "instruct_response_finish_reason",
    "generation_tokens": "instruct_response_tokens",
    "gen_response_configs": "instruct_response_configs",
}
RATING_COLUMNS = {
    "ratings": "instruct_ratings",
    "rating_truncated": "instruct_rating_truncated",
    "rating_errors": "instruct_rating_errors",
    "reward_objectives": "instruct_reward_objectives",
}


def build_pipeline(cfg: InstructionsConfig) -> Pipeline:
    """generate (>> later turns) >> language >> judge tags (>> safety) >> instruct reward >> near-duplicates >> select
    (the last two on the columns they read; the rest of each row is set aside and joined back)."""
    gen, tag, ir = cfg.generator, cfg.tagging, cfg.instruct_reward
    stored = {"cache_dir": str(cfg.cache_dir)}

    def llm_for(model: str) -> CompletionLLM:
        return make_backend(cfg.backend, model, cfg.seed)

    stand_in = cfg.backend.kind == "standin"  # every model boundary, not only the engines
    with Pipeline(name="magpie-instructions", description=__doc__,
                  cache_dir=cfg.cache_dir / "distilabel") as pipeline:  # its own cache, removed after the run
        queries = query_stage(gen, llm_for(gen.model), cfg.seed, cfg.scaleout.query_replicas, **stored)
        # Later user turns (generator.num_turns > 1), each answered: the released multi-turn rows.
        queries = conversation_stage(
            queries, gen, lambda: llm_for(gen.model), cfg.seed, reply_to_last=gen.num_turns > 1, **stored,
        )
        language = LanguageTagging.from_config(tag, name="language")
        tags = InstructionTagging.from_config(tag, name="judge_tags", llm=llm_for(tag.judge_model), **stored)
        last = queries >> language >> tags
        if tag.guard_model:
            last = last >> SafetyTagging.from_config(tag, name="safety", llm=llm_for(tag.guard_model), **stored)
        if ir.enabled:
            response = MultiResponseGeneration.from_config(
                ir, name="instruct_response", llm=llm_for(gen.model), family=gen.family,
                num_generations=1, seed=cfg.seed, output_mappings=RESPONSE_COLUMNS, **stored,
            )
            score = RewardScoring.from_config(
                cfg.reward, name="instruct_reward_model", stand_in=stand_in,
                # A truncated instruct response is scored too, as the reference does.
                input_mappings={"generations": "instruct_response"}, output_mappings=RATING_COLUMNS, **stored,
            )
            last = last >> response >> score >> InstructReward.from_config(ir, name="instruct_reward")
        near_dups = NearDuplicateTagging.from_config(cfg.dedup, name="near_duplicates", stand_in=stand_in)
        select = CuratedSelection.from_config(
            cfg.selection, name="selection", seed=cfg.seed,
            min_instruct_reward=cfg.selection.min_instruct_reward if ir.enabled else None,
            keep_rejected=True,  # written to left_out.jsonl with their reason
            # Written during the run: kept with the run's in-progress state until it finishes.
            report_path=str(in_progress_dir(cfg.output_dir) / "selection.json"),
        )
        # The global steps hold every row at once: they get only the columns they read, and the
        # whole rows wait on disk in a leaf of their own until the run's rows are read.
        read, aside = set_aside_for(near_dups, select, batch_size=last.input_batch_size)
        last >> [read, aside]
        read >> near_dups >> select
    return pipeline


def main() -> int:
    """The recipe's command line (also the console script)."""
    return main_for(MAGPIE_INSTRUCTIONS, build_pipeline, __doc__)


if __name__ == "__main__":
    sys.exit(main())
