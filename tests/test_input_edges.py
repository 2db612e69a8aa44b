"""Small input edges: duplicate YAML keys, one `--output-dir` spelling, BOMs, empty CSVs, given
uuids, `--quiet`, and no run batches left in distilabel's shared cache."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from magpie_dl.config import curation
from magpie_dl.config.dpo import REPO_ROOT, ConfigError, build_parser, resolve
from magpie_dl.run.inputs import InstructionSourceError, load_instructions
from recipe_cli import run_recipe_cli


@pytest.mark.parametrize(
    "text,key,line",
    [
        ("seed: 1\nseed: 2\n", "seed", 2),
        ("responses:\n  temperature: 0.5\n  max_tokens: 8\n  temperature: 0.9\n", "temperature", 4),
        ("reward:\n  batch_size: 2\nreward:\n  batch_size: 4\n", "reward", 3),
    ],
)
def test_duplicate_yaml_keys_are_refused_in_one_line(tmp_path, text, key, line):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        resolve(build_parser("test").parse_args(["--config", str(path)]))
    assert str(err.value) == f"config file {path} sets `{key}` twice (line {line}); keep one"


def test_yaml_merge_keys_are_not_duplicates(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("responses:\n  <<: {max_tokens: 12, temperature: 0.5}\n  max_tokens: 20\nseed: 3\n")
    cfg = resolve(build_parser("test").parse_args(["--config", str(path)]))
    assert (cfg.responses.max_tokens, cfg.responses.temperature, cfg.seed) == (20, 0.5, 3)


def test_both_recipes_spell_the_output_directory_flag_the_same(tmp_path):
    dpo_help = build_parser("dpo").format_help()
    curation_help = curation.build_parser("curation").format_help()
    assert "--output-dir" in dpo_help and "--output-dir" in curation_help
    assert "--output_dir" not in curation_help  # one spelling shown
    for flag in ("--output-dir", "--output_dir"):  # the old one still works for old command lines
        cfg = curation.resolve(curation.build_parser("c").parse_args(["--preset", "smoke", flag, str(tmp_path)]))
        assert cfg.output_dir == tmp_path


def test_jsonl_and_json_with_a_byte_order_mark_are_read(tmp_path):
    jsonl = tmp_path / "bom.jsonl"
    jsonl.write_bytes(b"\xef\xbb\xbf" + b'{"instruction": "How do I bake bread?"}\n')
    assert [r["instruction"] for r in load_instructions(str(jsonl))] == ["How do I bake bread?"]
    whole = tmp_path / "bom.json"
    whole.write_bytes(b"\xef\xbb\xbf" + json.dumps([{"instruction": "Explain SQL joins."}]).encode())
    assert [r["instruction"] for r in load_instructions(str(whole))] == ["Explain SQL joins."]


@pytest.mark.parametrize(
    "content,message",
    [
        (b"", "{path} is empty; a .csv needs a header row with an `instruction` column, then one row per instruction"),
        (b"\xef\xbb\xbf\n  \n", "{path} is empty; a .csv needs a header row with an `instruction` column, then one row per instruction"),
        (b"instruction,uuid\n", "{path} holds no instructions"),
    ],
)
def test_empty_csv_files_say_what_is_missing(tmp_path, content, message):
    path = tmp_path / "in.csv"
    path.write_bytes(content)
    with pytest.raises(InstructionSourceError) as err:
        load_instructions(str(path))
    assert str(err.value) == message.format(path=path)


def test_a_given_uuid_is_kept_as_text_even_when_it_is_zero(tmp_path):
    path = tmp_path / "in.jsonl"
    rows = [{"instruction": "a question", "uuid": 0}, {"instruction": "another", "uuid": 7},
            {"instruction": "third"}, {"instruction": "fourth", "uuid": None}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    loaded = load_instructions(str(path))
    assert [r["uuid"] for r in loaded[:2]] == ["0", "7"]
    assert all(len(r["uuid"]) == 36 for r in loaded[2:])  # missing ones are derived


@pytest.mark.parametrize("uuid,needle", [("", "empty `uuid`"), ("  ", "empty `uuid`"), ([1], "`uuid` is list")])
def test_unusable_uuids_are_refused(tmp_path, uuid, needle):
    path = tmp_path / "in.jsonl"
    path.write_text(json.dumps({"instruction": "a question", "uuid": uuid}) + "\n")
    with pytest.raises(InstructionSourceError, match=needle):
        load_instructions(str(path))


@pytest.mark.slow
def test_quiet_run_prints_no_progress_bars_and_leaves_no_distilabel_cache(tmp_path, tiny_models):
    source = tmp_path / "in.jsonl"
    source.write_text('{"instruction": "How do I bake bread?"}\n{"instruction": "Explain SQL joins."}\n')
    home, out = tmp_path / "home", tmp_path / "out"
    result = run_recipe_cli("--preset", "smoke", "--instructions", str(source), "--output-dir", str(out), "--quiet",
                            timeout=300, env={"HOME": str(home), "DISTILABEL_CACHE_DIR": ""})
    assert result.returncode == 0, result.stderr[-3000:]
    for bar in ("it/s]", "examples/s]", "%|"):
        assert bar not in result.stderr, result.stderr[-2000:]
    assert "[progress]" not in result.stdout + result.stderr
    # distilabel's batches and output copy lived in the run's own directory and are gone;
    # nothing went to its shared cache under the home directory.
    assert not (out / "cache" / "distilabel").exists()
    assert not (home / ".cache" / "distilabel").exists()
    assert (out / "dataset").exists()


@pytest.mark.slow
def test_default_output_has_no_library_noise_and_verbose_brings_it_back(tmp_path, tiny_models):
    """What a newcomer sees: our progress lines and summary, no bars or warnings of the libraries."""
    source = tmp_path / "in.jsonl"
    source.write_text('{"instruction": "How do I bake bread?"}\n{"instruction": "Explain SQL joins."}\n')
    noise = ("it/s]", "examples/s]", "Loading weights", "Saving the dataset", "FutureWarning", "deprecated")
    plain = run_recipe_cli("--preset", "smoke", "--instructions", str(source), "--output-dir", str(tmp_path / "a"),
                           timeout=300)
    assert plain.returncode == 0, plain.stderr[-3000:]
    assert not [n for n in noise if n in plain.stdout + plain.stderr], (plain.stdout + plain.stderr)[-3000:]
    assert "pairs kept:" in plain.stdout
    verbose = run_recipe_cli("--preset", "smoke", "--instructions", str(source), "--output-dir", str(tmp_path / "b"),
                             "--verbose", "--quiet", timeout=300)
    assert verbose.returncode == 0, verbose.stderr[-3000:]
    assert [n for n in noise if n in verbose.stdout + verbose.stderr]
