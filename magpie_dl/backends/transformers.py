"""Transformers backend: batched sampling with a per-completion seed.

``model.generate`` draws every row from one global RNG, so a row's tokens depend on
which batch it landed in, and a resumed run could not reproduce an uninterrupted one.
This backend runs its own decoding loop (KV cache, left padding) and samples each
completion from its own ``torch.Generator`` seeded like vLLM (``seed + index``).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from collections.abc import Callable
from typing import Any, ClassVar, TYPE_CHECKING

from distilabel.mixins.runtime_parameters import RuntimeParameter
from pydantic import Field, PrivateAttr

from magpie_dl.backends.base import CallStream, Completion, CompletionLLM, EachFinished, PromptInput, SamplingSpec

if TYPE_CHECKING:
    import torch


@dataclass
class _Job:
    """One completion to sample: which prompt, which child, its own generator."""

    prompt_index: int
    child: int
    token_ids: tuple[int, ...]
    spec: SamplingSpec
    generator: torch.Generator


class TransformersBackend(CompletionLLM):
    """Completes token-id prompts with a Hugging Face causal LM, in real batches.

    Attributes:
        model: path or hub id of the causal LM.
        device: torch device (``cpu``, ``cuda``, ``cuda:1``).
        dtype: ``auto``, ``float32``, ``bfloat16`` or ``float16``.
        batch_size: completions decoded together in one forward pass.
    """

    kind: ClassVar[str] = "transformers"

    device: str = Field(default="cpu", description="Torch device.")
    dtype: str = Field(default="auto", description="auto | float32 | bfloat16 | float16")
    batch_size: RuntimeParameter[int] = Field(
        default=64, description="Completions decoded together in one forward pass."
    )

    _model: Any = PrivateAttr(default=None)
    _cache_kwarg: str = PrivateAttr(default="past_key_values")

    def load(self) -> None:
        super().load()
        import torch
        from transformers import AutoModelForCausalLM

        dtype = "auto" if self.dtype == "auto" else getattr(torch, self.dtype)
        self._model = AutoModelForCausalLM.from_pretrained(
            self.model, dtype=dtype, trust_remote_code=self.trust_remote_code
        ).to(self.device)
        self._model.eval()
        # transformers 5 renamed the forward's KV-cache argument (`past_key_values` -> `cache`).
        params = inspect.signature(self._model.forward).parameters
        self._cache_kwarg = "cache" if "cache" in params else "past_key_values"

    def unload(self) -> None:
        self._model = None
        super().unload()

    def complete(self, prompts: list[PromptInput], sampling: list[SamplingSpec]) -> list[list[Completion]]:
        results: list[list[Completion]] = [[] for _ in prompts]

        def keep(i: int, completions: list[Completion]) -> None:
            results[i] = completions

        self.complete_each(prompts, sampling, keep)
        return results

    @property
    def decodes_live(self) -> bool:
        # A subclass that replaces complete() (a stand-in at the model boundary) decodes nothing here.
        return type(self).complete is _OWN_COMPLETE

    def open_stream(self) -> CallStream:
        """One call per submission, each prompt handed back as soon as its completions are done.

        A subclass that changes :meth:`complete` (a stand-in at the model boundary) has its
        calls go through it, all at the call's end: the stream's results stay ``complete``'s.
        """
        changed = type(self).complete is not _OWN_COMPLETE
        return CallStream(self, None if changed else self.complete_each)

    def complete_each(self, prompts: list[PromptInput], sampling: list[SamplingSpec], finished: EachFinished) -> None:
        """What :meth:`complete` returns, each prompt's completions given to ``finished`` (with
        the prompt's index) as soon as all of them are done: a long call shows its progress."""
        import torch

        if len(prompts) != len(sampling):
            raise ValueError(f"{len(prompts)} prompts but {len(sampling)} sampling specs")
        if any(spec.min_tokens or spec.ignore_eos for spec in sampling):
            raise ValueError("min_tokens / ignore_eos (fixed-length benchmark sampling) need a vLLM backend")
        jobs = [
            _Job(i, child, prompt.token_ids, spec, _generator(spec.seed, child))
            for i, (prompt, spec) in enumerate(zip(prompts, sampling))
            for child in range(spec.n)
        ]
        # Similar lengths together keep padding (wasted compute) small.
        jobs.sort(key=lambda job: len(job.token_ids))
        results: list[list[Completion | None]] = [[None] * spec.n for spec in sampling]
        left = [spec.n for spec in sampling]

        def done(job: _Job, completion: Completion) -> None:
            results[job.prompt_index][job.child] = completion
            left[job.prompt_index] -= 1
            if not left[job.prompt_index]:
                finished(job.prompt_index, results[job.prompt_index])  # type: ignore[arg-type]

        size = max(1, int(self.batch_size))
        with torch.inference_mode():
            for start in range(0, len(jobs), size):
                self._sample(jobs[start : start + size], done)

    def _sample(self, jobs: list[_Job], done: Callable[[_Job, Completion], None]) -> None:
        """Decode ``jobs`` together; each finished job's completion goes to ``done`` at once."""
        import torch

        model, tokenizer = self._model, self.tokenizer
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        width = max(len(job.token_ids) for job in jobs)
        batch = len(jobs)
        ids = torch.full((batch, width), pad_id, dtype=torch.long)
        mask = torch.zeros((batch, width), dtype=torch.long)
        for row, job in enumerate(jobs):  # left padding: the next token is always at the end
            ids[row, width - len(job.token_ids) :] = torch.tensor(job.token_ids)
            mask[row, width - len(job.token_ids) :] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)

        temperature = torch.tensor([job.spec.temperature for job in jobs], dtype=torch.float32)
        top_p = torch.tensor([job.spec.top_p for job in jobs], dtype=torch.float32)
        penalties = torch.tensor([job.spec.repetition_penalty for job in jobs], dtype=torch.float32)
        penalise = bool((penalties != 1.0).any())
        seen: torch.Tensor | None = None  # (row, token): in the prompt or generated so far
        stop_ids = [set(job.spec.stop_token_ids) for job in jobs]
        generated: list[list[int]] = [[] for _ in jobs]
        finish: list[str | None] = [None] * batch
        texts: list[str | None] = [None] * batch
        max_steps = max(job.spec.max_tokens for job in jobs)

        # Rows still sampling: finished rows leave the batch (and the KV cache) at once, so a
        # batch with long-tailed lengths does not keep computing its finished rows.
        alive = list(range(batch))
        cache = None
        step_ids, step_positions = ids, positions
        for step in range(max_steps):
            out = model(
                input_ids=step_ids,
                attention_mask=mask,
                position_ids=step_positions,
                use_cache=True,
                logits_to_keep=1,
                **{self._cache_kwarg: cache},
            )
            cache = getattr(out, self._cache_kwarg)  # the output field has the same name
            logits = out.logits[:, -1, :].float().cpu()
            if penalise:
                if seen is None:
                    seen = torch.zeros((batch, logits.shape[-1]), dtype=torch.bool)
                    for row, job in enumerate(jobs):
                        seen[row, list(job.token_ids)] = True
                logits = apply_repetition_penalty(logits, seen[alive], penalties[alive])
            if step == 0:
                for pos, row in enumerate(alive):
                    if jobs[row].spec.first_token_ban_ids:
                        logits[pos, list(jobs[row].spec.first_token_ban_ids)] = float("-inf")
            next_ids = _sample_rows(
                logits, temperature[alive], top_p[alive], [jobs[row].generator for row in alive]
            )
            self.decoded(len(alive))
            if seen is not None:
                seen[alive, next_ids] = True
            keep: list[int] = []
            for pos, row in enumerate(alive):
                token = int(next_ids[pos])
                generated[row].append(token)
                if token in stop_ids[row]:
                    finish[row] = "stop"
                elif jobs[row].spec.stop and (cut := _stop_string_cut(tokenizer, generated[row], jobs[row].spec.stop)):
                    finish[row], texts[row] = "stop", cut
                elif len(generated[row]) >= jobs[row].spec.max_tokens:
                    finish[row] = "length"
                else:
                    keep.append(pos)
                    continue
                done(jobs[row], self._completion(generated[row], finish[row], texts[row], stop_ids[row]))
            if not keep:
                break
            if len(keep) < len(alive):
                index = torch.tensor(keep, device=mask.device)
                cache.batch_select_indices(index)
                mask, step_positions, next_ids = mask[index], step_positions[index], next_ids[keep]
                alive = [alive[pos] for pos in keep]
            step_ids = next_ids.view(-1, 1).to(self.device)
            step_positions = step_positions[:, -1:] + 1
            mask = torch.cat([mask, torch.ones((len(alive), 1), dtype=mask.dtype, device=mask.device)], dim=1)

    def _completion(self, generated: list[int], finish: str, text: str | None, stop_ids: set[int]) -> Completion:
        """A finished job's completion; ``text`` when a stop string already cut it."""
        if text is None:
            body = generated
            if finish == "stop" and body and body[-1] in stop_ids:
                body = body[:-1]  # the stop token is in token_ids, not in the text (vLLM's way)
            text = self.tokenizer.decode(body, skip_special_tokens=True)
        return Completion(text=text, token_ids=generated, finish_reason=finish)  # type: ignore[arg-type]


