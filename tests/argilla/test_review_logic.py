"""Review logic that needs no server: row -> record mapping, verdicts, pull-back rules, secrets."""

from __future__ import annotations

import pytest

from magpie_dl import review
from magpie_dl.review import dataset as rd
from magpie_dl.review import Review, Verdict, aggregate_reviews, apply_verdict


def test_record_payload_maps_row_to_fields_metadata_and_suggestion(make_dpo_row):
    row = make_dpo_row(3, scores=[0.11, 0.125, 0.09, 0.1, 0.12])
    payload = rd.record_payload(row)

    assert payload.id == row["uuid"]
    assert payload.fields["instruction"] == row["instruction"]
    assert payload.fields["chosen"] == row["responses"][1]
    assert payload.fields["rejected"] == row["responses"][2]
    # Every response is visible with its score, and chosen/rejected are marked.
    all_responses = payload.fields["all_responses"]
    for text, score in zip(row["responses"], [0.11, 0.125, 0.09, 0.1, 0.12]):
        assert text in all_responses
        assert f"score {score:.4g}" in all_responses
    assert "**Response 2** · score 0.125 · **chosen**" in all_responses
    assert "**Response 3** · score 0.09 · **rejected**" in all_responses
    assert payload.metadata["chosen_score"] == 0.125
    assert payload.metadata["score_margin"] == pytest.approx(0.035)
    assert payload.metadata["task_category"] == row["task_category"]
    assert payload.metadata["generator_model"] == "tiny/llama-3.1-70b-instruct"
    assert payload.suggested_preference == "chosen"
    assert payload.suggestion_agent == rd.DEFAULT_REWARD_AGENT


def test_equal_scores_suggest_a_tie_and_missing_tags_are_left_out(make_dpo_row):
    row = make_dpo_row(0, scores=[0.1] * 5)
    for tag in ("task_category", "difficulty", "input_quality", "language", "instruct_reward"):
        del row[tag]
    del row["gen_response_configs"]["output_generator"]
    payload = rd.record_payload(row)
    assert payload.suggested_preference == "tie"
    assert payload.metadata == {
        "chosen_score": 0.1,
        "rejected_score": 0.1,
        "score_margin": 0.0,
        "generator_model": "tiny/llama-3.1-instruct",
    }


def test_row_without_uuid_is_refused(make_dpo_row):
    row = make_dpo_row(0)
    row["uuid"] = ""
    with pytest.raises(ValueError, match="uuid"):
        rd.record_payload(row)


@pytest.mark.parametrize(
    "labels, expected",
    [
        ([], None),
        (["chosen"], "chosen"),
        (["rejected", "rejected", "chosen"], "rejected"),
        (["chosen", "rejected"], "disputed"),
        (["tie", "both_bad", "chosen"], "disputed"),
    ],
)
def test_majority_label(labels, expected):
    assert aggregate_reviews([Review(preference=label) for label in labels]).label == expected


def test_corrections_count_only_when_reviewers_agree():
    one = aggregate_reviews([Review("both_bad", correction="  Fixed.  ", note="typo"), Review("both_bad")])
    assert one.correction == "Fixed." and one.notes == ("typo",) and not one.conflicting_corrections
    two = aggregate_reviews([Review("both_bad", correction="A"), Review("both_bad", correction="B")])
    assert two.correction is None and two.conflicting_corrections


def _verdict(label, correction=None, note=None):
    return Verdict(label=label, reviews=1, correction=correction, notes=(note,) if note else ())


def test_confirmed_pair_is_kept_unchanged(make_dpo_row):
    row = make_dpo_row(1)
    out, action = apply_verdict(row, _verdict("chosen", note="fine"))
    assert action == "confirmed"
    assert {k: out[k] for k in row} == row
    assert out["review_label"] == "chosen" and out["review_note"] == "fine" and out["review_count"] == 1


def test_rejected_verdict_swaps_the_pair_and_its_scores(make_dpo_row):
    row = make_dpo_row(2, scores=[0.1, 0.12, 0.11, 0.09, 0.105])
    out, action = apply_verdict(row, _verdict("rejected"))
    assert action == "swapped"
    assert out["chosen"] == row["rejected"] and out["rejected"] == row["chosen"]
    assert (out["chosen_index"], out["rejected_index"]) == (3, 1)
    assert (out["chosen_score"], out["rejected_score"]) == (0.09, 0.12)
    assert out["score_margin"] == pytest.approx(-0.03)


def test_ties_are_dropped_by_default_or_kept_on_request(make_dpo_row):
    row = make_dpo_row(3)
    assert apply_verdict(row, _verdict("tie")) == (None, "dropped_tie")
    kept, action = apply_verdict(row, _verdict("tie"), ties="keep")
    assert action == "kept_tie" and kept["chosen"] == row["chosen"]
    with pytest.raises(ValueError):
        apply_verdict(row, _verdict("tie"), ties="coin-flip")


