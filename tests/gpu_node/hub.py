"""The real recipe's models as the simulated node sees them: a Hugging Face cache holding,
under the recipe's hub ids, the tiny models' tokenizers and the real models' ``config.json``
(their layer sizes: what the placement plan's weights check reads). No weights: the
engine and scorer stand-ins load none."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

LLAMA_70B = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 8192,
             "intermediate_size": 28672, "num_hidden_layers": 80, "num_attention_heads": 64,
             "num_key_value_heads": 8, "vocab_size": 128256, "torch_dtype": "bfloat16",
             "tie_word_embeddings": False, "max_position_embeddings": 131072}
LLAMA_8B = {**LLAMA_70B, "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
            "num_attention_heads": 32}
ARMORM_8B = {"architectures": ["LlamaForRewardModelWithGating"], "model_type": "llama", "hidden_size": 4096,
             "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
             "num_key_value_heads": 8, "vocab_size": 128256, "torch_dtype": "bfloat16",
             "tie_word_embeddings": False, "num_objectives": 19}


def snapshot(hub: Path, repo_id: str, tokenizer_dir: Path, config: dict) -> Path:
    """``repo_id`` in the cache at ``hub`` (HF_HUB_CACHE): ``tokenizer_dir``'s tokenizer, ``config``."""
    repo = hub / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text("simulated")
    snap = repo / "snapshots" / "simulated"
    snap.mkdir(parents=True, exist_ok=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json"):
        if (tokenizer_dir / name).is_file():
            shutil.copy(tokenizer_dir / name, snap / name)
    (snap / "config.json").write_text(json.dumps(config))
    return snap


def recipe_hub(hub: Path, tiny: dict[str, str]) -> Path:
    """The full recipe's two hub models, as above, and an 8B chat model for small nodes."""
    snapshot(hub, "meta-llama/Llama-3.1-70B-Instruct", Path(tiny["generator"]), LLAMA_70B)
    snapshot(hub, "meta-llama/Llama-3.1-8B-Instruct", Path(tiny["generator"]), LLAMA_8B)
    snapshot(hub, "RLHFlow/ArmoRM-Llama3-8B-v0.1", Path(tiny["reward"]), ARMORM_8B)
    return hub
