"""Push and pull-back against a real argilla-server 2.8 on 127.0.0.1 (one per test session)."""

from __future__ import annotations

import logging
import socket
import time
from typing import Any, Dict, List

import pytest

from magpie_dl import review
from magpie_dl.review import dataset as rd

pytestmark = pytest.mark.argilla

FAST_RETRY = review.RetryPolicy(attempts=3, backoff_s=0.05)


def _owner_client(server):
    import argilla as rg

    return rg.Argilla(api_url=server.url, api_key=server.api_key)


def _records_by_id(client, name: str) -> Dict[str, Any]:
    dataset = client.datasets(name=name)
    assert dataset is not None, f"dataset {name} not on the server"
    return {str(record.id): record for record in dataset.records(with_responses=True, with_suggestions=True)}


def _submit(client, name: str, answers: Dict[str, List[Dict[str, Any]]]) -> None:
    """Submits reviewers' answers through the SDK: {record id: [{"user": id, question: value...}]}."""
    import argilla as rg

    dataset = client.datasets(name=name)
    records = {str(record.id): record for record in dataset.records(with_responses=True)}
    changed = []
    for record_id, reviews in answers.items():
        record = records[record_id]
        for answer in reviews:
            answer = dict(answer)
            user_id, status = answer.pop("user"), answer.pop("status", "submitted")
            for question, value in answer.items():
                record.responses.add(rg.Response(question, value, user_id=user_id, status=status))
        changed.append(record)
    dataset.records.log(changed)


def _free_loopback_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_create_dataset_with_review_settings_and_suggestions(argilla_env, dataset_name, make_dpo_row):
    rows = [make_dpo_row(i) for i in range(4)] + [make_dpo_row(4, scores=[0.1] * 5)]
    report = review.push_rows(rows, dataset_name, batch_size=2)
    assert (report.records, report.batches) == (5, 3)

    client = _owner_client(argilla_env)
    dataset = client.datasets(name=dataset_name)
    settings = dataset.settings
    assert [f.name for f in settings.fields] == ["instruction", "chosen", "rejected", "all_responses"]
    assert [q.name for q in settings.questions] == ["preference", "corrected_response", "note"]
    preference = settings.questions["preference"]
    assert preference.required and set(preference.labels) == {"chosen", "rejected", "tie", "both_bad"}
    assert not settings.questions["corrected_response"].required and not settings.questions["note"].required
    assert {m.name for m in settings.metadata} == set(rd.FLOAT_METADATA) | set(rd.TERMS_METADATA)

    records = _records_by_id(client, dataset_name)
    assert set(records) == {row["uuid"] for row in rows}
    first = records[rows[0]["uuid"]]
    assert first.fields["instruction"] == rows[0]["instruction"]
    assert first.fields["chosen"] == rows[0]["chosen"][1]["content"]
    assert all(text in first.fields["all_responses"] for text in rows[0]["responses"])
    assert first.metadata["score_margin"] == pytest.approx(rows[0]["score_margin"])
    assert first.metadata["task_category"] == rows[0]["task_category"]
    assert first.metadata["generator_model"] == "tiny/llama-3.1-70b-instruct"
    suggestion = first.suggestions["preference"]
    assert suggestion.value == "chosen" and suggestion.agent == rd.DEFAULT_REWARD_AGENT
    assert records[rows[4]["uuid"]].suggestions["preference"].value == "tie"


def test_rerun_updates_records_and_keeps_reviews(argilla_env, dataset_name, make_dpo_row):
    rows = [make_dpo_row(i) for i in range(25)]
    assert review.push_rows(rows, dataset_name, batch_size=10).batches == 3

    client = _owner_client(argilla_env)
    _submit(client, dataset_name, {rows[0]["uuid"]: [{"user": client.me.id, "preference": "rejected"}]})

    rows[3] = {**rows[3], "instruction": "An edited instruction."}
    review.push_rows(rows, dataset_name, batch_size=10)

    records = _records_by_id(client, dataset_name)
    assert len(records) == 25, "a rerun must update, not duplicate"
    assert records[rows[3]["uuid"]].fields["instruction"] == "An edited instruction."
    assert review.fetch_verdicts(dataset_name)[rows[0]["uuid"]].label == "rejected"