def test_both_bad_and_disputed_pairs_are_dropped(make_dpo_row):
    row = make_dpo_row(4)
    assert apply_verdict(row, _verdict("both_bad")) == (None, "dropped_both_bad")
    assert apply_verdict(row, _verdict("disputed")) == (None, "dropped_disputed")


def test_correction_becomes_chosen_against_the_worse_original(make_dpo_row):
    row = make_dpo_row(5)
    fixed, action = apply_verdict(row, _verdict("both_bad", correction="A careful answer."))
    assert action == "corrected"
    assert fixed["chosen"] == [
        {"role": "user", "content": row["instruction"]},
        {"role": "assistant", "content": "A careful answer."},
    ]
    assert fixed["rejected"] == row["rejected"] and fixed["rejected_index"] == row["rejected_index"]
    assert fixed["chosen_index"] is None and fixed["chosen_score"] is None and fixed["score_margin"] is None

    # Reviewers said the reward model's pick was the worse one: it becomes rejected.
    fixed, _ = apply_verdict(row, _verdict("rejected", correction="A careful answer."))
    assert fixed["rejected"] == row["chosen"] and fixed["rejected_score"] == row["chosen_score"]


def test_unreviewed_rows_are_kept_or_dropped_on_request(make_dpo_row):
    row = make_dpo_row(6)
    kept, action = apply_verdict(row, None)
    assert action == "unreviewed" and kept["review_count"] == 0 and kept["review_label"] is None
    assert apply_verdict(row, None, keep_unreviewed=False) == (None, "dropped_unreviewed")


def test_reviewed_dataset_keeps_splits_schema_and_counts(make_dpo_row):
    from datasets import Dataset, DatasetDict

    train = [make_dpo_row(i) for i in range(4)]
    test = [make_dpo_row(i, seed=1) for i in range(2)]
    local = DatasetDict({"train": Dataset.from_list(train), "test": Dataset.from_list(test)})
    verdicts = {
        train[0]["uuid"]: _verdict("chosen"),
        train[1]["uuid"]: _verdict("rejected"),
        train[2]["uuid"]: _verdict("both_bad", correction="Better."),
        train[3]["uuid"]: _verdict("tie"),
        "not-a-local-row": _verdict("chosen"),
    }
    reviewed, report = review.reviewed_dataset(local, verdicts)
    assert reviewed["train"].num_rows == 3 and reviewed["test"].num_rows == 2
    assert report.actions["train"] == {"confirmed": 1, "swapped": 1, "corrected": 1, "dropped_tie": 1}
    assert report.actions["test"] == {"unreviewed": 2}
    assert report.unmatched_records == 1
    # Every original column survives with its type; four review columns are added.
    for split in ("train", "test"):
        for name, feature in local[split].features.items():
            assert reviewed[split].features[name] == feature
        assert {"review_label", "review_action", "review_note", "review_count"} <= set(reviewed[split].features)
    text = report.format()
    assert "train: 3 kept of 4" in text and "test: 2 kept of 2" in text and "no row in the local dataset: 1" in text


def test_credentials_come_from_the_environment_and_never_show_the_key(monkeypatch):
    monkeypatch.delenv("ARGILLA_API_URL", raising=False)
    monkeypatch.delenv("ARGILLA_API_KEY", raising=False)
    with pytest.raises(review.ReviewError, match="ARGILLA_API_URL and ARGILLA_API_KEY"):
        review.ArgillaCredentials.resolve()

    monkeypatch.setenv("ARGILLA_API_URL", "http://user:pw@127.0.0.1:6900/")
    monkeypatch.setenv("ARGILLA_API_KEY", "s3cr3t-key")
    credentials = review.ArgillaCredentials.resolve()
    assert "s3cr3t-key" not in repr(credentials)
    assert credentials.safe_url == "http://127.0.0.1:6900"
    scrubbed = credentials.scrub("GET http://user:pw@127.0.0.1:6900 with s3cr3t-key")
    assert "s3cr3t-key" not in scrubbed and "pw@" not in scrubbed


def test_reviewed_dataset_in_chunks_and_with_every_row_dropped(make_dpo_row, monkeypatch):
    from datasets import Dataset, DatasetDict

    monkeypatch.setattr(review.pull, "_ROWS_PER_CHUNK", 2)
    train = [make_dpo_row(i) for i in range(5)]
    test = [make_dpo_row(i, seed=1) for i in range(2)]
    local = DatasetDict({"train": Dataset.from_list(train), "test": Dataset.from_list(test)})
    verdicts = {train[2]["uuid"]: _verdict("rejected"), **{row["uuid"]: _verdict("both_bad") for row in test}}
    reviewed, report = review.reviewed_dataset(local, verdicts)
    assert [row["uuid"] for row in reviewed["train"]] == [row["uuid"] for row in train]
    assert reviewed["train"][2]["chosen"] == train[2]["rejected"]
    # A split where everything was dropped keeps its columns and types.
    assert reviewed["test"].num_rows == 0 and reviewed["test"].features == reviewed["train"].features
    assert report.actions["test"] == {"dropped_both_bad": 2}
