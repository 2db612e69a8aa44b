"""Regenerate tests/data/smollm2_turn2_queries.yaml: second-turn Magpie queries written by SmolLM2.

Each conversation opens with a reviewed first-turn query of tests/data/smollm2_raw_queries.yaml
(the first ``--num-rows`` usable ones) and SmolLM2's greedy reply to it (the bare ``magpie``
reply prompt, at most ``--reply-tokens`` tokens, cut back to its last full sentence so the
writer sees a finished turn). The writer's prompt is the multi-turn one
(:func:`magpie_dl.templates.turns.follow_up_query_ids`: the template over the multi-turn
system prompt and the conversation, then the user header); it is sampled at temperature
1.0, top_p 1.0, with the smollm2 family's query stops, each row with its own seed, on the
transformers backend. Every row records the raw text and what the cleaner made of it; the
expected results are reviewed by hand (see the file's header), as for the first turns.

    .venv/bin/python scripts/sample_smollm2_turns.py              # 48 rows, run seed 7
    .venv/bin/python scripts/sample_smollm2_turns.py --reclean    # same raw texts, today's cleaner
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import sys
import time
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "scripts"))

from sample_smollm2_queries import _Dumper  # noqa: E402  (the same YAML style as the first turns)

DEFAULT_OUT = REPO_ROOT / "tests" / "data" / "smollm2_turn2_queries.yaml"
FIRST_TURNS = REPO_ROOT / "tests" / "data" / "smollm2_raw_queries.yaml"
ROW_KEYS = ("index", "seed", "turn_1", "reply_1", "finish_reason", "num_tokens", "raw", "instruction",
            "cleaning_actions", "cleaning_removed", "instruction_status", "review")
_LAST_SENTENCE = re.compile(r"^[\s\S]*[.!?](?=\s|$)")


def sample(num_rows: int, seed: int, reply_tokens: int, max_tokens: int) -> tuple[list[dict], dict]:
    import torch
    import transformers

    from magpie_dl.backends import make_backend
    from magpie_dl.backends.base import PromptInput, SamplingSpec
    from magpie_dl.config.dpo import PRESETS, SMOLLM2_DIR, validate
    from magpie_dl.local.smollm2 import MANIFEST, MODEL_ID
    from magpie_dl.recipe.queries import derive_seed
    from magpie_dl.templates.families import resolve_family, resolve_stops
    from magpie_dl.templates.turns import MULTI_TURN_SYSTEM_PROMPT, conversation_prompt, follow_up_query_ids

    config = validate(PRESETS["demo"])
    llm = make_backend(config.backend, str(SMOLLM2_DIR), seed)
    llm.load()
    tok = llm.tokenizer
    family = resolve_family("auto", tok)
    firsts = [r["instruction"] for r in yaml.safe_load(FIRST_TURNS.read_text())["queries"]
              if r["instruction_status"] == "ok" and not r.get("review")][:num_rows]
    start = time.perf_counter()
    reply_stops = resolve_stops(tok, family.response_stop)
    greedy = SamplingSpec(temperature=0.0, max_tokens=reply_tokens, stop=reply_stops.strings,
                          stop_token_ids=reply_stops.token_ids)
    prompts = [PromptInput(tuple(conversation_prompt(tok, family, "magpie", [{"role": "user", "content": q}])[0]))
               for q in firsts]
    replies = []
    for completion in llm.complete(prompts, [greedy] * len(prompts)):
        text = completion[0].text.strip()
        match = _LAST_SENTENCE.match(text)
        replies.append(match.group(0) if match else text)
    query_stops = resolve_stops(tok, family.query_stop(False))
    specs = [SamplingSpec(temperature=1.0, top_p=1.0, max_tokens=max_tokens, seed=derive_seed("turn2", seed, i),
                          stop=query_stops.strings, stop_token_ids=query_stops.token_ids)
             for i in range(len(firsts))]
    writer = [PromptInput(tuple(follow_up_query_ids(tok, family, [{"role": "user", "content": q},
                                                                  {"role": "assistant", "content": r}])))
              for q, r in zip(firsts, replies)]
    rows = []
    for i, (q, r, spec, out) in enumerate(zip(firsts, replies, specs, llm.complete(writer, specs))):
        c = out[0]
        rows.append({"index": i, "seed": spec.seed, "turn_1": q, "reply_1": r, "finish_reason": c.finish_reason,
                     "num_tokens": c.num_tokens, "raw": c.text})
    seconds = time.perf_counter() - start
    llm.unload()
    manifest = json.loads((SMOLLM2_DIR / MANIFEST).read_text())
    provenance = {
        "model": MODEL_ID,
        "weights_fingerprint": manifest["weights_fingerprint"],
        "backend": f"transformers {transformers.__version__}, torch {torch.__version__}, "
                   f"{config.backend.dtype}, {platform.machine()}",
        "family": family.name,
        "writer_system_prompt": MULTI_TURN_SYSTEM_PROMPT,
        "run_seed": seed,
        "reply": {"temperature": 0.0, "max_tokens": reply_tokens, "prompt_style": "magpie"},
        "temperature": 1.0,
        "top_p": 1.0,
        "max_tokens": max_tokens,
        "stop": list(family.query_stop(False)),
        "seconds": round(seconds, 1),
    }
    return rows, provenance


def reclean(entries: list[dict]) -> list[dict]:
    """The rows with today's cleaner's results (what the writer records; duplicates in row order)."""
    from magpie_dl.recipe.cleaning import clean_query, mark_exact_duplicates
    from magpie_dl.recipe.reasons import instruction_status_of

    results = []
    for entry in entries:
        cleaned = clean_query(entry["raw"])
        results.append({"instruction": cleaned.instruction, "cleaning_actions": list(cleaned.actions),
                        "cleaning_removed": list(cleaned.removed),
                        "instruction_status": cleaned.reason or instruction_status_of(entry["finish_reason"])})
    mark_exact_duplicates(results, set())
    return [{k: {**e, **r}[k] for k in ROW_KEYS if k in {**e, **r}} for e, r in zip(entries, results)]


HEADER = """Second-turn Magpie queries written by SmolLM2-135M-Instruct, with the cleaner's reviewed results.

