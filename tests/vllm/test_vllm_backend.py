"""VLLMBackend against a real vLLM engine (CPU build, V1 model runner, tiny Llama-3.1-style model)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from magpie_dl.backends.base import PromptInput, SamplingSpec
from magpie_dl.templates.families import get_family, resolve_single_token_ids, resolve_stops
from magpie_dl.templates.prompts import pre_query_token_ids

pytestmark = pytest.mark.vllm
FAMILY = get_family("llama-3.1")


def pre_query(engine) -> PromptInput:
    return PromptInput(tuple(pre_query_token_ids(engine.tokenizer, FAMILY)))


def chat_prompt(engine, text: str) -> PromptInput:
    """The model's chat template around one user message, as token ids."""
    messages = [{"role": "user", "content": text}]
    encoded = engine.tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True
    )
    return PromptInput(tuple(encoded["input_ids"]), messages=tuple(messages))


def query_spec(engine, **overrides) -> SamplingSpec:
    stops = resolve_stops(engine.tokenizer, FAMILY.stop)
    fields = dict(
        n=5, temperature=1.0, top_p=1.0, max_tokens=48, seed=1234,
        stop=stops.strings, stop_token_ids=stops.token_ids,
    )  # fmt: skip
    fields.update(overrides)
    return SamplingSpec(**fields)


def test_prompt_is_token_exact_with_one_bos(engine) -> None:
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    prompt = pre_query(engine)
    bos = engine.tokenizer.bos_token_id
    assert prompt.token_ids.count(bos) == 1 and prompt.token_ids[0] == bos

    # The trap we avoid: a string prompt is re-tokenised with special tokens added, which
    # with a real Llama-3 tokenizer (it adds BOS) puts a second BOS before the template's.
    text = engine.tokenizer.decode(prompt.token_ids)
    as_string = engine.engine.generate([text], SamplingParams(max_tokens=1), use_tqdm=False)[0]
    assert as_string.prompt_token_ids == engine.tokenizer(text)["input_ids"]

    # Ours: complete() checks the engine's reported prompt ids equal ours, and its samples
    # are exactly those of the engine fed the same TokensPrompt.
    spec = query_spec(engine, n=2, max_tokens=12)
    ours = engine.complete([prompt], [spec])[0]
    direct = engine.engine.generate(
        [TokensPrompt(prompt_token_ids=list(prompt.token_ids))], engine.sampling_params(spec), use_tqdm=False
    )[0]
    assert direct.prompt_token_ids == list(prompt.token_ids)
    assert [c.token_ids for c in ours] == [list(o.token_ids) for o in direct.outputs]


def test_n_samples_with_seed_are_reproducible_and_batch_independent(engine) -> None:
    prompt = pre_query(engine)
    spec = query_spec(engine)
    first = engine.complete([prompt], [spec])[0]
    again = engine.complete([prompt], [spec])[0]
    other = chat_prompt(engine, "How do I plan a road trip?")
    in_batch = engine.complete([other, prompt, other], [spec, spec, query_spec(engine, seed=7)])[1]
    reseeded = engine.complete([prompt], [query_spec(engine, seed=99)])[0]

    ids = [c.token_ids for c in first]
    assert len(first) == 5
    assert ids == [c.token_ids for c in again] == [c.token_ids for c in in_batch]
    assert len({tuple(t) for t in ids}) > 1, "the n samples of one request must differ"
    assert ids != [c.token_ids for c in reseeded]


