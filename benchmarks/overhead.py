"""Engine-free overhead: the recipe's graph with an instant engine, vs a plain loop, vs distilabel's stock chain.

Three ways to do the same work on N instructions x 5 responses, each in its own
subprocess (so its peak memory is its own), one after another in one run:

* ``ours``: what ``python pipelines/dpo_100k.py`` does: the recipe's own graph
  (``build_pipeline``, the full preset's batch sizes, the durable result store on) run by
  distilabel through ``magpie_dl.run.driver.run_recipe``, then the export (train/test split,
  ``left_out``, summary), the dataset card and the HTML report;
* ``loop``: the same step objects called directly in a Python loop
  (``next(step.process(rows))``), no distilabel engine: what the transformations cost;
* ``stock``: distilabel's own chain ``TextGeneration(num_generations=5) ->
  RewardModelScore -> FormatTextGenerationDPO`` (plus a small regroup step, since
  RewardModelScore scores one response per row and distilabel has no step that puts a
  row's five scores back together), fed by the same query generator.

The engine and the reward model are the only fakes: ``InstantLLM`` is a
``CompletionLLM`` that returns canned completions (real tokenizer, real token ids, no
model), and the reward "model" returns a score computed from the input ids with no
forward pass. Tokenisation, chat templates, prompt building, cleaning, the result
store, pairing and everything distilabel does stay real.

Memory is sampled from /proc every 0.5 s over the subprocess and all its children
(distilabel's step workers): peak summed PSS (shared pages counted once), its anonymous
part (the heap; the rest is memory-mapped files: libraries, Arrow data) and the largest
single process RSS. ``--response-words`` sets the canned responses' length
(default 120-380 words, ~1.5 KB); shorter ones make a 1M-instruction memory run take
minutes instead of hours. ``--tokenizers`` picks whose tokenizers the run uses: the tiny
models' (default, ~1K-token vocabulary) or SmolLM2-135M-Instruct's (``models/smollm2``,
49,152 tokens, ChatML) for the query writer, the responses and the reward step alike;
costs that grow with the vocabulary show only with the real one.

    .venv/bin/python benchmarks/overhead.py --instructions 100000 --variants ours loop stock
    .venv/bin/python benchmarks/overhead.py --instructions 2000 --variants ours loop --tokenizers smollm2
    .venv/bin/python benchmarks/overhead.py --instructions 100000 1000000 --variants ours --response-words 20 60
    .venv/bin/python benchmarks/overhead.py --one ours 2000        # one run, JSON on stdout
"""

import argparse
import importlib.util
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pydantic import PrivateAttr  # noqa: E402

from benchmarks import proctree  # noqa: E402

from magpie_dl.backends.base import Completion, CompletionLLM, PromptInput, SamplingSpec  # noqa: E402
from magpie_dl.backends import make_backend  # noqa: E402, F401  (first: it quiets distilabel's import warnings)
from distilabel.steps import RewardModelScore, Step, StepInput  # noqa: E402
from magpie_dl.reward.scoring import Scored  # noqa: E402
from magpie_dl.steps.reward import RewardScoring  # noqa: E402

TINY = REPO / "models" / "tiny"
# Model directories whose tokenizers a run uses: (query writer and responses, reward step).
TOKENIZERS = {
    "tiny": (TINY / "generator", TINY / "reward"),
    "smollm2": (REPO / "models" / "smollm2", REPO / "models" / "smollm2"),
}


def tokenizer_models() -> tuple[Path, Path]:
    """The (generator, reward) directories of this run (a --one child inherits the choice)."""
    return TOKENIZERS[os.environ.get("OVERHEAD_TOKENIZERS", "tiny")]

NUM_GENERATIONS = 5
_WORDS = (
    "the model data answer question time system value function process result example list "
    "number first use make way water city history write explain describe compare plan code "
    "python error learning people help good better simple step because however therefore"
).split()


def canned_texts(count: int, min_words: int, max_words: int, seed: int) -> list[str]:
    """Deterministic pseudo-English texts of varied length (responses ~1.5 KB on average)."""
    rng = random.Random(seed)
    texts = []
    for _ in range(count):
        words = [rng.choice(_WORDS) for _ in range(rng.randint(min_words, max_words))]
        sentences = [" ".join(words[i : i + 12]).capitalize() + "." for i in range(0, len(words), 12)]
        texts.append(" ".join(sentences))
    return texts


