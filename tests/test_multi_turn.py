"""Multi-turn Magpie (``--generator.num_turns``): conversations in both recipes, pairs on the last turn.

The real graph runs twice here: the DPO recipe on the tiny real models (prompts, scores and
pairs checked against an independent computation) and both recipes on the instant stand-in
(every rare outcome of every turn, a stop in turn 2 and its rerun). The writer's prompts are
asserted byte for byte in tests/test_turns.py.
"""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from magpie_dl.config.dpo import REPO_ROOT, TINY_DIR
from magpie_dl.recipe import reasons
from magpie_dl.recipe.conversation import prompt_messages, released_conversations, turn_columns, with_message
from magpie_dl.recipe.reasons import KEPT
from magpie_dl.run.store import ResultStore
from tests.recipe_cli import run_recipe_cli

TINY = ("--preset", "smoke", "--num-instructions", "16", "--generator.batch_size", "8",
        "--responses.batch_size", "8", "--responses.num_generations", "3", "--reward.input_batch_size", "8")


def _rows(out: Path) -> list[dict]:
    from datasets import load_from_disk

    pairs = load_from_disk(str(out / "dataset"))
    return [row | {"pair_status": KEPT} for split in pairs.values() for row in split] + list(
        load_from_disk(str(out / "left_out"))
    )


def test_turn_columns_follow_the_released_multi_turn_schema():
    assert turn_columns(3, replies=3) == ["response", "instruction_2", "response_2", "instruction_3", "response_3"]
    assert turn_columns(2, replies=1) == ["response", "instruction_2"]  # DPO: the last turn's responses are the candidates
    assert turn_columns(1, replies=0) == []
    row = {"instruction": "Q1"}
    assert prompt_messages(row) == [{"role": "user", "content": "Q1"}]
    history = with_message(row, "assistant", "A1")
    assert released_conversations(history) == [{"from": "human", "value": "Q1"}, {"from": "gpt", "value": "A1"}]


def test_every_later_turn_status_is_described():
    for status in ("turn_2_fragment", "turn_3_truncated", "turn_1_reply_truncated", "turn_2_reply_empty"):
        assert reasons.left_out_for_instruction(status) in reasons.LEFT_OUT_REASONS, status
    # A failed request stays one status whatever the turn: a rerun retries it.
    assert reasons.later_turn_status(2, reasons.REQUEST_FAILED) == reasons.REQUEST_FAILED
    assert reasons.reply_status(1, reasons.REQUEST_FAILED) == reasons.REQUEST_FAILED


