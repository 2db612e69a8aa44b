"""The demo recipe on a real aligned model (SmolLM2-135M-Instruct) through real vLLM CPU engines:
what only a real model shows, on the production backend. Shares have floors well under what the
model does; nothing depends on which text it samples on this CPU."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_pipeline_e2e import run_smoke

from magpie_dl.local import smollm2
from magpie_dl.config.dpo import SMOLLM2_DIR

pytestmark = pytest.mark.vllm


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    assert smollm2.is_current(SMOLLM2_DIR), "run `make models` first (converts SmolLM2 into models/smollm2)"
    out = tmp_path_factory.mktemp("demo-vllm") / "out"
    code, output, leftovers = run_smoke(
        out, "--preset", "demo", "--backend", "vllm", "--num-instructions", "16",
        "--responses.num_generations", "3", "--responses.max_tokens", "512",
    )
    assert code == 0, output
    assert leftovers == [], output
    return out


def test_real_model_queries_and_responses_on_vllm(demo_run: Path) -> None:
    from datasets import load_from_disk

    summary = json.loads((demo_run / "summary.json").read_text())
    usable = summary["usable_instructions"] / summary["instructions"]
    print(f"usable queries: {summary['usable_instructions']}/{summary['instructions']}")
    assert usable >= 0.5, summary
    rows = [r for name in ("dataset", "left_out") for split in _splits(load_from_disk(str(demo_run / name)))
            for r in split]
    reasons = [reason for r in rows for reason in (r["finish_reasons"] or [])]
    print(f"responses that ended their turn: {reasons.count('stop')}/{len(reasons)}")
    assert reasons and reasons.count("stop") / len(reasons) >= 0.5, reasons
    for r in rows:
        cfg = r["gen_input_configs"]
        assert cfg["input_generator"] == smollm2.MODEL_ID
        assert cfg["pre_query_template"].endswith("<|im_end|>\n<|im_start|>user\n")
        if r["finish_reasons"]:
            assert r["gen_response_configs"]["engine"] == "vllm"
            assert r["gen_response_configs"]["prompt"].endswith("<|im_end|>\n<|im_start|>assistant\n")


def _splits(dataset):
    return dataset.values() if hasattr(dataset, "values") else [dataset]