# This class's own `complete`, taken before anything can rebind the module's name to a subclass.
_OWN_COMPLETE = TransformersBackend.complete


def _generator(seed: int | None, child: int) -> torch.Generator:
    import torch

    generator = torch.Generator()
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed + child)
    return generator


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: torch.Tensor) -> torch.Tensor:
    """vLLM's repetition penalty: a seen token's logit is divided by the row's penalty when
    positive and multiplied by it otherwise, so a penalty above 1 always makes it less likely."""
    import torch

    factor = penalty.unsqueeze(1)
    penalised = torch.where(logits > 0, logits / factor, logits * factor)
    return torch.where(seen, penalised, logits)


def _sample_rows(
    logits: torch.Tensor, temperature: torch.Tensor, top_p: torch.Tensor, generators: list[torch.Generator]
) -> torch.Tensor:
    """One token per row: greedy at temperature 0, else nucleus sampling with the row's generator.

    Inverse-CDF sampling: one uniform draw per row from its own generator, located in the
    row's cumulative distribution for the whole batch at once (a per-row ``multinomial`` over a
    large vocabulary cost most of a decoding step). The vocabulary is sorted only when some
    row keeps less than the whole distribution (``top_p < 1``).
    """
    import torch

    greedy = logits.argmax(dim=-1)
    probs = torch.softmax(logits / temperature.clamp(min=1e-6).unsqueeze(1), dim=-1)
    order = None
    if bool((top_p < 1).any()):
        probs, order = _sorted_nucleus_candidates(probs, top_p)
        # Keep the smallest prefix whose mass reaches top_p (always at least one token).
        outside = (probs.cumsum(dim=-1) - probs) >= top_p.unsqueeze(1)
        probs = probs.masked_fill(outside, 0.0)
    cdf = probs.cumsum(dim=-1)
    draws = torch.cat([torch.rand(1, generator=generator) for generator in generators])
    picks = torch.searchsorted(cdf, (draws * cdf[:, -1]).unsqueeze(1), right=True).squeeze(1)
    picks = picks.clamp(max=probs.shape[-1] - 1)
    if order is not None:
        picks = order.gather(1, picks.unsqueeze(1)).squeeze(1)
    return torch.where(temperature == 0, greedy, picks)


