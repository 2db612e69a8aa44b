"""The one secret scrubber: messages, logs, the card, the report and Argilla errors all go through it."""

from __future__ import annotations

import ast
from pathlib import Path

from magpie_dl import scrub
from magpie_dl.review import ArgillaCredentials

ROOT = Path(__file__).resolve().parent.parent


def test_secret_values_are_masked_longest_first(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_abcdef")
    monkeypatch.setenv("OPENAI_API_KEY", "hf_abcdef_longer")
    monkeypatch.setenv("VLLM_API_KEY", "abc")  # too short to tell from text: left alone
    text = "token hf_abcdef_longer then hf_abcdef, abc"
    assert scrub.scrub_text(text) == "token *** then ***, abc"
    assert scrub.scrub_text(text, mask=scrub.REDACTED) == "token <redacted> then <redacted>, abc"


def test_url_credentials_are_cut_out():
    assert scrub.scrub_text("GET http://user:pw@127.0.0.1:6900/api", []) == "GET http://127.0.0.1:6900/api"


def test_structures_redact_secret_looking_keys(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_abcdef")
    value = {"output": {"hub_token": "x", "api_key": None, "note": "uses hf_abcdef"}, "list": ["hf_abcdef", 3]}
    assert scrub.scrub(value) == {
        "output": {"hub_token": "<redacted>", "api_key": None, "note": "uses <redacted>"},
        "list": ["<redacted>", 3],
    }


def test_argilla_errors_use_the_same_scrubber():
    credentials = ArgillaCredentials(api_url="http://user:pw@127.0.0.1:6900", api_key="k3y")
    assert credentials.scrub("failed at http://user:pw@127.0.0.1:6900 with k3y") == "failed at http://127.0.0.1:6900 with ***"


def test_there_is_one_scrubber():
    """No other module defines its own secret masking (``redact``, ``scrub_text``, ``secret_values``).

    (``ArgillaCredentials.scrub``, a method, stays as a one-line call of ``scrub_text`` with the key.)
    """
    own = {"redact", "scrub_text", "scrub", "secret_values", "secret_env_names"}
    found = []
    for tree in ("magpie_dl", "steps", "pipelines"):
        for path in sorted((ROOT / tree).rglob("*.py")):
            if path == ROOT / "magpie_dl" / "scrub.py":
                continue
            for node in ast.parse(path.read_text()).body:
                if isinstance(node, ast.FunctionDef) and node.name in own:
                    found.append(f"{path.relative_to(ROOT)}:{node.name}")
    assert found == []
