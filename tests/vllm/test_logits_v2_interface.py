"""FirstTokenBanV2 through vLLM's own V2 model-runner machinery, on CPU.

What runs for real here: vLLM's V2 loader (type checks, FQCN import), its per-request
params validator, its ``RequestState`` buffers and its V2 ``Sampler`` logits pipeline
(``add_request`` -> ``apply_staged_writes`` -> ``apply_sampling_params``), with the
batch layout the V2 runner passes. What does not: a GPU engine step (CUDA tensors, async
scheduling, CUDA graphs, speculative decoding): the V2 model runner requires Triton and
this CPU build refuses it (``VLLM_USE_V2_MODEL_RUNNER=1`` -> "Model Runner V2 requires
Triton"), so the processor never sees a real V2 engine step in this test tier.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from magpie_dl.backends.first_token_ban import (
    FIRST_TOKEN_BAN_ARG,
    FIRST_TOKEN_BAN_V1_FQCN,
    FIRST_TOKEN_BAN_V2_FQCN,
)

pytestmark = pytest.mark.vllm
MAX_REQS = 8
MAX_LEN = 64


@pytest.fixture(scope="module")
def v2(tiny_generator: Path):
    # The same patch vLLM's CPU V2 runner applies (plain CPU buffers instead of pinned UVA).
    import vllm.v1.worker.cpu.shm  # noqa: F401
    from vllm.engine.arg_utils import EngineArgs
    from vllm.v1.worker.gpu.sample import logits_processor as lp
    from vllm.v1.worker.gpu.sample.sampler import Sampler
    from vllm.v1.worker.gpu.states import RequestState

    config = EngineArgs(model=str(tiny_generator), dtype="float32", max_model_len=MAX_LEN).create_engine_config()
    vocab = config.model_config.get_vocab_size()
    states = RequestState(
        max_num_reqs=MAX_REQS, max_model_len=MAX_LEN, max_num_batched_tokens=MAX_LEN,
        num_speculative_steps=0, vocab_size=vocab, device=torch.device("cpu"), use_dense_all_token_ids=True,
    )  # fmt: skip
    processors = lp.build_custom_logits_processors(config, states, False, [FIRST_TOKEN_BAN_V2_FQCN])
    sampler = Sampler(config, MAX_REQS, vocab, torch.device("cpu"), states, custom_logits_processors=processors)
    return lp, sampler, states, vocab


def run_step(sampler, states, slots: list[int], prompt_lens: dict[int, int], positions: list[int], vocab: int):
    """One sampler step over ``slots`` (one logits row each) at the given input positions."""
    for slot, length in prompt_lens.items():
        states.prompt_len.np[slot] = length
    states.prompt_len.copy_to_uva()
    sampler.apply_staged_writes()
    logits = torch.randn(len(slots), vocab, generator=torch.Generator().manual_seed(0))
    mapping = torch.tensor(slots, dtype=torch.int32)
    out = sampler.apply_sampling_params(
        logits.clone(), mapping, mapping, np.array(slots), torch.tensor(positions),
        torch.zeros(len(slots), dtype=torch.int32), torch.zeros(len(slots), dtype=torch.int32),
        np.array(positions) + 1, skip_top_k_top_p=True,
    )  # fmt: skip
    return logits, out


def banned(out: torch.Tensor) -> list[tuple[int, int]]:
    return [tuple(x) for x in torch.nonzero(torch.isneginf(out)).tolist()]


def test_v2_loader_accepts_only_the_v2_class(v2) -> None:
    lp, *_ = v2
    from vllm import SamplingParams
    from vllm.exceptions import VLLMValidationError

    from magpie_dl.backends.vllm_logits import FirstTokenBanV2

    validate = lp.build_custom_logits_processors_params_validator([FIRST_TOKEN_BAN_V2_FQCN])
    validate(SamplingParams(extra_args={FIRST_TOKEN_BAN_ARG: [1, 2]}))
    with pytest.raises(VLLMValidationError, match=FIRST_TOKEN_BAN_ARG):
        validate(SamplingParams(extra_args={FIRST_TOKEN_BAN_ARG: [1.5]}))
    # The V2 runner refuses V1 classes: that is why the backend feature-detects.
    with pytest.raises(ValueError, match="not a subclass"):
        lp.build_custom_logits_processors_params_validator([FIRST_TOKEN_BAN_V1_FQCN])
    _, sampler, _, _ = v2
    assert any(isinstance(p, FirstTokenBanV2) for p in sampler.logits_processors)


def test_v2_bans_only_the_first_output_position(v2) -> None:
    from vllm import SamplingParams

    _, sampler, states, vocab = v2
    sampler.add_request(2, SamplingParams(extra_args={FIRST_TOKEN_BAN_ARG: [1, 7, vocab - 1]}))
    sampler.add_request(5, SamplingParams())  # a neighbour without a ban
    sampler.add_request(6, SamplingParams(extra_args={FIRST_TOKEN_BAN_ARG: [3]}))

    # Slot 2 and 5 sample their first token (position = prompt_len - 1); slot 6 is later.
    logits, out = run_step(sampler, states, [2, 5, 6], {2: 10, 5: 4, 6: 4}, [9, 3, 6], vocab)
    assert banned(out) == [(0, 1), (0, 7), (0, vocab - 1)]
    untouched = torch.ones_like(out, dtype=torch.bool)
    untouched[0, [1, 7, vocab - 1]] = False
    assert torch.equal(out[untouched], logits[untouched])

    # Next step: slot 2 is past its first token, slot 6 (re)starts at its first position.
    _, out = run_step(sampler, states, [2, 6], {6: 12}, [10, 11], vocab)
    assert banned(out) == [(1, 3)]


def test_v2_recycled_slot_forgets_the_previous_ban(v2) -> None:
    from vllm import SamplingParams

    _, sampler, states, vocab = v2
    sampler.add_request(4, SamplingParams(extra_args={FIRST_TOKEN_BAN_ARG: [11, 12]}))
    _, out = run_step(sampler, states, [4], {4: 5}, [4], vocab)
    assert banned(out) == [(0, 11), (0, 12)]
    sampler.add_request(4, SamplingParams())  # a new request takes the slot
    _, out = run_step(sampler, states, [4], {4: 5}, [4], vocab)
    assert banned(out) == []