@pytest.fixture(scope="module")
def tiny_two_turns(tmp_path_factory):
    out = tmp_path_factory.mktemp("mt_tiny") / "out"
    done = run_recipe_cli(*TINY, "--generator.num_turns", "2", "--quiet", "--output-dir", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    return out, _rows(out)


def test_pairs_are_the_whole_conversation_sharing_the_first_three_messages(tiny_two_turns):
    _, rows = tiny_two_turns
    kept = [r for r in rows if r["pair_status"] == KEPT]
    assert kept, "no pair kept"
    for row in kept:
        prompt = [
            {"role": "user", "content": row["instruction"]},
            {"role": "assistant", "content": row["response"]},
            {"role": "user", "content": row["instruction_2"]},
        ]
        assert row["chosen"][:3] == prompt and row["rejected"][:3] == prompt
        assert [m["role"] for m in row["chosen"]] == ["user", "assistant", "user", "assistant"]
        assert row["chosen"][3]["content"] == row["responses"][row["chosen_index"]]
        assert row["rejected"][3]["content"] == row["responses"][row["rejected_index"]]
        assert row["gen_input_configs"]["num_turns"] == 2
        assert row["gen_input_configs"]["reply_temperature"] == 0.0


def test_responses_answer_the_last_turn_under_the_whole_history(tiny_two_turns):
    from transformers import AutoTokenizer

    from magpie_dl.templates.families import resolve_family
    from magpie_dl.templates.turns import conversation_prompt

    _, rows = tiny_two_turns
    tokenizer = AutoTokenizer.from_pretrained(TINY_DIR / "generator")
    family = resolve_family("auto", tokenizer)
    kept = [r for r in rows if r["pair_status"] == KEPT]
    for row in kept:
        _, text = conversation_prompt(tokenizer, family, "magpie", row["chosen"][:3])
        assert row["gen_response_configs"]["prompt"] == text
        assert text.count("<|begin_of_text|>") == 1


def test_scores_are_the_whole_conversations(tiny_two_turns):
    """The stored scores equal the reward model run here on [history, last turn, response]."""
    from magpie_dl.reward.scoring import RewardScorer, conversations_token_ids

    _, rows = tiny_two_turns
    kept = [r for r in rows if r["pair_status"] == KEPT][:4]
    scorer = RewardScorer(str(TINY_DIR / "reward"), max_length=512, dtype="float32", device="cpu")
    scorer.load()
    try:
        sequences = conversations_token_ids(scorer.tokenizer, [(tuple(r["chosen"][:3]), r["chosen"][3]["content"]) for r in kept])
        assert all(scorer.tokenizer.convert_ids_to_tokens(s).count("<|begin_of_text|>") == 1 for s in sequences)
        scores = [s.score for s in scorer.score_token_ids(sequences)]
    finally:
        scorer.unload()
    for row, score in zip(kept, scores):
        # Batches differ between the run and here: float32 sums in another order (measured: ~1e-6).
        assert math.isclose(row["chosen_score"], score, rel_tol=1e-4, abs_tol=1e-4), (row["chosen_score"], score)


def test_a_trl_dpo_step_trains_on_the_pairs(tiny_two_turns, smol_dir, tmp_path):
    """TRL reads the pairs as conversational preference data (the shared prefix is the prompt) and
    takes a DPO step on them with a real chat model (SmolLM2, its own chat template)."""
    import torch
    from datasets import load_from_disk
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    out, _ = tiny_two_turns
    train = load_from_disk(str(out / "dataset"))["train"].select_columns(["chosen", "rejected"])
    model_dir = str(smol_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    args = DPOConfig(output_dir=str(tmp_path / "dpo"), max_steps=1, per_device_train_batch_size=2, report_to=[],
                     learning_rate=1e-3, use_cpu=True, save_strategy="no", logging_steps=1, max_length=256)
    trainer = DPOTrainer(model=model, args=args, train_dataset=train, processing_class=tokenizer)
    first = trainer.train_dataset[0]
    # The shared history became the prompt; each side is the last assistant turn alone.
    assert [m["role"] for m in first["prompt"]] == ["user", "assistant", "user"]
    assert [m["role"] for m in first["chosen"]] == ["assistant"] and first["prompt_ids"] and first["chosen_ids"]
    result = trainer.train()
    assert math.isfinite(result.training_loss)
    assert any(not torch.equal(before[n], p) for n, p in model.named_parameters())


def _scale_args(out: Path, rows: int, *more: str) -> list[str]:
    return ["--preset", "scale", "--num-instructions", str(rows), "--generator.max_tokens", "64",
            "--generator.batch_size", "100", "--generator.num_turns", "3", "--generator.reply_max_tokens", "256",
            "--responses.max_tokens", "256", "--responses.batch_size", "100", "--quiet", "--output-dir", str(out), *more]


@pytest.fixture(scope="module")
def three_turns(tmp_path_factory):
    out = tmp_path_factory.mktemp("mt_scale") / "out"
    done = run_recipe_cli(*_scale_args(out, 300))
    assert done.returncode == 0, done.stderr[-3000:]
    return out, _rows(out)


def test_every_outcome_of_every_turn_is_marked_and_counted(three_turns):
    out, rows = three_turns
    statuses = {r["pair_status"] for r in rows}
    for turn in (2, 3):
        assert any(s.startswith(f"instruction_turn_{turn}_") and "reply" not in s for s in statuses), turn
    for turn in (1, 2):
        assert any(s.startswith(f"instruction_turn_{turn}_reply_") for s in statuses), turn
    summary = json.loads((out / "summary.json").read_text())
    left = {r["pair_status"]: 0 for r in rows if r["pair_status"] != KEPT}
    for row in rows:
        if row["pair_status"] != KEPT:
            left[row["pair_status"]] += 1
    assert summary["left_out"] == left
    kept = [r for r in rows if r["pair_status"] == KEPT]
    assert kept and all(len(r["chosen"]) == 6 and r["chosen"][:5] == r["rejected"][:5] for r in kept)


def test_a_stop_in_turn_two_keeps_turn_one_and_the_rerun_matches_an_uninterrupted_run(three_turns, tmp_path):
    _, whole = three_turns

    out = tmp_path / "stopped"
    args = _scale_args(out, 300, "--backend.standin_seconds_per_prompt", "0.01")
    run = subprocess.Popen([sys.executable, str(REPO_ROOT / "pipelines" / "dpo_100k.py"), *args],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO_ROOT)
    deadline = time.monotonic() + 300
    while not (out / "cache" / "results.sqlite").exists() or not ResultStore(out / "cache").progress().get("query_turn_2", (0, 0))[0]:
        assert run.poll() is None and time.monotonic() < deadline, "the run ended before turn 2 started"
        time.sleep(0.05)
    run.send_signal(signal.SIGTERM)
    _, stderr = run.communicate(timeout=120)
    assert run.returncode == 128 + signal.SIGTERM, stderr[-3000:]

    rerun = run_recipe_cli(*args[:-2], "--quiet")  # (the stand-in's delay is not part of the results)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    usage = ResultStore(out / "cache").usage()  # the rerun's: what it read back, what it computed
    # Turn 1 is read back (failed completions are never stored: those are asked again).
    assert usage["magpie_generator"]["reused"] > 250 and usage["reply_turn_1"]["reused"] > 0, usage
    key = lambda r: r["uuid"]  # noqa: E731
    assert sorted(_rows(out), key=key) == sorted(whole, key=key)


def test_the_curation_recipe_writes_rows_in_the_released_multi_turn_schema(tmp_path):
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, str(REPO_ROOT / "pipelines" / "magpie_instructions.py"), "--preset", "scale",
         "--num-instructions", "300", "--generator.max_tokens", "64", "--generator.batch_size", "100",
         "--generator.num_turns", "2", "--generator.reply_max_tokens", "256", "--selection.target_size", "100",
         "--quiet", "--output-dir", str(out)],
        capture_output=True, text=True, cwd=REPO_ROOT, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [json.loads(line) for line in (out / "instructions.jsonl").read_text().splitlines()]
    assert rows
    for row in rows:
        conversation = row["conversations"]
        assert [m["from"] for m in conversation] == ["human", "gpt", "human", "gpt"]
        assert [m["value"] for m in conversation] == [row["instruction"], row["response"], row["instruction_2"], row["response_2"]]
        assert "conversation" not in row
    left = [json.loads(line) for line in (out / "left_out.jsonl").read_text().splitlines()]
    assert any(r["instruction_status"].startswith("turn_2_") for r in left)


def test_the_estimate_counts_every_turn():
    from magpie_dl.config.estimate import EstimateConfig, estimate

    assume = EstimateConfig()
    one, three = estimate(100, 5, True, assume), estimate(100, 5, True, assume, num_turns=3)
    assert (three.query_prompts, three.reply_requests, three.completions) == (300, 200, 500)
    assert three.scored_tokens == 3 * one.scored_tokens  # every scored sequence carries two earlier turns
    work = three.hours_by_work()
    assert math.isclose(sum(work.values()), three.gpu_hours) and math.isclose(work["queries"], one.hours_by_work()["queries"])
    assert work["replies"] > 0 and work["later_queries"] > 0


def test_the_dry_run_plans_each_turn_as_its_own_work(tmp_path):
    done = run_recipe_cli("--generator.num_turns", "3", "--dry-run", "--output-dir", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr[-2000:]
    stages = [line for line in done.stdout.splitlines() if line.strip().startswith("stage ")]
    hours = [float(line.split(", ")[-1].split()[0].replace(",", "")) for line in stages]  # "..., 6.7 GPU-h"
    assert len(stages) == 7 and hours[1] == hours[3] and hours[0] == hours[2] == hours[4]  # turns share their work's hours
    assert "replies to earlier turns: 200,000" in done.stdout