def test_existing_dataset_with_different_settings_is_a_clear_error(argilla_env, dataset_name, make_dpo_row):
    import argilla as rg

    client = _owner_client(argilla_env)
    other = rg.Settings(
        fields=[rg.TextField(name="instruction", client=client)],
        questions=[rg.LabelQuestion(name="preference", labels=["chosen", "rejected"], client=client)],
    )
    rg.Dataset(name=dataset_name, settings=other, workspace=client.workspaces.default, client=client).create()

    with pytest.raises(review.ReviewError) as caught:
        review.push_rows([make_dpo_row(0)], dataset_name)
    message = str(caught.value)
    assert "\n" not in message
    assert f"{dataset_name!r} already exists with different settings" in message
    assert "missing fields: all_responses, chosen, rejected" in message
    assert "different questions: preference" in message
    # Nothing was written into the foreign dataset.
    assert len(list(client.datasets(name=dataset_name).records)) == 0


def test_settings_check_ignores_titles_but_not_labels(argilla_server):
    import argilla as rg

    client = _owner_client(argilla_server)
    ours = rd.build_settings(client)
    retitled = rd.build_settings(client, guidelines="Other words.")
    retitled.fields["instruction"].title = "Prompt"
    assert rd.settings_signature(ours) == rd.settings_signature(retitled)

    relabelled = rd.build_settings(client)
    relabelled.add(
        rg.LabelQuestion(name=rd.QUESTION_PREFERENCE, labels=["chosen", "rejected"], client=client), override=True
    )
    mismatch = rd.describe_mismatch(rd.settings_signature(ours), rd.settings_signature(relabelled))
    assert mismatch == "different questions: preference"


def test_unreachable_server_fails_fast_with_a_clean_error(caplog, make_dpo_row):
    secret = "never-print-this-key-123"
    url = f"http://127.0.0.1:{_free_loopback_port()}"
    caplog.set_level(logging.DEBUG)
    started = time.monotonic()
    with pytest.raises(review.ReviewError) as caught:
        review.push_rows([make_dpo_row(0)], "unreachable", api_url=url, api_key=secret, retry=FAST_RETRY)
    assert time.monotonic() - started < 10
    message = str(caught.value)
    assert "cannot connect" in message and url in message and "\n" not in message
    assert secret not in message and secret not in caplog.text
    # The transient failure was retried, and each retry was logged.
    assert caplog.text.count("retry") == FAST_RETRY.attempts - 1


def test_wrong_api_key_is_rejected_without_leaking_it(
    argilla_server, dataset_name, caplog, capsys, monkeypatch, tmp_path, make_dpo_row
):
    wrong = "wrong-key-0123456789abcdef"
    caplog.set_level(logging.DEBUG)
    with pytest.raises(review.ReviewError) as caught:
        review.push_rows([make_dpo_row(0)], dataset_name, api_url=argilla_server.url, api_key=wrong, retry=FAST_RETRY)
    message = str(caught.value)
    assert "rejected the API key" in message and "\n" not in message
    assert wrong not in message and wrong not in caplog.text
    assert argilla_server.api_key not in caplog.text

    # The CLI reports it as one line on stderr with exit status 2, key absent.
    from datasets import Dataset, DatasetDict

    DatasetDict({"train": Dataset.from_list([make_dpo_row(0)])}).save_to_disk(str(tmp_path / "dataset"))
    monkeypatch.setenv("ARGILLA_API_URL", argilla_server.url)
    monkeypatch.setenv("ARGILLA_API_KEY", wrong)
    status = review.main(["push", "--input", str(tmp_path / "dataset"), "--dataset-name", dataset_name])
    out, err = capsys.readouterr()
    assert status == 2
    last_line = err.strip().splitlines()[-1]  # earlier lines: the datasets progress bar of save_to_disk
    assert last_line.startswith("error: Argilla login failed") and "rejected the API key" in last_line
    assert wrong not in out + err + caplog.text

    assert _owner_client(argilla_server).datasets(name=dataset_name) is None, "nothing created with a bad key"


def _reviewers(client, names: List[str]):
    """Annotator accounts in the default workspace, created through the SDK."""
    import secrets

    import argilla as rg

    workspace = client.workspaces.default
    users = []
    for name in names:
        user = rg.User(
            username=f"{name}-{secrets.token_hex(3)}",
            password=secrets.token_urlsafe(12),
            role="annotator",
            client=client,
        ).create()
        user.add_to_workspace(workspace)
        users.append(user)
    return users


