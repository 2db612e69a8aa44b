"""The tiny-model build: deterministic where torch allows, and it says what it built."""

from __future__ import annotations

import json

import torch

from magpie_dl.local import tiny


def test_build_prints_and_keeps_a_fingerprint_of_each_model(tmp_path, capsys):
    threads = torch.get_num_threads()
    tiny.build(tmp_path / "a", steps=3)
    printed = capsys.readouterr().out
    tiny.build(tmp_path / "b", steps=3)
    manifests = [json.loads((tmp_path / run / "manifest.json").read_text()) for run in ("a", "b")]
    fingerprints = manifests[0]["fingerprints"]
    assert set(fingerprints) == {"generator", "reward"} and fingerprints["generator"] != fingerprints["reward"]
    for name, value in fingerprints.items():
        assert f"tiny {name} weights sha256 {value}" in printed
    # Same seed, same machine: the same weights.
    assert manifests[1]["fingerprints"] == fingerprints
    assert manifests[0]["version"] == tiny.BUILD_VERSION and tiny.is_current(tmp_path / "a")
    # The build's one thread and deterministic algorithms do not leak into the caller.
    assert torch.get_num_threads() == threads and not torch.are_deterministic_algorithms_enabled()


def test_fingerprint_covers_every_weight(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=2))
    before = tiny.fingerprint(model)
    assert tiny.fingerprint(model) == before
    with torch.no_grad():
        model.model.layers[0].mlp.down_proj.weight[0, 0] += 1e-6  # one float, last bits
    assert tiny.fingerprint(model) != before
