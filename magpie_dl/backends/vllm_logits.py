"""Engine-level first-token ban for vLLM (engine side; imports vLLM).

vLLM removed per-request logits processors: custom processors are classes the engine
instantiates once and feeds every request, and a request opts in through
``SamplingParams.extra_args`` (``vllm_xargs`` on the server). The argument format lives
in :mod:`magpie_dl.backends.first_token_ban`.

vLLM has two processor interfaces and each model runner rejects the other's classes:

* ``FirstTokenBanV1`` — ``vllm.v1.sample.logits_processor`` (CPU builds, and GPU builds
  run with ``VLLM_USE_V2_MODEL_RUNNER=0``). State is keyed by persistent-batch row and
  follows the engine's add / remove / move notifications.
* ``FirstTokenBanV2`` — ``vllm.v1.worker.gpu.sample.logits_processor`` (GPU builds' default
  V2 model runner). State is keyed by request slot; ``apply`` sees a per-step context
  with each logits row's slot and position.

Each class is defined only when its interface can be imported (feature detection), so
this module loads on any vLLM that has at least one of them. Pass a class by
``module:Class`` name (:func:`~magpie_dl.backends.first_token_ban.first_token_ban_fqcn`)
so the engine's worker processes import it themselves.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from magpie_dl.backends.first_token_ban import MAX_FIRST_TOKEN_BAN_IDS, parse_first_token_ban

if TYPE_CHECKING:
    from vllm.config import VllmConfig
    from vllm.sampling_params import SamplingParams

try:
    from vllm.v1.sample.logits_processor import BatchUpdate, MoveDirectionality
    from vllm.v1.sample.logits_processor import LogitsProcessor as _V1LogitsProcessor
except ImportError:  # a vLLM without the V1 interface
    _V1LogitsProcessor = None  # type: ignore[assignment,misc]

try:
    from vllm.v1.worker.gpu.sample.logits_processor import LogitsContext, LogitsProcRequestState
    from vllm.v1.worker.gpu.sample.logits_processor import LogitsProcessor as _V2LogitsProcessor
except ImportError:  # a vLLM without the V2 model runner's interface (0.32 CPU has it)
    _V2LogitsProcessor = None  # type: ignore[assignment,misc]

HAS_V1_INTERFACE = _V1LogitsProcessor is not None
HAS_V2_INTERFACE = _V2LogitsProcessor is not None


def _ban_ids(params: SamplingParams, vocab_size: int) -> list[int]:
    """The request's banned ids inside the vocabulary.

    Ids beyond the logits width are dropped rather than indexed: the client validates
    against its tokenizer, and one bad request must never crash the engine.
    """
    return [i for i in parse_first_token_ban(params.extra_args) if i < vocab_size]


if _V1LogitsProcessor is not None:

    class FirstTokenBanV1(_V1LogitsProcessor):
        """Sets banned logits to -inf while a request has generated no token yet (V1)."""

        def __init__(self, vllm_config: VllmConfig, device: torch.device, is_pin_memory: bool):
            self._device = device
            self._vocab_size = vllm_config.model_config.get_vocab_size()
            # batch row -> (banned ids, the request's live output-token list). vLLM hands us
            # a reference to the running list, so its length tells us the position.
            self._rows: dict[int, tuple[list[int], list[int]]] = {}
            self._index: tuple[torch.Tensor, torch.Tensor] | None = None

        @classmethod
        def validate_params(cls, sampling_params: SamplingParams) -> None:
            parse_first_token_ban(sampling_params.extra_args)

        def is_argmax_invariant(self) -> bool:
            # Banning the argmax changes greedy decoding too.
            return False

        def update_state(self, batch_update: BatchUpdate | None) -> None:
            changed = False
            if batch_update is not None:
                # The interface's order: removed, then added, then moved.
                for row in batch_update.removed:
                    changed |= self._rows.pop(row, None) is not None
                for row, params, _prompt_ids, output_ids in batch_update.added:
                    ids = _ban_ids(params, self._vocab_size)
                    # A request resumed after preemption already has output: past position 0.
                    if ids and not output_ids:
                        self._rows[row] = (ids, output_ids)
                        changed = True
                    else:
                        changed |= self._rows.pop(row, None) is not None
                for a, b, direction in batch_update.moved:
                    entry_a = self._rows.pop(a, None)
                    entry_b = self._rows.pop(b, None)
                    if entry_a is not None:
                        self._rows[b] = entry_a
                    if entry_b is not None and direction == MoveDirectionality.SWAP:
                        self._rows[a] = entry_b
                    changed |= entry_a is not None or entry_b is not None
            # Requests that sampled their first token leave the table: the ban is over.
            done = [row for row, (_, output_ids) in self._rows.items() if output_ids]
            for row in done:
                del self._rows[row]
            if changed or done:
                self._index = None

        def apply(self, logits: torch.Tensor) -> torch.Tensor:
            if not self._rows:
                return logits
            if self._index is None:
                rows = [row for row, (ids, _) in self._rows.items() for _ in ids]
                cols = [i for ids, _ in self._rows.values() for i in ids]
                self._index = (
                    torch.tensor(rows, dtype=torch.long).to(self._device, non_blocking=True),
                    torch.tensor(cols, dtype=torch.long).to(self._device, non_blocking=True),
                )
            logits[self._index] = float("-inf")
            return logits


if _V2LogitsProcessor is not None:

    class FirstTokenBanV2(_V2LogitsProcessor):
        """Sets banned logits to -inf on the row that samples a request's first token (V2).

        Per-slot tables live on the device so ``apply`` needs no host sync: a row samples
        the first output token when its input position is the last prompt position.
        """

        def __init__(self, vllm_config: VllmConfig, req_states: LogitsProcRequestState):
            import numpy as np

            self._req_states = req_states
            n = req_states.max_num_reqs
            self._ban_np = np.zeros((n, MAX_FIRST_TOKEN_BAN_IDS), dtype=np.int64)
            self._has_ban_np = np.zeros(n, dtype=bool)
            self._ban = torch.zeros((n, MAX_FIRST_TOKEN_BAN_IDS), dtype=torch.long, device=req_states.device)
            self._has_ban = torch.zeros(n, dtype=torch.bool, device=req_states.device)
            self._dirty = False

        @classmethod
        def validate_params(cls, sampling_params: SamplingParams) -> None:
            parse_first_token_ban(sampling_params.extra_args)

        def add_request(self, req_idx: int, sampling_params: SamplingParams) -> bool:
            ids = _ban_ids(sampling_params, self._req_states.vocab_size)
            # Slots are recycled: overwrite the previous occupant's state in full.
            self._has_ban_np[req_idx] = bool(ids)
            if ids:
                # Pad by repeating a banned id: scatter then writes -inf to it several
                # times, never a stale value over a banned one.
                self._ban_np[req_idx] = ids + [ids[0]] * (MAX_FIRST_TOKEN_BAN_IDS - len(ids))
            self._dirty = True
            return bool(ids)

        def apply_staged_writes(self) -> None:
            if self._dirty:
                self._ban.copy_(torch.from_numpy(self._ban_np), non_blocking=True)
                self._has_ban.copy_(torch.from_numpy(self._has_ban_np), non_blocking=True)
                self._dirty = False

        def apply(self, logits: torch.Tensor, ctx: LogitsContext) -> torch.Tensor:
            # Host-side early exit: no active request asked for a ban.
            if not self._has_ban_np[ctx.idx_mapping_np].any():
                return logits
            slots = ctx.expanded_idx_mapping.long()
            prompt_len = self._req_states.prompt_len.gpu[slots]
            # Input position prompt_len - 1 means this row samples output token 0; rows of
            # resumed requests, later steps and draft tokens sit further along.
            first = (ctx.pos + 1 == prompt_len) & self._has_ban[slots]
            ban = self._ban[slots]
            current = logits.gather(1, ban)
            masked = torch.where(first.unsqueeze(1), torch.full_like(current, float("-inf")), current)
            logits.scatter_(1, ban, masked)
            return logits

