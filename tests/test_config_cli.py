"""Config and command line: every knob documented, bad input rejected before any model loads."""

from __future__ import annotations

import pytest

from recipe_cli import run_recipe_cli
from magpie_dl.config.dpo import ConfigError, RecipeConfig, _fields, build_parser, resolve


def parse(*argv: str) -> RecipeConfig:
    return resolve(build_parser("test").parse_args(list(argv)))


def test_default_is_the_real_recipe():
    cfg = parse()
    assert cfg.generator.model == "meta-llama/Llama-3.1-70B-Instruct"
    assert cfg.response_model == "meta-llama/Llama-3.1-70B-Instruct"
    assert cfg.reward.model == "RLHFlow/ArmoRM-Llama3-8B-v0.1"
    assert cfg.generator.num_instructions == 100_000
    assert (cfg.responses.num_generations, cfg.responses.temperature, cfg.responses.top_p,
            cfg.responses.max_tokens) == (5, 0.8, 1.0, 4096)
    assert cfg.backend.kind == "vllm" and cfg.output.test_fraction == 0.02


def test_flags_override_yaml_which_overrides_the_preset(tmp_path, tiny_models):
    path = tmp_path / "c.yaml"
    path.write_text("responses:\n  temperature: 0.5\n  max_tokens: 12\nseed: 7\n")
    cfg = parse("--preset", "smoke", "--config", str(path), "--responses.max_tokens", "20")
    assert (cfg.responses.temperature, cfg.responses.max_tokens, cfg.seed) == (0.5, 20, 7)
    assert cfg.backend.kind == "transformers"


def test_help_explains_every_knob():
    text = build_parser("test").format_help()
    for path, info in _fields(RecipeConfig):
        assert f"--{path}" in text, path
        assert info.description, f"{path} has no description"


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["--responses.temperature", "3"], "--responses.temperature"),
        (["--responses.num_generations", "1"], "--responses.num_generations"),
        (["--family", "llama-9"], "unknown family"),
        (["--generator.model", "./no/such/model"], "does not exist"),
        (["--backend", "openai"], "--base-url"),
        (["--generator.control_task", "poetry"], "unknown control task"),
        (["--responses.top_p", "0"], "--responses.top_p"),
        (["--unknown.knob", "1"], None),
    ],
)
def test_bad_values_are_one_clear_line(argv, needle, tiny_models):
    if needle is None:
        with pytest.raises(SystemExit):
            parse(*argv)
        return
    with pytest.raises(ConfigError) as err:
        parse("--preset", "smoke", *argv)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_bad_yaml_files(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("responses: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML at line"):
        parse("--config", str(bad))
    with pytest.raises(ConfigError, match="does not exist"):
        parse("--config", str(tmp_path / "missing.yaml"))
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("42\n")
    with pytest.raises(ConfigError, match="mapping"):
        parse("--config", str(scalar))
    typo = tmp_path / "typo.yaml"
    typo.write_text("responses:\n  temprature: 0.5\n")
    with pytest.raises(ConfigError, match="temprature"):
        parse("--config", str(typo))


def test_cli_rejects_bad_input_before_loading_anything(tmp_path, tiny_models):
    out = tmp_path / "never"
    result = run_recipe_cli("--preset", "smoke", "--output-dir", str(out), "--responses.num_generations", "1")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: --responses.num_generations: Input should be greater than or equal to 2"
    ]
    assert not out.exists()  # nothing was started


def test_print_config_shows_the_resolved_config(tiny_models):
    result = run_recipe_cli("--preset", "smoke", "--print-config", "--seed", "5")
    assert result.returncode == 0 and "seed: 5" in result.stdout and "num_generations: 5" in result.stdout
