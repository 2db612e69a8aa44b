"""The command line as its users expect: argparse conventions, one-line errors with a hint,
YAML errors naming file and key, each recipe's own settings, checks of the hub and Argilla
before any model loads. In-process parsers wherever a subprocess is not the point."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from magpie_dl.config import curation
from magpie_dl.config.dpo import REPO_ROOT, ConfigError, build_parser, resolve

CURATION = REPO_ROOT / "pipelines" / "magpie_instructions.py"


def dpo(*argv: str):
    return resolve(build_parser("test").parse_args(list(argv)))


def cur(*argv: str):
    return curation.resolve(curation.build_parser("test").parse_args(list(argv)))


def flat_help(parser) -> str:
    return " ".join(parser.format_help().split())


def parse_error(parser, argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as exit_:
        parser.parse_args(argv)
    assert exit_.value.code == 2
    return capsys.readouterr().err


# ------------------------------------------------------------------ booleans, choices, abbreviations


@pytest.mark.parametrize("argv,value", [
    ([], True),
    (["--generator.ban_first_token_markdown"], True),
    (["--generator.ban_first_token_markdown", "false"], False),
    (["--generator.ban_first_token_markdown", "False"], False),
    (["--generator.ban_first_token_markdown", "true"], True),
    (["--no-generator.ban_first_token_markdown"], False),
])
def test_boolean_settings_take_both_ways(argv, value):
    assert dpo(*argv).generator.ban_first_token_markdown is value


def test_boolean_aliases_take_both_ways():
    assert dpo("--trust-remote-code").reward.trust_remote_code is True
    assert dpo("--trust-remote-code", "true", "--no-trust-remote-code").reward.trust_remote_code is False


def test_a_boolean_setting_refuses_other_words_in_one_line(capsys):
    err = parse_error(build_parser("test"), ["--generator.ban_first_token_markdown", "maybe"], capsys)
    assert len(err.strip().splitlines()) == 1 and "expected true or false, got 'maybe'" in err


def test_help_shows_both_ways_of_a_boolean_and_the_choices():
    text = flat_help(build_parser("test"))
    assert "--generator.ban_first_token_markdown [true|false], --no-generator.ban_first_token_markdown" in text
    assert "--responses.prompt_style {chat_template,magpie}" in text
    assert "--backend.kind {transformers,vllm,openai,standin}, --backend {transformers,vllm,openai,standin}" in text
    assert "--reward.dtype {auto,float32,bfloat16,float16}" in text
    assert "--generator.control_task {math,code,translation}" in text


def test_a_choice_outside_the_list_is_refused_by_the_parser(capsys):
    err = parse_error(build_parser("test"), ["--responses.prompt_style", "raw"], capsys)
    assert "invalid choice: 'raw'" in err and len(err.strip().splitlines()) == 1


def test_an_unknown_pairing_policy_is_refused_in_one_line_before_any_model(tmp_path, capsys, tiny_models):
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_:
        _main(["--preset", "smoke", "--output-dir", str(out), "--pairing.rejected", "median"])
    assert exit_.value.code == 2 and not out.exists()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--pairing.rejected: invalid choice: 'median' (choose from 'min', 'mean_minus_2sd')" in err[0]
    path = tmp_path / "run.yaml"
    path.write_text("pairing:\n  rejected: median\n")
    assert _main(["--preset", "smoke", "--output-dir", str(out), "--config", str(path)]) == 2 and not out.exists()
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: config file {path}: pairing.rejected: Input should be 'min' or 'mean_minus_2sd'"
    ]
    assert dpo("--pairing.rejected", "mean_minus_2sd").pairing.rejected == "mean_minus_2sd"
    assert dpo().pairing.rejected == "min"


def test_abbreviations_are_refused_with_the_flag_meant(capsys):
    err = parse_error(build_parser("test"), ["--num-instruction", "4"], capsys)
    assert err.strip().splitlines()[0].endswith(
        "error: unrecognized arguments: --num-instruction 4; did you mean --num-instructions? "
        "(--help lists every setting)"
    ) and len(err.strip().splitlines()) == 1


def test_a_parse_error_is_one_line_not_the_usage(capsys):
    err = parse_error(build_parser("test"), ["--responses.temprature", "0.5"], capsys)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "usage:" not in err
    assert "did you mean --responses.temperature?" in lines[0] and "--help" in lines[0]


# ------------------------------------------------------------------ each recipe's own settings


def test_the_dpo_help_lists_only_the_dpo_recipes_settings(capsys):
    parser = build_parser("test")
    assert "tagging_replicas" not in parser.format_help()
    assert "--scaleout.generation_replicas" in parser.format_help()
    parse_error(parser, ["--scaleout.tagging_replicas", "2"], capsys)
    assert "--scaleout.tagging_replicas" in curation.build_parser("test").format_help()


def test_the_curation_recipe_takes_the_dpo_recipes_short_flags():
    cfg = cur("--backend", "transformers", "--num-instructions", "7", "--family", "llama-3")
    assert (cfg.backend.kind, cfg.generator.num_instructions, cfg.generator.family) == ("transformers", 7, "llama-3")


# ------------------------------------------------------------------ YAML files


def test_a_yaml_typo_names_the_file_the_key_and_the_setting_meant(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("responses:\n  temprature: 0.5\n")
    with pytest.raises(ConfigError) as err:
        dpo("--config", str(path))
    assert str(err.value) == (f"config file {path}: responses.temprature is not a setting of this recipe; "
                              "did you mean responses.temperature?")


def test_a_yaml_section_typo_and_another_recipes_setting_are_named(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("respones:\n  temperature: 0.5\n")
    with pytest.raises(ConfigError, match=r"respones is not a setting of this recipe; did you mean responses\?"):
        dpo("--config", str(path))
    path.write_text("scaleout:\n  tagging_replicas: 2\n")
    with pytest.raises(ConfigError, match=f"config file {path}: scaleout.tagging_replicas is not a setting"):
        dpo("--config", str(path))


def test_a_bad_yaml_value_names_the_file_and_the_key(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("responses:\n  temperature: 7\n")
    with pytest.raises(ConfigError) as err:
        dpo("--config", str(path))
    assert str(err.value).startswith(f"config file {path}: responses.temperature: ")
    # A flag that overrides the file is the flag's problem.
    with pytest.raises(ConfigError, match=r"^--responses\.temperature: "):
        dpo("--config", str(path), "--responses.temperature", "9")


# ------------------------------------------------------------------ hints and other commands


def test_the_curation_hint_runs_the_dpo_recipe_on_the_same_preset(tiny_models):
    dataset = Path("out/x/dataset")
    assert cur("--preset", "smoke").dpo_command(dataset) == f"python pipelines/dpo_100k.py --preset smoke --instructions {dataset}"
    assert cur().dpo_command(dataset) == f"python pipelines/dpo_100k.py --instructions {dataset}"


def test_the_review_command_names_its_console_script():
    from magpie_dl.review.cli import _parser

    assert _parser().format_usage().startswith("usage: magpie-dl-review ")


def test_the_families_command_fails_fast_without_a_hub(monkeypatch, capsys):
    from magpie_dl.templates.families import main

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    assert main(["no-such-org/no-such-model"]) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [
        "error: cannot load a tokenizer from no-such-org/no-such-model: not in the local Hugging Face cache and "
        "the hub (http://127.0.0.1:9) cannot be reached; download it first or give a model directory"
    ]


def test_compare_runs_ends_in_one_line(tmp_path):
    base, new = tmp_path / "base", tmp_path / "new"
    for folder, count in ((base, 3), (new, 4)):
        folder.mkdir()
        (folder / "summary.json").write_text(f'{{"pairs": {count}}}')
    script = [sys.executable, str(REPO_ROOT / "scripts" / "compare_runs.py")]
    result = subprocess.run([*script, str(base), str(new)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and result.stderr.strip().splitlines() == ["DIFFERENT: summary.json.pairs: 3 != 4"]
    same = subprocess.run([*script, str(base), str(base)], capture_output=True, text=True, timeout=120)
    assert same.returncode == 0 and same.stdout.strip() == "IDENTICAL: summary.json"


# ------------------------------------------------------------------ the hub and Argilla before any model


def _main(argv: list[str]) -> int:
    from magpie_dl.pipelines.dpo_100k import build_pipeline
    from magpie_dl.run.driver import main_for
    from magpie_dl.run.recipes import DPO_100K

    return main_for(DPO_100K, build_pipeline, "test", argv)


def test_push_to_hub_needs_a_reachable_hub_before_any_model(tmp_path, monkeypatch, capsys, tiny_models):
    monkeypatch.setenv("HF_TOKEN", "hf_SECRET_never_shown_123")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    out = tmp_path / "out"
    assert _main(["--preset", "smoke", "--output-dir", str(out), "--push-to-hub", "org/name"]) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [
        "error: --push-to-hub: the hub (http://127.0.0.1:9) cannot be reached; check the network or HF_ENDPOINT, "
        "or drop --push-to-hub"
    ]
    assert not out.exists()


def test_argilla_dataset_needs_a_reachable_server_before_any_model(tmp_path, monkeypatch, capsys, tiny_models):
    monkeypatch.setenv("ARGILLA_API_URL", "http://user:pw@127.0.0.1:9")
    monkeypatch.setenv("ARGILLA_API_KEY", "argilla.SECRET")
    out = tmp_path / "out"
    assert _main(["--preset", "smoke", "--output-dir", str(out), "--argilla-dataset", "review"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "pw" not in err and "SECRET" not in err
    assert "--argilla-dataset: the Argilla server at http://127.0.0.1:9 (ARGILLA_API_URL) cannot be reached" in err
    assert not out.exists()


def test_every_exit_code_is_in_the_readme():
    text = (REPO_ROOT / "README.md").read_text()
    section = text[text.index("## Exit codes"):]
    section = section[:section.index("\n## ", 1)]
    for code in ("0", "1", "2", "3", "4", "5", "6", "7", "128 + N"):
        assert f"| {code} |" in section, code
