"""OpenAIBackend against a real `vllm serve` (CPU build) that the session fixture starts on 127.0.0.1."""

from __future__ import annotations

import json

import pytest
from serving_helpers import Proxy, free_port

from magpie_dl.backends.base import PromptInput, SamplingSpec
from magpie_dl.backends.openai import EndpointUnreachableError, OpenAIBackend
from magpie_dl.templates.families import get_family, resolve_stops
from magpie_dl.templates.prompts import pre_query_token_ids

pytestmark = pytest.mark.vllm
FAMILY = get_family("llama-3.1")


@pytest.fixture()
def client(server: str, tiny_generator, api_key: str):
    backend = OpenAIBackend(model=str(tiny_generator), base_urls=[server], max_retries=2, backoff_s=0.05)
    backend.load()
    yield backend
    backend.unload()


def query_spec(tokenizer, **overrides) -> SamplingSpec:
    stops = resolve_stops(tokenizer, FAMILY.stop)
    fields = dict(n=5, temperature=1.0, max_tokens=48, seed=1234, stop=stops.strings, stop_token_ids=stops.token_ids)
    fields.update(overrides)
    return SamplingSpec(**fields)


def test_raw_token_prompts_match_the_offline_engine(client, engine) -> None:
    """Same model, same token ids, same seeds: the server samples what the offline engine samples
    (so the prompt reached it token-exact: no template, no added BOS)."""
    prompt = PromptInput(tuple(pre_query_token_ids(client.tokenizer, FAMILY)))
    spec = query_spec(client.tokenizer)
    [served] = client.complete([prompt], [spec])
    [offline] = engine.complete([prompt], [spec])
    assert len(served) == 5
    assert [c.token_ids for c in served] == [c.token_ids for c in offline]
    assert [c.finish_reason for c in served] == [c.finish_reason for c in offline]
    assert [c.text for c in served] == [c.text for c in offline]
    # and reproducible across requests
    assert [c.token_ids for c in client.complete([prompt], [spec])[0]] == [c.token_ids for c in served]


def test_finish_reasons_token_counts_ban_and_schema(client) -> None:
    tok = client.tokenizer
    prompt = PromptInput(tuple(pre_query_token_ids(tok, FAMILY)))
    [short, [plain]] = client.complete(
        [prompt, prompt],
        [query_spec(tok, max_tokens=3), query_spec(tok, n=1, temperature=0.0, max_tokens=6, seed=None)],
    )
    assert [(c.finish_reason, c.num_tokens) for c in short] == [("length", 3)] * 5
    # The ban reaches the server's processor through vllm_xargs (the probe at load found it).
    assert client._ban_ready == {client.base_urls[0]: True}
    greedy = plain.token_ids
    second = next(t for t in greedy[1:] if t != greedy[0])
    [[ban_first], [ban_later]] = client.complete(
        [prompt, prompt],
        [
            query_spec(tok, n=1, temperature=0.0, max_tokens=6, seed=None, first_token_ban_ids=(greedy[0],)),
            query_spec(tok, n=1, temperature=0.0, max_tokens=6, seed=None, first_token_ban_ids=(second,)),
        ],
    )
    assert ban_first.token_ids[0] != greedy[0]
    assert ban_later.token_ids == greedy  # only position 0 is affected

    schema = {
        "type": "object",
        # Bounded fields only: a tiny model can write an unbounded integer until max_tokens.
        "properties": {
            "quality": {"type": "string", "enum": ["poor", "good", "excellent"]},
            "safe": {"type": "boolean"},
        },
        "required": ["quality", "safe"],
        "additionalProperties": False,
    }
    [tags] = client.complete([prompt], [SamplingSpec(n=3, max_tokens=80, seed=2, json_schema=schema)])
    for c in tags:
        assert c.finish_reason == "stop", repr(c.text)
        value = json.loads(c.text, strict=False)
        assert value["quality"] in ("poor", "good", "excellent") and isinstance(value["safe"], bool)


def test_chat_mode_uses_the_servers_chat_template(server, tiny_generator, api_key, engine) -> None:
    messages = ({"role": "user", "content": "How do I learn python lists?"},)
    ids = engine.tokenizer.apply_chat_template(
        list(messages), add_generation_prompt=True, tokenize=True, return_dict=True
    )["input_ids"]
    prompt = PromptInput(tuple(ids), messages=messages)
    spec = SamplingSpec(n=2, temperature=0.8, max_tokens=40, seed=11,
                        stop_token_ids=resolve_stops(engine.tokenizer, FAMILY.response_stop).token_ids)  # fmt: skip
    chat = OpenAIBackend(model=str(tiny_generator), base_urls=[server], mode="chat")
    chat.load()
    try:
        [served] = chat.complete([prompt], [spec])
        [no_messages] = chat.complete([PromptInput(prompt.token_ids)], [spec])
    finally:
        chat.unload()
    [offline] = engine.complete([prompt], [spec])
    assert [c.token_ids for c in served] == [c.token_ids for c in offline]
    assert all(c.finish_reason in ("stop", "length") and c.num_tokens > 0 for c in served)
    assert [c.finish_reason for c in no_messages] == ["error", "error"] and "messages" in no_messages[0].error