class InstantLLM(CompletionLLM):
    """A completion engine that answers instantly with canned text (the model boundary fake).

    Queries (prompts with no user turn) get a canned question made unique by the request
    seed, so Magpie's exact-duplicate check keeps them; responses get one of 64 canned
    answers picked by ``seed + i``. Token ids are the tokenizer's real ids of the text.
    """

    _queries: list[tuple[str, list[int]]] = PrivateAttr(default_factory=list)
    _answers: list[tuple[str, list[int]]] = PrivateAttr(default_factory=list)

    def load(self) -> None:
        super().load()
        encode = lambda t: self.tokenizer(t, add_special_tokens=False)["input_ids"]  # noqa: E731
        self._queries = [(t, encode(t)) for t in canned_texts(64, 8, 30, seed=1)]
        low, high = (int(w) for w in os.environ.get("OVERHEAD_RESPONSE_WORDS", "120 380").split())
        self._answers = [(t, encode(t)) for t in canned_texts(64, low, high, seed=2)]

    def complete(self, prompts: list[PromptInput], sampling: list[SamplingSpec]) -> list[list[Completion]]:
        out = []
        for prompt, spec in zip(prompts, sampling):
            seed = spec.seed or 0
            is_query = prompt.messages is None
            done = []
            for i in range(spec.n):
                if is_query:
                    text, ids = self._queries[(seed + i) % 64]
                    text = f"{text[:-1]} (case {seed + i})?"
                else:
                    text, ids = self._answers[(seed + i) % 64]
                done.append(Completion(text=text, token_ids=list(ids), finish_reason="stop"))
            out.append(done)
        return out


def instant_score(ids: list[int]) -> float:
    """The fake reward: a deterministic number from the ids (no forward pass)."""
    return (sum(ids) % 997) / 100.0


class InstantScorer:
    """Stands in for ``RewardScorer``: real tokenizer, scores without a model."""

    def __init__(self, model: str) -> None:
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(model)

    def score_token_ids(self, sequences: list[list[int]], done: Callable[[list[int], int], None] | None = None) -> list[Scored]:
        scored = [Scored(score=instant_score(s), num_tokens=len(s), truncated=False) for s in sequences]
        if done is not None:  # one pass over everything, counted as the real scorer counts its passes
            done(list(range(len(sequences))), sum(len(s) for s in sequences))
        return scored

    def load(self) -> None:
        """Nothing to load: the tokenizer came with the constructor."""

    def unload(self) -> None:
        """Nothing to free."""


class InstantRewardScoring(RewardScoring):
    """Our RewardScoring step with the instant scorer in place of the model."""

    def model_to_load(self) -> InstantScorer:  # type: ignore[override]
        self._scorer = InstantScorer(self.model)
        return self._scorer


class InstantRewardModel:
    """A reward "model" object: called with the batch ids, returns (B, 1) logits."""

    def __init__(self) -> None:
        import torch

        self.device = torch.device("cpu")

    def __call__(self, input_ids: Any) -> SimpleNamespace:
        import torch

        ids = input_ids["input_ids"] if not isinstance(input_ids, torch.Tensor) else input_ids
        mask = input_ids.get("attention_mask") if not isinstance(input_ids, torch.Tensor) else None
        rows = [r[m.bool()].tolist() if mask is not None else r.tolist() for r, m in zip(ids, mask if mask is not None else ids)]
        return SimpleNamespace(logits=torch.tensor([[instant_score(r)] for r in rows]))


class InstantRewardModelScore(RewardModelScore):
    """distilabel's RewardModelScore with the instant model (its tokenizer and templating stay)."""

    def load(self) -> None:
        from transformers import AutoTokenizer

        Step.load(self)
        self._model = InstantRewardModel()
        self._tokenizer = AutoTokenizer.from_pretrained(self.model)


class RegroupGenerations(Step):
    """One row per instruction again: generations and ratings as lists (batches hold whole groups)."""

    @property
    def inputs(self) -> list[str]:
        return ["instruction", "generation", "score"]

    @property
    def outputs(self) -> list[str]:
        return ["generations", "ratings"]

    # No postponed annotations in this file: distilabel reads the evaluated StepInput hint.
    def process(self, inputs: StepInput):  # type: ignore[override]
        grouped: dict[str, dict[str, Any]] = {}
        for row in inputs:
            score = row["score"][0] if isinstance(row["score"], list) else row["score"]
            entry = grouped.setdefault(row["uuid"], {**row, "generations": [], "ratings": []})
            entry["generations"].append(row["generation"])
            entry["ratings"].append(score)
        yield [{k: v for k, v in r.items() if k not in ("generation", "score")} for r in grouped.values()]