Produced by scripts/sample_smollm2_turns.py: each conversation opens with a reviewed first-turn
query of smollm2_raw_queries.yaml and SmolLM2's greedy reply to it (cut back to its last full
sentence); the writer's prompt is the multi-turn one (the template over the multi-turn system
prompt and the conversation, then the user header). Model, backend, seeds and sampling are under
`provenance`. Rows: {rows}; statuses: {statuses}.

Each row: index, sampling seed, the conversation so far (turn_1, reply_1), finish reason and
token count, the raw second-turn text, and the expected cleaner result as the writer records it
(instruction, cleaning_actions, cleaning_removed, instruction_status). Every row was read and
judged by hand; `review` is its verdict: `keep:` a query the cleaner keeps whole (a multi-line
one included), `cut at line N:` what follows line N is the model answering (the cleaner cuts
there), `kept whole:` a reader would cut but nothing shows where, `unusable:` asks nothing
usable (the cleaner may keep it: meaning is the input-quality filter's job).
tests/test_cleaning_smollm2.py asserts the cleaner reproduces every row."""


def render(entries: list[dict], provenance: dict) -> str:
    statuses: dict[str, int] = {}
    for entry in entries:
        statuses[entry["instruction_status"]] = statuses.get(entry["instruction_status"], 0) + 1
    header = HEADER.format(rows=len(entries), statuses=json.dumps(dict(sorted(statuses.items()))))
    body = yaml.dump({"provenance": provenance, "queries": entries}, Dumper=_Dumper, sort_keys=False,
                     allow_unicode=True, width=100)
    return "".join(f"# {line}".rstrip() + "\n" for line in header.splitlines()) + "\n" + body


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-rows", type=int, default=48)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--reply-tokens", type=int, default=80)
    parser.add_argument("--max-tokens", type=int, default=120)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--reclean", action="store_true", help="no sampling: today's cleaner over the raw texts in --out")
    args = parser.parse_args(argv)
    old = yaml.safe_load(args.out.read_text(encoding="utf-8")) if args.out.exists() else {}
    reviews = {(e["seed"], e["raw"]): e["review"] for e in old.get("queries", []) if e.get("review")}
    if args.reclean:
        entries, provenance = old["queries"], old["provenance"]
    else:
        entries, provenance = sample(args.num_rows, args.seed, args.reply_tokens, args.max_tokens)
    entries = reclean(entries)
    for entry in entries:
        if note := reviews.get((entry["seed"], entry["raw"])):
            entry["review"] = note
    entries = [{k: e[k] for k in ROW_KEYS if k in e} for e in entries]
    text = render(entries, provenance)
    if yaml.safe_load(text)["queries"] != entries:
        raise SystemExit("error: the YAML does not reproduce the rows")
    args.out.write_text(text, encoding="utf-8")
    print(f"{len(entries)} rows -> {args.out}")


if __name__ == "__main__":
    main()