def test_finish_reasons_and_token_counts(engine) -> None:
    prompt = pre_query(engine)
    eot = engine.tokenizer.convert_tokens_to_ids("<|eot_id|>")
    [short, long] = engine.complete(
        [prompt, prompt], [query_spec(engine, max_tokens=3), query_spec(engine, n=8, max_tokens=200)]
    )
    assert [(c.finish_reason, c.num_tokens) for c in short] == [("length", 3)] * 5

    assert {c.finish_reason for c in long} <= {"stop", "length"}
    stopped = [c for c in long if c.finish_reason == "stop"]
    assert stopped, "the trained tiny model ends its turns"
    for c in long:
        assert 1 <= c.num_tokens <= 200 and c.error is None
    for c in stopped:
        # A stop token is counted in token_ids; a stop string is cut from the text.
        if c.token_ids[-1] in query_spec(engine).stop_token_ids:
            assert "<|eot_id|>" not in c.text
    assert all(c.token_ids[-1] != eot for c in long if c.finish_reason == "length")


def test_prompt_longer_than_context_fails_alone(engine) -> None:
    prompt = pre_query(engine)
    too_long = PromptInput(tuple(prompt.token_ids) + (300,) * 1100)
    [bad, good] = engine.complete([too_long, prompt], [query_spec(engine, n=2), query_spec(engine, n=2, max_tokens=4)])
    assert [c.finish_reason for c in bad] == ["error", "error"] and "max_model_len" in bad[0].error
    assert [c.finish_reason for c in good] == ["length", "length"]


def test_seeded_batch_beyond_4k_prompt_tokens_survives(engine) -> None:
    """Per-request seeds + chunked prefill kill the CPU engine past ~4K batched prompt tokens
    (FIELD_NOTES §3); the backend turns chunked prefill off on CPU."""
    assert engine.engine.llm_engine.vllm_config.scheduler_config.enable_chunked_prefill is False
    prompt = pre_query(engine)
    filler = tuple(range(300, 300 + 500))
    prompts = [PromptInput(prompt.token_ids + filler[i:] + filler[:i]) for i in range(12)]  # ~6K prompt tokens
    results = engine.complete(prompts, [query_spec(engine, n=2, max_tokens=8, seed=i) for i in range(12)])
    assert all(c.finish_reason in ("stop", "length") for r in results for c in r)


def test_first_token_ban_changes_only_the_first_position(engine) -> None:
    prompt = pre_query(engine)
    greedy = query_spec(engine, n=1, temperature=0.0, max_tokens=12, seed=None)
    [[base]] = engine.complete([prompt], [greedy])
    g = base.token_ids
    second = next(t for t in g[1:] if t != g[0])  # a token the model emits later, not first

    ban_first, ban_later, unbanned = engine.complete(
        [prompt, prompt, prompt],
        [
            query_spec(engine, n=1, temperature=0.0, max_tokens=12, seed=None, first_token_ban_ids=(g[0],)),
            query_spec(engine, n=1, temperature=0.0, max_tokens=12, seed=None, first_token_ban_ids=(second,)),
            greedy,  # same batch, no ban: must be untouched by its neighbours' bans
        ],
    )
    assert ban_first[0].token_ids[0] != g[0]
    # Banning a token the greedy path only uses later leaves the whole path unchanged:
    # the ban does not reach position 1 and beyond.
    assert ban_later[0].token_ids == g
    assert unbanned[0].token_ids == g


def test_markdown_ban_with_sampling(engine) -> None:
    prompt = pre_query(engine)
    # Which tokens the unconstrained model likes to start with, then ban them all.
    [plain] = engine.complete([prompt], [query_spec(engine, n=16, max_tokens=2, seed=5)])
    firsts = tuple(sorted({c.token_ids[0] for c in plain}))
    markdown = resolve_single_token_ids(engine.tokenizer, FAMILY.first_token_ban)
    assert markdown, "the markdown ban list resolves to single tokens in this vocabulary"
    banned = tuple(sorted(set(firsts) | set(markdown)))
    spec = query_spec(engine, n=16, max_tokens=8, seed=5, first_token_ban_ids=banned)
    [constrained] = engine.complete([prompt], [spec])
    assert all(c.token_ids[0] not in banned for c in constrained)
    assert all(c.finish_reason in ("stop", "length") for c in constrained)