def load_recipe() -> Any:
    spec = importlib.util.spec_from_file_location("dpo_100k", REPO / "pipelines" / "dpo_100k.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def recipe_config(n: int, out_dir: Path, batch_scale: float = 1.0) -> Any:
    """The full preset (its batch sizes) on the chosen tokenizers, N instructions."""
    from magpie_dl.config.dpo import validate

    gen, resp, rm = 1000, 500, 500  # the full preset's batch sizes
    generator, reward = tokenizer_models()
    return validate({
        "generator": {"model": str(generator), "num_instructions": n, "batch_size": int(gen * batch_scale)},
        "responses": {"batch_size": int(resp * batch_scale), "max_tokens": 4096},
        "reward": {"model": str(reward), "device": "cpu", "dtype": "float32",
                   "input_batch_size": int(rm * batch_scale)},
        "output": {"dir": str(out_dir)},
    })


def patched_recipe() -> Any:
    """The recipe module with the engine and the reward model swapped for instant fakes."""
    import magpie_dl.backends

    recipe = load_recipe()
    instant = lambda config, model, seed=0: InstantLLM(model=model)  # noqa: E731
    # The recipe builds every engine (make_backend) and hands it to the steps.
    recipe.make_backend = magpie_dl.backends.make_backend = instant
    recipe.RewardScoring = InstantRewardScoring
    return recipe


def run_ours(n: int, work: Path, batch_scale: float) -> int:
    from magpie_dl.run.recipes import DPO_100K
    from magpie_dl.run.driver import run_recipe

    recipe = patched_recipe()
    summary, _ = run_recipe(DPO_100K, recipe.build_pipeline, recipe_config(n, work / "out", batch_scale), progress=False)
    return summary.instructions


def run_loop(n: int, work: Path, batch_scale: float) -> int:
    """The same step objects, called directly: generator batches -> responses -> reward -> pairing."""
    recipe = patched_recipe()
    pipeline = recipe.build_pipeline(recipe_config(n, work, batch_scale))
    gen, resp, rew, pair = (pipeline.dag.get_step(s)["step"] for s in ("magpie_generator", "responses", "reward", "pairing"))
    for step in (gen, resp, rew, pair):
        step.load()
    done = 0
    for rows, _ in gen.process():
        for i in range(0, len(rows), resp.input_batch_size):
            generated = next(resp.process(rows[i : i + resp.input_batch_size]))
            for j in range(0, len(generated), rew.input_batch_size):
                done += len(next(pair.process(next(rew.process(generated[j : j + rew.input_batch_size])))))
    return done


def run_stock(n: int, work: Path, batch_scale: float) -> int:
    """distilabel's stock chain with the same fakes, fed by the same query generator."""
    from distilabel.pipeline import Pipeline
    from distilabel.steps import FormatTextGenerationDPO
    from distilabel.steps.tasks import TextGeneration

    recipe = patched_recipe()
    cfg = recipe_config(n, work, batch_scale)
    per_instruction = int(500 * batch_scale)
    generator, reward = tokenizer_models()
    with Pipeline(name="stock-dpo") as pipeline:
        queries = recipe.query_source(cfg, {"cache_dir": str(cfg.cache_dir)})
        generate = TextGeneration(
            llm=InstantLLM(model=str(generator)), num_generations=NUM_GENERATIONS,
            input_batch_size=per_instruction,
        )
        score = InstantRewardModelScore(
            model=str(reward), input_mappings={"response": "generation"},
            input_batch_size=per_instruction * NUM_GENERATIONS,
        )
        regroup = RegroupGenerations(input_batch_size=per_instruction * NUM_GENERATIONS)
        pairs = FormatTextGenerationDPO(input_batch_size=per_instruction)
        queries >> generate >> score >> regroup >> pairs
    distiset = pipeline.run(use_cache=False)
    return distiset["default"]["train"].num_rows


VARIANTS = {"ours": run_ours, "loop": run_loop, "stock": run_stock}


def run_one(variant: str, n: int, batch_scale: float) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix=f"overhead-{variant}-"))
    # distilabel writes its cache (parquet batches, logs) under here.
    os.environ["DISTILABEL_CACHE_DIR"] = str(work / "distilabel")
    try:
        started = time.perf_counter()
        rows = VARIANTS[variant](n, work, batch_scale)
        seconds = time.perf_counter() - started
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {"variant": variant, "instructions": n, "rows": rows, "seconds": seconds, "batch_scale": batch_scale}