def test_pull_back_applies_submitted_reviews(argilla_env, dataset_name, make_dpo_row, tmp_path, capsys):
    from datasets import Dataset, DatasetDict, load_from_disk

    train = [make_dpo_row(i) for i in range(9)]
    test = [make_dpo_row(i, seed=7) for i in range(2)]
    local_path = tmp_path / "run" / "dataset"
    DatasetDict({"train": Dataset.from_list(train), "test": Dataset.from_list(test)}).save_to_disk(str(local_path))

    assert review.main(["push", "--input", str(local_path), "--dataset-name", dataset_name, "--batch-size", "5"]) == 0
    assert "pushed 11 records in 3 batches" in capsys.readouterr().out

    client = _owner_client(argilla_env)
    owner = client.me.id
    alice, bob = (user.id for user in _reviewers(client, ["alice", "bob"]))
    t = [row["uuid"] for row in train]
    _submit(
        client,
        dataset_name,
        {
            t[0]: [{"user": owner, "preference": "chosen"}],
            t[1]: [{"user": owner, "preference": "rejected", "note": "The rejected one is correct."}],
            t[2]: [{"user": owner, "preference": "tie"}],
            t[3]: [{"user": owner, "preference": "both_bad"}],
            t[4]: [{"user": owner, "preference": "both_bad", "corrected_response": "A correct answer."}],
            t[5]: [{"user": owner, "preference": "rejected", "corrected_response": "An even better answer."}],
            t[6]: [{"user": owner, "preference": "chosen"}, {"user": alice, "preference": "rejected"}],
            t[7]: [
                {"user": owner, "preference": "chosen"},
                {"user": alice, "preference": "rejected"},
                {"user": bob, "preference": "rejected"},
            ],
            # A draft is not a verdict.
            t[8]: [{"user": owner, "preference": "rejected", "status": "draft"}],
        },
    )

    out_path = tmp_path / "run" / "reviewed"
    status = review.main(
        ["pull", "--input", str(local_path), "--dataset-name", dataset_name, "--output", str(out_path)]
    )
    printed = capsys.readouterr().out
    assert status == 0
    assert (
        "train: 6 kept of 9 (confirmed 1, corrected 2, dropped_both_bad 1, dropped_disputed 1, dropped_tie 1,"
        " swapped 2, unreviewed 1)" in printed
    )
    assert "test: 2 kept of 2 (unreviewed 2)" in printed

    reviewed = load_from_disk(str(out_path))
    rows = {row["uuid"]: row for row in reviewed["train"]}
    assert set(rows) == {t[0], t[1], t[4], t[5], t[7], t[8]}
    assert rows[t[0]]["review_action"] == "confirmed" and rows[t[0]]["chosen"] == train[0]["chosen"]

    swapped = rows[t[1]]
    assert swapped["review_action"] == "swapped" and swapped["review_note"] == "The rejected one is correct."
    assert swapped["chosen"] == train[1]["rejected"] and swapped["rejected"] == train[1]["chosen"]
    assert swapped["chosen_index"] == train[1]["rejected_index"]
    assert swapped["score_margin"] == pytest.approx(-train[1]["score_margin"])

    corrected = rows[t[4]]
    assert corrected["review_action"] == "corrected"
    assert corrected["chosen"][1] == {"role": "assistant", "content": "A correct answer."}
    assert corrected["rejected"] == train[4]["rejected"] and corrected["chosen_index"] is None
    assert rows[t[5]]["rejected"] == train[5]["chosen"]

    majority = rows[t[7]]
    assert majority["review_action"] == "swapped" and majority["review_count"] == 3
    assert rows[t[8]]["review_action"] == "unreviewed" and rows[t[8]]["chosen"] == train[8]["chosen"]
    assert reviewed["test"].num_rows == 2

    # Ties kept on request, through the library call.
    kept, report = review.pull_reviewed(local_path, dataset_name, ties="keep")
    assert report.actions["train"]["kept_tie"] == 1 and kept["train"].num_rows == 7


def test_distilabel_step_pushes_and_marks_rows_without_serialising_secrets(argilla_env, dataset_name, make_dpo_row):
    from magpie_dl.steps.argilla import PushToArgillaReview

    step = PushToArgillaReview(dataset_name=dataset_name, records_batch_size=2)
    step.load()
    rows = [make_dpo_row(i) for i in range(3)]
    out = next(step.process([dict(row) for row in rows]))
    assert [row["argilla_pushed"] for row in out] == [True, True, True]
    assert {k: out[0][k] for k in rows[0]} == rows[0]
    assert len(_records_by_id(_owner_client(argilla_env), dataset_name)) == 3

    dumped = repr(step.dump())
    assert argilla_env.api_key not in dumped and argilla_env.url not in dumped
    assert "records_batch_size" in dumped and dataset_name in dumped

    # A push that fails after load (here: the dataset was deleted meanwhile) marks the rows
    # instead of crashing the batch, and the rows pass on unchanged.
    _owner_client(argilla_env).datasets(name=dataset_name).delete()
    out = next(step.process([dict(row) for row in rows]))
    assert [row["argilla_pushed"] for row in out] == [False, False, False]
    assert {k: out[0][k] for k in rows[0]} == rows[0]
    step.unload()