def test_ban_argument_is_validated_by_the_engine(engine) -> None:
    from vllm import SamplingParams
    from vllm.exceptions import VLLMValidationError
    from vllm.inputs import TokensPrompt

    from magpie_dl.backends.first_token_ban import FIRST_TOKEN_BAN_ARG

    # validate_params runs at admission: a malformed argument never reaches the sampler.
    with pytest.raises(VLLMValidationError, match=FIRST_TOKEN_BAN_ARG):
        engine.engine.generate(
            [TokensPrompt(prompt_token_ids=list(pre_query(engine).token_ids))],
            SamplingParams(max_tokens=1, extra_args={FIRST_TOKEN_BAN_ARG: "##"}),
            use_tqdm=False,
        )
    with pytest.raises(ValueError, match="outside the vocabulary"):
        engine.complete([pre_query(engine)], [query_spec(engine, first_token_ban_ids=(10**6,))])


TAG_SCHEMA = {
    "type": "object",
    "properties": {
        "difficulty": {"type": "string", "enum": ["very easy", "easy", "medium", "hard", "very hard"]},
        "score": {"type": "integer"},
        "intent": {"type": "string", "maxLength": 40},
    },
    "required": ["difficulty", "score", "intent"],
    "additionalProperties": False,
}


def check_tag(text: str) -> dict:
    # A tiny model may put raw control characters inside strings: parse leniently.
    value = json.loads(text, strict=False)
    assert set(value) == {"difficulty", "score", "intent"}
    assert value["difficulty"] in TAG_SCHEMA["properties"]["difficulty"]["enum"]
    assert isinstance(value["score"], int) and isinstance(value["intent"], str)
    return value


def test_structured_outputs_follow_the_schema(engine) -> None:
    prompt = chat_prompt(engine, "Rate this query: How do I learn python lists?")
    spec = SamplingSpec(n=4, temperature=1.0, max_tokens=120, seed=3, json_schema=TAG_SCHEMA)
    [[*tags], [free]] = engine.complete([prompt, prompt], [spec, SamplingSpec(n=1, max_tokens=20, seed=3)])
    assert {c.finish_reason for c in tags} == {"stop"}
    for c in tags:
        check_tag(c.text)
    # The unconstrained neighbour in the same batch is not forced into JSON.
    assert not free.text.lstrip().startswith("{")