class TreeMemory(proctree.Periodic):
    """Samples a process tree's memory (MiB): peaks of the summed PSS, of its anonymous part
    (heap: what the run allocates), and of the largest single process RSS.

    PSS counts a page shared by k processes as 1/k in each. Its file-backed part is mostly
    memory-mapped files: shared libraries and the Arrow datasets read through ``datasets``
    (clean page cache the kernel can drop), so ``peak_pss_anon`` is the run's own memory.
    """

    def __init__(self, root: int, every: float = 0.5) -> None:
        super().__init__(every)
        self.root = root
        self.peak_pss = self.peak_pss_anon = self.peak_rss = 0.0

    def sample(self) -> None:
        pss, anon, rss = proctree.memory_mib(proctree.tree(self.root))
        self.peak_pss, self.peak_rss = max(self.peak_pss, pss), max(self.peak_rss, rss)
        self.peak_pss_anon = max(self.peak_pss_anon, anon)


def measure(variant: str, n: int, batch_scale: float, timeout: float | None = None) -> dict[str, Any]:
    """Run one variant in a subprocess; its JSON result plus the tree's peak memory."""
    # distilabel hangs after a step error instead of failing: bound every run.
    timeout = timeout or 300 + 0.1 * n
    cmd = [sys.executable, __file__, "--one", variant, str(n), "--batch-scale", str(batch_scale)]
    # CPU time of the whole tree: the child and every worker it waited for. Less
    # sensitive than wall time to other load on a shared machine.
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    with TreeMemory(proc.pid) as memory:
        try:
            out, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:  # distilabel hangs after some step failures
            proc.kill()
            raise RuntimeError(f"{variant} at {n} ran past {timeout} s") from None
    if proc.returncode != 0:
        raise RuntimeError(f"{variant} at {n} failed (rc {proc.returncode})")
    result = json.loads(out.strip().splitlines()[-1])
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    result.update(peak_pss_mib=round(memory.peak_pss), peak_pss_anon_mib=round(memory.peak_pss_anon),
                  peak_rss_mib=round(memory.peak_rss), cpu_seconds=cpu)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--instructions", type=int, nargs="+", default=[100_000])
    parser.add_argument("--variants", nargs="+", choices=sorted(VARIANTS), default=["ours", "loop", "stock"])
    parser.add_argument("--batch-scale", type=float, default=1.0, help="Multiply the preset's batch sizes.")
    parser.add_argument("--response-words", nargs=2, type=int, metavar=("MIN", "MAX"), default=[120, 380],
                        help="Length range of the canned responses, in words (default ~1.5 KB each).")
    parser.add_argument("--tokenizers", choices=sorted(TOKENIZERS), default="tiny",
                        help="Whose tokenizers: the tiny models' or SmolLM2's real one (49,152 tokens).")
    parser.add_argument("--one", nargs=2, metavar=("VARIANT", "N"))
    args = parser.parse_args()
    if not args.one:  # a --one child inherits the parent's settings
        os.environ["OVERHEAD_RESPONSE_WORDS"] = " ".join(map(str, args.response_words))
        os.environ["OVERHEAD_TOKENIZERS"] = args.tokenizers
    if args.one:
        print(json.dumps(run_one(args.one[0], int(args.one[1]), args.batch_scale)))
        return
    print(f"load average at start: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs; "
          f"responses of {args.response_words[0]}-{args.response_words[1]} words; {args.tokenizers} tokenizers")
    print("| variant | instructions | rows out | wall s | wall ms / 1K instr. | CPU s (tree, incl. start-up) | CPU ms / instr. "
          "| peak PSS (tree) MiB | peak anon PSS (tree) MiB | largest RSS MiB |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for n in args.instructions:
        for variant in args.variants:
            r = measure(variant, n, args.batch_scale)
            per_k = r["seconds"] / (n / 1000) * 1000
            print(f"| {variant} | {n} | {r['rows']} | {r['seconds']:.1f} | {per_k:.0f} | {r['cpu_seconds']:.1f} | "
                  f"{r['cpu_seconds'] / n * 1000:.2f} | {r['peak_pss_mib']} | {r['peak_pss_anon_mib']} | {r['peak_rss_mib']} |", flush=True)


if __name__ == "__main__":
    main()