def test_pull_from_missing_dataset_is_a_clear_error(argilla_env, tmp_path, make_dpo_row):
    with pytest.raises(review.ReviewError, match="'no-such-dataset' does not exist"):
        review.fetch_verdicts("no-such-dataset")


def test_search_engine_plugin_serves_the_queries_the_review_ui_sends(argilla_env, dataset_name, make_dpo_row):
    """The in-memory engine behind the UI's search box, filters, sort, paging and progress bars."""
    rows = []
    for i in range(12):
        # Distinct margins 0.001 * (i + 1); row 11 is a tie; row 5 has a searchable word.
        scores = [0.1, 0.1 + 0.001 * (i + 1), 0.1, 0.1, 0.1] if i != 11 else [0.1] * 5
        rows.append(make_dpo_row(i, scores=scores))
    rows[5]["instruction"] = "Why do zebras sleep standing up?"
    review.push_rows(rows, dataset_name)

    client = _owner_client(argilla_env)
    dataset = client.datasets(name=dataset_name)
    reviewed = {rows[0]["uuid"], rows[1]["uuid"], rows[2]["uuid"]}
    _submit(client, dataset_name, {uid: [{"user": client.me.id, "preference": "chosen"}] for uid in reviewed})

    def search(body: Dict[str, Any], **params: Any) -> tuple[List[str], int]:
        response = client.http_client.post(
            f"/api/v1/me/datasets/{dataset.id}/records/search", json=body, params={"limit": 50, **params}
        )
        assert response.status_code == 200, response.text
        payload = response.json()
        return [item["record"]["external_id"] for item in payload["items"]], payload["total"]

    def metadata(name: str) -> Dict[str, str]:
        return {"entity": "metadata", "metadata_property": name}

    uuids = [row["uuid"] for row in rows]
    assert search({"query": {"text": {"q": "zebras"}}}) == ([uuids[5]], 1)
    assert search({"query": {"text": {"q": "zebras", "field": "rejected"}}}) == ([], 0)

    margin_at_least = {"type": "range", "scope": metadata("score_margin"), "ge": 0.0055}
    in_categories = {"type": "terms", "scope": metadata("task_category"), "values": ["Math", "Reasoning"]}
    found, total = search({"filters": {"and": [margin_at_least, in_categories]}})
    expected = {
        row["uuid"] for row in rows if row["score_margin"] >= 0.0055 and row["task_category"] in ("Math", "Reasoning")
    }
    assert set(found) == expected and total == len(expected) > 0

    suggested = {"entity": "suggestion", "question": "preference", "property": "value"}
    tie = {"type": "terms", "scope": suggested, "values": ["tie"]}
    assert search({"filters": {"and": [tie]}}) == ([uuids[11]], 1)

    def by_status(status: str) -> set:
        scope = {"entity": "response", "property": "status"}
        return set(search({"filters": {"and": [{"type": "terms", "scope": scope, "values": [status]}]}})[0])

    assert by_status("submitted") == reviewed
    assert by_status("pending") == set(uuids) - reviewed

    ascending, _ = search({"sort": [{"scope": metadata("score_margin"), "order": "asc"}]})
    assert ascending == [uuids[11]] + uuids[:11]
    descending, _ = search({"sort": [{"scope": metadata("score_margin"), "order": "desc"}]})
    assert descending == list(reversed(uuids[:11])) + [uuids[11]]
    page, total = search({"sort": [{"scope": metadata("score_margin"), "order": "asc"}]}, limit=5, offset=5)
    assert page == ascending[5:10] and total == 12

    progress = client.http_client.get(f"/api/v1/datasets/{dataset.id}/progress").json()
    assert (progress["total"], progress["completed"], progress["pending"]) == (12, 3, 9)
    mine = client.http_client.get(f"/api/v1/me/datasets/{dataset.id}/metrics").json()
    assert mine["responses"]["submitted"] == 3 and mine["responses"]["pending"] == 9

    properties = {prop.name: prop.id for prop in dataset.settings.metadata}
    margins = client.http_client.get(f"/api/v1/metadata-properties/{properties['score_margin']}/metrics").json()
    assert margins["min"] == pytest.approx(0.0) and margins["max"] == pytest.approx(0.011)
    categories = client.http_client.get(f"/api/v1/metadata-properties/{properties['task_category']}/metrics").json()
    counts = {entry["term"]: entry["count"] for entry in categories["values"]}
    assert counts == {c: sum(row["task_category"] == c for row in rows) for c in {row["task_category"] for row in rows}}