# Tokens sorted per row for nucleus sampling, when they hold the row's top_p mass.
NUCLEUS_CANDIDATES = 1024


def _sorted_nucleus_candidates(probs: torch.Tensor, top_p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The rows' probabilities sorted in descending order, and the token of each position.

    Only as far as the nucleus can reach: sorting the whole vocabulary every step cost half of
    a SmolLM2 decoding step at 49K tokens (BENCHMARKS.md). The nucleus lies within the
    ``NUCLEUS_CANDIDATES`` most likely tokens whenever those hold ``top_p`` of the mass, and
    the positions it keeps are the same as with the full sort; otherwise (a flat
    distribution, a row with ``top_p`` 1) the whole vocabulary is sorted.
    """
    if probs.shape[-1] > NUCLEUS_CANDIDATES:
        top, order = probs.topk(NUCLEUS_CANDIDATES, dim=-1, sorted=True)
        # A small margin: the full sort's running sums may round differently.
        if bool((top.sum(dim=-1) >= top_p + 1e-4).all()):
            return top, order
    return probs.sort(dim=-1, descending=True)


def _stop_string_cut(tokenizer: Any, token_ids: list[int], stops: tuple[str, ...]) -> str | None:
    """The text before the first stop string, or None if no stop string occurred yet."""
    text = tokenizer.decode(token_ids, skip_special_tokens=True)
    cuts = [text.index(stop) for stop in stops if stop in text]
    return text[: min(cuts)] if cuts else None
