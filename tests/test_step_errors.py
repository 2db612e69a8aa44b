"""Errors reach the user as one line: bad dtype, device, model, endpoint or hub push before any
model loads; a step that fails inside its worker (load or batch) after; a non-zero exit code."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap

import pytest

from magpie_dl.config.dpo import REPO_ROOT, ConfigError, build_parser, resolve
from magpie_dl.run.preflight import check_before_run
from recipe_cli import run_recipe_cli


def two_instructions(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_text('{"instruction": "How do I bake bread?"}\n{"instruction": "Explain SQL joins."}\n')
    return str(path)


def checked(*argv: str):
    """Resolve a smoke config and run the pre-run checks, as the command line does."""
    cfg = resolve(build_parser("test").parse_args(["--preset", "smoke", *argv]))
    check_before_run(cfg)
    return cfg


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["--reward.dtype", "float64x"], "--reward.dtype: unknown dtype 'float64x'"),
        (["--backend.dtype", "fp8"], "--backend.dtype: unknown dtype 'fp8'"),
        (["--reward.device", "gpu"], "--reward.device: unknown device 'gpu'"),
        # No machine of this kind has 65 GPUs; on a CPU machine: "has no CUDA device".
        (["--reward.device", "cuda:64"], "--reward.device cuda:64: this machine has"),
        (["--backend.device", "cuda:64"], "--backend.device cuda:64: this machine has"),
        (["--backend", "openai", "--base-url", "http://127.0.0.1:9"], "--base-url http://127.0.0.1:9: nothing answers"),
        (["--push-to-hub", "not a repo!"], "--output.push_to_hub: 'not a repo!' is not a hub dataset id"),
    ],
)
def test_bad_settings_are_one_line_before_any_model_loads(argv, needle, tiny_models):
    with pytest.raises(ConfigError) as err:
        checked(*argv)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_an_endpoint_message_never_shows_its_credentials(tiny_models):
    with pytest.raises(ConfigError) as err:
        checked("--backend", "openai", "--base-url", "http://user:s3cret-pw@127.0.0.1:9")
    assert "--base-url http://127.0.0.1:9: nothing answers" in str(err.value) and "s3cret-pw" not in str(err.value)


def test_device_cuda_on_a_machine_without_one(tiny_models):
    import torch

    if torch.cuda.device_count():
        pytest.skip("this machine has a CUDA device")
    with pytest.raises(ConfigError, match="--backend.device cuda: this machine has no CUDA device; use --backend.device cpu"):
        checked("--backend.device", "cuda")


def test_a_local_model_directory_needs_a_config(tmp_path, tiny_models):
    empty = tmp_path / "not-a-model"
    empty.mkdir()
    with pytest.raises(ConfigError, match="has no config.json"):
        checked("--reward.model", str(empty))
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"x")
    with pytest.raises(ConfigError, match="is a file"):
        checked("--generator.model", str(weights))


def test_hub_models_offline_must_be_in_the_local_cache(monkeypatch, tiny_models):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError, match="--reward.model no-such-org/no-such-model: not in the local Hugging Face cache "
                                          "and HF_HUB_OFFLINE is set"):
        checked("--reward.model", "no-such-org/no-such-model")


def test_hub_models_without_network_must_be_in_the_local_cache(monkeypatch, tiny_models):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    with pytest.raises(ConfigError, match=r"the hub \(http://127.0.0.1:9\) cannot be reached"):
        checked("--generator.model", "no-such-org/no-such-model")


def test_push_to_hub_needs_a_token_before_the_run(tmp_path, monkeypatch, tiny_models, failing_server):
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_TOKEN_PATH", str(tmp_path / "no-token"))  # no saved login either
    with pytest.raises(ConfigError, match="--push-to-hub needs a Hugging Face token"):
        checked("--push-to-hub", "org/name")
    monkeypatch.setenv("HF_TOKEN", "hf_secret_value_1234")
    monkeypatch.setenv("HF_ENDPOINT", failing_server)  # a hub that answers (the token is all that is checked here)
    checked("--push-to-hub", "org/name")


def test_cli_offline_hub_model_fails_fast_and_touches_nothing(tmp_path, tiny_models):
    out = tmp_path / "out"
    result = run_recipe_cli("--preset", "smoke", "--instructions", two_instructions(tmp_path), "--output-dir", str(out),
                            "--reward.model", "no-such-org/no-such-model", timeout=60,
                            env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")})
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --reward.model no-such-org/no-such-model: not in the local")
    assert not out.exists()


@pytest.mark.slow
def test_a_step_that_fails_to_load_is_one_line_and_a_failed_exit(tmp_path, tiny_models):
    # A model directory that passes every check (config.json is there) but whose weights
    # are broken: only loading it can tell.
    broken = tmp_path / "broken-reward"
    shutil.copytree(tiny_models["reward"], broken)
    (broken / "model.safetensors").write_bytes(b"\x00" * 64)
    out = tmp_path / "out"
    result = run_recipe_cli("--preset", "smoke", "--instructions", two_instructions(tmp_path), "--output-dir", str(out),
                            "--reward.model", str(broken), "--quiet", timeout=300,
                            env={"HF_TOKEN": "hf_secret_value_1234"})
    assert result.returncode == 5, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: step 'reward' failed to load: ") and "nothing was exported" in last
    for noise in ("Traceback", "pickle", "Failed to load all the steps", "EOFError", "hf_secret_value_1234"):
        assert noise not in result.stderr
    assert not (out / "dataset").exists()


FAILING_RUN = textwrap.dedent(
    """
    import logging, sys
    from distilabel.pipeline import Pipeline
    from distilabel.steps import LoadDataFromDicts, StepInput, step
    from magpie_dl.run.driver import run_pipeline
    from magpie_dl.run.step_errors import StepFailedError

    NOTICE = "endpoint http://127.0.0.1:1 stopped answering (a notice longer than any terminal line): set aside"

    @step(inputs=["instruction"], outputs=["answer"])
    def Answer(inputs: StepInput):
        logging.getLogger("magpie_dl.backends.openai").warning(NOTICE)  # a notice from a worker
        if any("boom" in row["instruction"] for row in inputs):
            raise ValueError("cannot answer " + sys.argv[2] + "\\nsecond line")
        for row in inputs:
            row["answer"] = "ok"
        yield inputs

    @step(inputs=["answer"], outputs=["length"])
    def Measure(inputs: StepInput):
        for row in inputs:
            row["length"] = len(row["answer"])  # a failed batch's answer is None: a knock-on failure
        yield inputs

    rows = [{"instruction": "fine"}] * 4 + [{"instruction": sys.argv[1]}] * 2
    with Pipeline(name="failing", cache_dir=sys.argv[3]) as pipeline:
        (LoadDataFromDicts(data=rows, batch_size=2) >> Answer(name="answer", input_batch_size=2)
         >> Measure(name="measure", input_batch_size=2))
    try:
        out = run_pipeline(pipeline)
        print("finished:", len(out))
    except StepFailedError as exc:
        print("error:", exc)
    logging.getLogger("magpie_dl.after").warning("a warning after the run")
    """
)


@pytest.mark.parametrize("instruction", ["boom", "fine"])
def test_a_batch_that_fails_inside_a_step_is_reported_and_logging_still_works(tmp_path, instruction):
    script = tmp_path / "failing_run.py"
    script.write_text(FAILING_RUN)
    cache = tmp_path / "distilabel-cache"
    result = subprocess.run(
        [sys.executable, str(script), instruction, "hf_secret_value_1234", str(cache)],
        capture_output=True, text=True, timeout=180, cwd=REPO_ROOT,
        env={**__import__("os").environ, "PYTHONPATH": str(REPO_ROOT), "HF_TOKEN": "hf_secret_value_1234"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    if instruction == "boom":
        assert result.stdout.strip().splitlines()[-1] == (
            "error: step 'answer' failed on 1 batch: ValueError: cannot answer ***; "
            "nothing was exported, stored results are kept: fix the cause and rerun"
        )
        assert "Traceback" not in result.stderr and "hf_secret_value_1234" not in result.stderr + result.stdout
        # The next step failing on the failed batch's missing answers is not shown as a second bug.
        assert "TypeError" not in result.stderr + result.stdout and "'measure'" not in result.stderr
    else:
        assert result.stdout.strip().splitlines()[-1] == "finished: 6"
    # A worker's notice is one line on stderr, not wrapped to 80 columns by distilabel's handler on stdout.
    notice = "WARNING: endpoint http://127.0.0.1:1 stopped answering (a notice longer than any terminal line): set aside"
    assert result.stderr.splitlines().count(notice) >= 1, result.stderr + result.stdout
    assert "stopped answering" not in result.stdout
    # The driver's logging works after the run (distilabel's log queue is closed by then).
    assert "Logging error" not in result.stderr
    assert "a warning after the run" in result.stderr
    # distilabel's per-run cache (batches, its copy of the output) is gone.
    assert not cache.exists()


def test_the_curation_recipe_gets_the_same_checks(monkeypatch, tiny_models):
    from magpie_dl.config import curation

    def curation_checked(*argv: str):
        check_before_run(curation.resolve(curation.build_parser("test").parse_args(["--preset", "smoke", *argv])))

    with pytest.raises(ConfigError, match="--dedup.device: unknown device 'gpu0'"):
        curation_checked("--dedup.device", "gpu0")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError, match="--tagging.judge_model no-such-org/judge: not in the local Hugging Face cache"):
        curation_checked("--tagging.judge_model", "no-such-org/judge")
    curation_checked()  # the smoke preset's own models are all local
