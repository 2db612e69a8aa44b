"""Export: released schema, seeded order-independent split, empty splits that load back."""

from __future__ import annotations

import random

from datasets import load_from_disk

from magpie_dl.release.export import released_row, split_rows, write_dataset


def row(i: int, status: str = "kept") -> dict:
    kept = status == "kept"
    return {
        "uuid": f"u{i:03d}", "instruction": f"question {i}", "gen_input_configs": {"seed": i},
        "generations": ["a", "b"], "gen_response_configs": {"prompt": "p"}, "ratings": [0.1, 0.2],
        "finish_reasons": ["stop", "stop"], "response_status": ["ok", "ok"], "raw_instruction": f"question {i}",
        "pair_status": status, "task_category": "Math",
        "chosen": [{"role": "user", "content": f"question {i}"}, {"role": "assistant", "content": "b"}] if kept else None,
        "rejected": [{"role": "user", "content": f"question {i}"}, {"role": "assistant", "content": "a"}] if kept else None,
        "chosen_index": 1 if kept else None, "rejected_index": 0 if kept else None,
        "chosen_score": 0.2 if kept else None, "rejected_score": 0.1 if kept else None,
        "score_margin": 0.1 if kept else None,
    }


def test_released_row_has_the_released_columns_first():
    out = released_row(row(1))
    assert list(out)[:3] == ["uuid", "instruction", "gen_input_configs"]
    assert out["task_category"] == "Math" and out["input_length"] == len("question 1")
    assert out["rewards_armorm"] == [{"score": 0.1}, {"score": 0.2}] and out["responses"] == ["a", "b"]


def test_split_is_seeded_and_independent_of_arrival_order():
    rows = [released_row(row(i)) for i in range(200)]
    shuffled = rows[:]
    random.Random(5).shuffle(shuffled)
    a, b = split_rows(rows, 0.02, seed=42), split_rows(shuffled, 0.02, seed=42)
    assert [r["uuid"] for r in a["test"]] == [r["uuid"] for r in b["test"]]
    assert len(a["test"]) == 4 and len(a["train"]) == 196
    assert [r["uuid"] for r in split_rows(rows, 0.02, seed=43)["test"]] != [r["uuid"] for r in a["test"]]


def test_every_row_is_written_somewhere_and_empty_splits_load(tmp_path):
    rows = [row(0), row(1, "all_scores_tied"), row(2, "instruction_empty")]
    summary = write_dataset(rows, tmp_path, 0.02, seed=1)
    data, left = load_from_disk(str(tmp_path / "dataset")), load_from_disk(str(tmp_path / "left_out"))
    assert len(data["train"]) + len(data["test"]) == 1 and len(left) == 2
    assert summary.left_out == {"all_scores_tied": 1, "instruction_empty": 1}
    write_dataset([row(0)], tmp_path, 0.02, seed=1)  # nothing left out: an empty left_out still loads
    assert len(load_from_disk(str(tmp_path / "left_out"))) == 0
    write_dataset([row(1, "fewer_than_two_usable")], tmp_path, 0.02, seed=1)  # no pairs at all
    assert len(load_from_disk(str(tmp_path / "dataset"))["train"]) == 0


def test_a_dataset_on_disk_exports_batch_by_batch_like_a_list(tmp_path, monkeypatch):
    """The runner hands over distilabel's memory-mapped dataset; it streams in batches.

    Batches of 7 rows: the first batches hold only left-out rows (no pair, `chosen` None),
    so the schema must come from the whole source, not from the first batch written.
    """
    from datasets import Dataset

    import magpie_dl.release.export as export

    kept = [row(i) for i in range(15, 60)]
    random.Random(3).shuffle(kept)  # arrival order is not uuid order
    rows = [row(i, "all_scores_tied") for i in range(15)] + kept
    Dataset.from_list(rows).save_to_disk(str(tmp_path / "source"))
    monkeypatch.setattr(export, "BATCH_ROWS", 7)
    streamed = write_dataset(load_from_disk(str(tmp_path / "source")), tmp_path / "streamed", 0.1, seed=4)
    listed = write_dataset(rows, tmp_path / "listed", 0.1, seed=4)
    assert streamed.__dict__ == listed.__dict__ and streamed.pairs_kept == 45
    assert streamed.splits == {"train": 41, "test": 4}
    for name in ("dataset", "left_out"):
        a, b = load_from_disk(str(tmp_path / "streamed" / name)), load_from_disk(str(tmp_path / "listed" / name))
        for split in ("train", "test") if name == "dataset" else (None,):
            x, y = (a[split], b[split]) if split else (a, b)
            assert x.features == y.features and x.to_list() == y.to_list()
    train = load_from_disk(str(tmp_path / "streamed" / "dataset"))["train"]
    assert train[0]["chosen"][1] == {"role": "assistant", "content": "b"}
    assert [r["uuid"] for r in train] == [r["uuid"] for r in split_rows(kept, 0.1, 4)["train"]]
    assert not list((tmp_path / "streamed").glob(".released-*"))  # the staging file is gone