def test_requests_spread_over_two_endpoints(server, tiny_generator, api_key) -> None:
    with Proxy(server) as a, Proxy(server) as b:
        backend = OpenAIBackend(model=str(tiny_generator), base_urls=[a.url, b.url], max_concurrency=4)
        backend.load()
        tok = backend.tokenizer
        prompt = PromptInput(tuple(pre_query_token_ids(tok, FAMILY)))
        results = backend.complete([prompt] * 12, [query_spec(tok, n=2, max_tokens=24, seed=s) for s in range(12)])
        sent = backend.requests_sent
        backend.unload()
    assert all(c.finish_reason in ("stop", "length") for r in results for c in r)
    assert sum(sent.values()) == 12
    # Each proxy also saw the ban-processor probe sent at load.
    assert sent == {a.url: a.completions_seen() - 1, b.url: b.completions_seen() - 1}
    assert min(sent.values()) >= 3, sent


def test_transient_failures_are_retried(server, tiny_generator, api_key) -> None:
    with Proxy(server) as flaky:
        backend = OpenAIBackend(model=str(tiny_generator), base_urls=[flaky.url], max_retries=3, backoff_s=0.05)
        backend.load()
        tok = backend.tokenizer
        prompt = PromptInput(tuple(pre_query_token_ids(tok, FAMILY)))
        spec = query_spec(tok, n=2, max_tokens=16)
        [clean] = backend.complete([prompt], [spec])
        flaky.faults = ["503", "drop", "503"]
        [retried] = backend.complete([prompt], [spec])
        assert flaky.faults_served == 3
        flaky.faults = ["503"] * 4  # more than max_retries: the prompt fails alone, with the reason
        [given_up] = backend.complete([prompt], [spec])
        [after] = backend.complete([prompt], [spec])
        backend.unload()
    assert [c.token_ids for c in retried] == [c.token_ids for c in clean]
    assert [c.finish_reason for c in given_up] == ["error", "error"]
    assert "4 attempts" in given_up[0].error and "HTTP 503" in given_up[0].error
    assert [c.token_ids for c in after] == [c.token_ids for c in clean]


def test_all_endpoints_gone_mid_run_raises(server, tiny_generator, api_key) -> None:
    with Proxy(server) as doomed:
        backend = OpenAIBackend(model=str(tiny_generator), base_urls=[doomed.url], max_retries=1, backoff_s=0.01)
        backend.load()
    prompt = PromptInput(tuple(pre_query_token_ids(backend.tokenizer, FAMILY)))
    with pytest.raises(ConnectionError, match="no endpoint answered"):
        backend.complete([prompt, prompt], [SamplingSpec(max_tokens=4)] * 2)
    backend.unload()


def test_unreachable_endpoint_is_one_clear_line(server, tiny_generator, api_key) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    backend = OpenAIBackend(model=str(tiny_generator), base_urls=[server, dead], connect_timeout_s=2)
    with pytest.raises(EndpointUnreachableError) as info:
        backend.load()
    message = str(info.value)
    assert dead in message and "unreachable" in message and "\n" not in message
    backend.unload()


def test_wrong_api_key_is_refused_without_echoing_it(server, tiny_generator, monkeypatch) -> None:
    monkeypatch.setenv("MAGPIE_DL_API_KEY", "not-the-key-s3cret")
    backend = OpenAIBackend(model=str(tiny_generator), base_urls=[server])
    with pytest.raises(PermissionError) as info:
        backend.load()
    assert "MAGPIE_DL_API_KEY" in str(info.value) and "s3cret" not in str(info.value)
    assert "s3cret" not in repr(backend) and "s3cret" not in json.dumps(backend.dump(), default=str)
    backend.unload()


def test_backends_survive_distilabels_deep_copy(tiny_generator) -> None:
    """distilabel deep-copies every step (and its LLM) before running it."""
    from magpie_dl.backends.vllm import VLLMBackend

    for backend in (
        OpenAIBackend(model=str(tiny_generator), base_urls=["http://127.0.0.1:1"]),
        VLLMBackend(model=str(tiny_generator), dtype="float32"),
    ):
        copied = backend.model_copy(deep=True)
        assert copied.dump() == backend.dump()


def test_stream_sends_requests_as_submitted_and_returns_them_as_they_finish(server, tiny_generator, api_key) -> None:
    """A short request submitted after a long one comes back first (both run at once); the
    samples equal ``complete``'s; the concurrency limit holds; a refused prompt fails alone."""
    backend = OpenAIBackend(model=str(tiny_generator), base_urls=[server], max_concurrency=2, max_retries=0)
    backend.load()
    try:
        prompt = PromptInput(tuple(pre_query_token_ids(backend.tokenizer, FAMILY)))
        long = query_spec(backend.tokenizer, n=2, min_tokens=600, max_tokens=600, ignore_eos=True, stop=(), stop_token_ids=())
        short = query_spec(backend.tokenizer, n=1, max_tokens=4, seed=3)
        too_long = PromptInput(tuple(prompt.token_ids) + (300,) * 1100)
        with backend.open_stream() as stream:
            stream.submit([("long", prompt, long), ("short", prompt, short), ("refused", too_long, short)])
            assert stream.in_flight == 3
            finished = []
            while stream.in_flight:
                finished += stream.poll(1.0)
        order = [tag for tag, _ in finished]
        assert order.index("short") < order.index("long")
        got = dict(finished)
        assert [(c.finish_reason, c.num_tokens) for c in got["long"]] == [("length", 600)] * 2
        assert [c.finish_reason for c in got["refused"]] == ["error"]
        [expected_long, expected_short] = backend.complete([prompt, prompt], [long, short])
        assert [c.token_ids for c in got["long"]] == [c.token_ids for c in expected_long]
        assert [c.token_ids for c in got["short"]] == [c.token_ids for c in expected_short]
    finally:
        backend.unload()