def test_unload_stops_the_engine_without_hanging(tiny_generator: Path, tmp_path: Path) -> None:
    """load, generate, unload, exit in a fresh interpreter: it must finish and leave no engine process."""
    script = textwrap.dedent(f"""
        import os, time
        import psutil
        from magpie_dl.backends.base import PromptInput, SamplingSpec
        from magpie_dl.backends.vllm import VLLMBackend

        if __name__ == "__main__":
            b = VLLMBackend(model={str(tiny_generator)!r}, dtype="float32", max_model_len=256)
            b.load()
            # multiprocessing's resource tracker is the interpreter's, not the engine's.
            engine_procs = [
                p for p in psutil.Process().children(recursive=True)
                if "resource_tracker" not in " ".join(p.cmdline())
            ]
            assert engine_procs, "vLLM runs its engine core in child processes"
            out = b.complete([PromptInput((0, 2, 300))], [SamplingSpec(max_tokens=4, seed=1)])
            assert out[0][0].num_tokens == 4
            t = time.monotonic()
            b.unload()
            b.unload()  # idempotent
            def running(p):
                try:
                    return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
                except psutil.NoSuchProcess:
                    return False
            alive = [p.pid for p in engine_procs if running(p)]
            print("UNLOAD_SECONDS", round(time.monotonic() - t, 1), "ALIVE", alive)
            assert not alive, alive
    """)
    path = tmp_path / "load_unload.py"
    path.write_text(script)
    started = time.monotonic()
    done = subprocess.run([sys.executable, str(path)], capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert "ALIVE []" in done.stdout
    assert time.monotonic() - started < 400


def test_engine_arguments_on_cpu_and_gpu(tiny_generator: Path) -> None:
    """CPU forces the two settings it needs; on GPU vLLM's own defaults stand unless set."""
    from magpie_dl.backends.vllm import VLLMBackend

    backend = VLLMBackend(model=str(tiny_generator), tensor_parallel_size=2, max_model_len=4096, dtype="bfloat16")
    backend._on_gpu = False
    cpu = backend._engine_args()
    assert cpu["enable_chunked_prefill"] is False and cpu["enforce_eager"] is True
    assert (cpu["tensor_parallel_size"], cpu["max_model_len"], cpu["dtype"]) == (2, 4096, "bfloat16")
    assert cpu["enable_prefix_caching"] is True and cpu["gpu_memory_utilization"] == 0.9
    backend._on_gpu = True
    gpu = backend._engine_args()
    assert "enable_chunked_prefill" not in gpu and "enforce_eager" not in gpu
    backend.enable_chunked_prefill = True
    assert backend._engine_args()["enable_chunked_prefill"] is True

    # GPUs come from the step's resources: TP 2 on a step that reserves one is refused.
    with pytest.raises(ValueError, match="StepResources"):
        backend.check_gpu_reservation()
    backend._desired_num_gpus = 2  # what distilabel sets for resources=StepResources(gpus=2)
    backend.check_gpu_reservation()


def test_repetition_penalty_goes_into_the_sampling_params(tiny_generator: Path) -> None:
    """The responses' repetition penalty reaches vLLM (no engine needed to build the params)."""
    from magpie_dl.backends.vllm import VLLMBackend

    backend = VLLMBackend(model=str(tiny_generator))
    assert backend.sampling_params(SamplingSpec(repetition_penalty=1.3)).repetition_penalty == 1.3
    assert backend.sampling_params(SamplingSpec()).repetition_penalty == 1.0


def test_stream_gives_generates_samples_as_each_request_finishes(engine) -> None:
    """Requests join the running engine and come back as they finish: a short one submitted
    after a long one overtakes it; samples equal ``complete``'s; refusals come back as errors;
    and a batch stream releases whole batches in order."""
    from magpie_dl.run.streaming import OrderedBatches

    prompt = pre_query(engine)
    fixed = dict(ignore_eos=True, stop=(), stop_token_ids=())  # lengths that do not depend on the samples
    long, short = query_spec(engine, n=3, min_tokens=120, max_tokens=120, **fixed), query_spec(engine, n=2, max_tokens=5, seed=9)
    too_long = PromptInput(tuple(prompt.token_ids) + (300,) * 1100)
    with engine.open_stream() as stream:
        stream.submit([("long", prompt, long)])
        stream.submit([("short", prompt, short), ("refused", too_long, short)])
        with pytest.raises(RuntimeError, match="stream is open"):
            engine.complete([prompt], [short])  # generate() would swallow the stream's outputs
        finished = []
        while stream.in_flight:
            finished += stream.poll(1.0)
    order = [tag for tag, _ in finished]
    assert order.index("short") < order.index("long") and set(order) == {"long", "short", "refused"}
    got = dict(finished)
    assert [(c.finish_reason, c.num_tokens) for c in got["long"]] == [("length", 120)] * 3
    assert [c.finish_reason for c in got["refused"]] == ["error", "error"] and "max_model_len" in got["refused"][0].error
    [expected_long, expected_short] = engine.complete([prompt, prompt], [long, short])  # the stream is closed now
    assert [c.token_ids for c in got["long"]] == [c.token_ids for c in expected_long]
    assert [c.token_ids for c in got["short"]] == [c.token_ids for c in expected_short]

    ordered = OrderedBatches(engine.open_stream(), None, "responses", "1", engine.model_name)
    ordered.add("first", [prompt], [long])
    ordered.add("second", [prompt, prompt], [short, short])
    released = []
    while ordered.pending:
        released += ordered.poll(1.0)
    ordered.close()
    assert [key for key, _ in released] == ["first", "second"]
    assert [len(r) for _, r in released] == [1, 2]