def test_step_runs_inside_a_distilabel_pipeline(argilla_env, dataset_name, make_dpo_row, tmp_path):
    """The step in a real pipeline run: rows reach Argilla, and pipeline.yaml holds no URL or key."""
    from distilabel.pipeline import Pipeline
    from distilabel.steps import LoadDataFromDicts

    from magpie_dl.steps.argilla import PushToArgillaReview

    rows = [make_dpo_row(i) for i in range(7)]
    with Pipeline(name="argilla-push-test", cache_dir=str(tmp_path / "cache")) as pipeline:
        load = LoadDataFromDicts(data=rows, batch_size=4)
        push = PushToArgillaReview(name="push_to_argilla", input_batch_size=4)
        load >> push
    # distilabel replaces the root logger's handlers with a QueueHandler whose queue it closes
    # after the run; later log calls in this process would then fail. Put the handlers back.
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    try:
        distiset = pipeline.run(
            parameters={push.name: {"dataset_name": dataset_name, "records_batch_size": 3}}, use_cache=False
        )
    finally:
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)

    out = distiset["default"]["train"]
    assert out.num_rows == 7 and all(out["argilla_pushed"])
    assert len(_records_by_id(_owner_client(argilla_env), dataset_name)) == 7
    written = [path.read_text() for path in (tmp_path / "cache").rglob("pipeline.yaml")]
    assert written and all(argilla_env.api_key not in text and argilla_env.url not in text for text in written)
    assert any(dataset_name in text for text in written)


class _FlakyProxy:
    """An HTTP proxy on loopback in front of the real server that answers 503 to the first
    ``failures`` bulk upserts, so the retry path runs against real requests and responses."""

    def __init__(self, target: str, failures: int) -> None:
        import http.server
        import threading

        import httpx

        self.failures_left = failures
        self.failures_served = 0
        proxy = self
        upstream = httpx.Client(base_url=target, timeout=60)

        class Handler(http.server.BaseHTTPRequestHandler):
            def _forward(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.command == "PUT" and self.path.endswith("/records/bulk") and proxy.failures_left > 0:
                    proxy.failures_left -= 1
                    proxy.failures_served += 1
                    self.send_response(503)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                skip = {"host", "content-length", "accept-encoding", "connection"}
                headers = {k: v for k, v in self.headers.items() if k.lower() not in skip}
                reply = upstream.request(self.command, self.path, content=body, headers=headers)
                self.send_response(reply.status_code)
                for key, value in reply.headers.items():
                    if key.lower() not in {"content-length", "content-encoding", "transfer-encoding", "connection"}:
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(reply.content)))
                self.end_headers()
                self.wfile.write(reply.content)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _forward

            def log_message(self, *args: Any) -> None:  # keep test output quiet
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_transient_failure_of_a_batch_is_retried(argilla_server, dataset_name, make_dpo_row, caplog):
    proxy = _FlakyProxy(argilla_server.url, failures=2)
    try:
        rows = [make_dpo_row(i) for i in range(5)]
        with caplog.at_level(logging.WARNING, logger="magpie_dl.review"):
            report = review.push_rows(
                rows, dataset_name, batch_size=2, api_url=proxy.url, api_key=argilla_server.api_key, retry=FAST_RETRY
            )
    finally:
        proxy.close()
    assert proxy.failures_served == 2
    assert (report.records, report.batches) == (5, 3)
    assert caplog.text.count("upsert of batch 1 failed (ArgillaAPIError), retry") == 2
    assert len(_records_by_id(_owner_client(argilla_server), dataset_name)) == 5


def test_batch_that_keeps_failing_stops_the_push_with_a_clean_error(argilla_server, dataset_name, make_dpo_row):
    proxy = _FlakyProxy(argilla_server.url, failures=100)
    try:
        with pytest.raises(review.ReviewError) as caught:
            review.push_rows(
                [make_dpo_row(0)], dataset_name, api_url=proxy.url, api_key=argilla_server.api_key, retry=FAST_RETRY
            )
    finally:
        proxy.close()
    assert proxy.failures_served == FAST_RETRY.attempts
    message = str(caught.value)
    assert message.startswith(f"Argilla upsert of batch 1 failed at {proxy.url}: ArgillaAPIError 503")
    assert caught.value.transient and argilla_server.api_key not in message and "\n" not in message
