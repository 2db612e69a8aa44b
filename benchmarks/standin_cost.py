"""CPU the stand-in itself spends (``magpie_dl/backends/standin.py``), to subtract from a scale run.

A scale run's tree CPU includes the stand-in: writing ~740-token responses (text drawn word by
word, then decoded) and scoring them (each input decoded). A real run spends that time in the
engine, so the cost *outside the engine* is the run's CPU minus this. Times
``StandInBackend.complete`` on N response prompts x 5 and ``StandInScorer.score_token_ids`` on
the resulting inputs, in this process's CPU time, with the recipe's ``--preset scale`` settings.

    .venv/bin/python benchmarks/standin_cost.py 1000
"""

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from magpie_dl.backends.base import PromptInput, SamplingSpec  # noqa: E402
from magpie_dl.backends.standin import StandInBackend, StandInScorer  # noqa: E402
from magpie_dl.config.dpo import SMOLLM2_DIR  # noqa: E402
from magpie_dl.reward.scoring import conversations_token_ids  # noqa: E402


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    llm = StandInBackend(model=str(SMOLLM2_DIR))
    llm.load()
    tok = llm.tokenizer
    instructions = [f"How do I plan a garden, case {i}?" for i in range(n)]
    rendered = [tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
                for q in instructions]
    prompts = [PromptInput(tuple(tok.encode(text, add_special_tokens=False))) for text in rendered]
    spec = [SamplingSpec(n=5, temperature=0.8, max_tokens=4096, seed=i) for i in range(n)]
    started = time.process_time()
    done = llm.complete(prompts, spec)
    generate = time.process_time() - started
    pairs = [(q, c.text) for q, row in zip(instructions, done) for c in row]
    sequences = conversations_token_ids(tok, pairs)
    scorer = StandInScorer(str(SMOLLM2_DIR), max_length=4096)
    scorer.load()
    started = time.process_time()
    scorer.score_token_ids(sequences)
    score = time.process_time() - started
    tokens = sum(len(c.token_ids) for row in done for c in row) / (5 * n)
    print(f"{n} instructions x 5 responses, {tokens:.0f} tokens per response on average: stand-in CPU "
          f"{generate / n * 1000:.2f} ms per instruction writing, {score / n * 1000:.2f} ms scoring")


if __name__ == "__main__":
    main()
