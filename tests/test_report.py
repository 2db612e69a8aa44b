"""The dataset card and the run report.

Inputs are real output directories: rows built here go through the real pairing step
and the real ``write_dataset``; one test regenerates the card and report of a real smoke
run (``smoke_output``, marked slow). Rendering is checked in Debian's headless chromium
over the DevTools protocol (no extra Python packages): console messages, exceptions,
CSP violations and failed loads are collected, every plot must be decoded by the
browser, and the pixels the browser painted for each plot must not be blank.

Metadata validation is offline: the Hub's own check (``DatasetCard.validate()``) posts
the card to huggingface.co, so it only runs when the Hub answers (skipped otherwise,
never passed silently). Offline, the card is parsed by ``huggingface_hub.DatasetCard``
and checked against the vocabularies ``datasets`` ships (size categories, languages,
creators, multilinguality), the Hub's documented license ids, a duplicate-key YAML
loader, and ``datasets``' own parsers of ``configs`` and ``dataset_info``.
"""

from __future__ import annotations

import io
import json
import random
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from magpie_dl.release import report
from magpie_dl.config.dpo import REPO_ROOT, RecipeConfig
from magpie_dl.release.export import write_dataset
from report_pages import blank_reason, chromium_path, embedded_plots, parse, render_in_chromium

SECRET = "hf_report_test_secret_4f9a"
ADVERSARIAL = 'Explain <script>console.error("injected")</script> & </pre> in ``` fences | pipes'
TASKS = ("Information seeking", "Math", "Coding & Debugging", "Creative writing", "Advice seeking")
HUB_LICENSES = {"apache-2.0", "mit", "cc-by-4.0", "cc-by-nc-4.0", "llama3", "llama3.1", "llama3.2", "llama3.3",
                "gemma", "other", "unknown"}  # subset of https://huggingface.co/docs/hub/repositories-licenses


# --------------------------------------------------------------------------- building outputs


def _rows(n: int, tagged: bool, seed: int = 0, responses: int = 5, rejected: str = "min") -> list[dict[str, Any]]:
    """Pipeline rows as they reach the exporter, paired by the real BestWorstPairing step."""
    from magpie_dl.steps.pairing import BestWorstPairing

    rng = random.Random(seed)
    rows: list[dict[str, Any]] = []
    for i in range(n):
        instruction = ADVERSARIAL if i == 1 else f"Question {i}: how do I {rng.choice(['sort', 'plan', 'write'])} {i}?"
        status = "ok"
        if i % 17 == 5:
            status = "duplicate"
        elif i % 23 == 7:
            status, instruction = "too_short", "Hi"
        texts = [" ".join(["word"] * rng.randint(5, 120)) + f" <b>{j}</b>" for j in range(responses)]
        scores = [round(rng.gauss(0.0, 1.0), 3) for _ in range(responses)]
        finish = ["stop"] * responses
        if i == 3:
            scores = [0.5] * responses  # all tied: left out
        if i == 4:
            finish = ["length"] * (responses - 1) + ["stop"]  # one usable response: left out
        if i == 1:
            texts[0] = ADVERSARIAL
            scores[0] = 9.0  # the adversarial text is chosen and shown as an example
        row: dict[str, Any] = {
            "uuid": f"00000000-0000-0000-0000-{i:012d}",
            "instruction": instruction,
            "raw_instruction": f"1. {instruction}",
            "instruction_status": status,
            "gen_input_configs": {"input_generator": "meta-llama/Llama-3.1-70B-Instruct", "temperature": 0.9, "top_p": 1.0},
            "generations": texts if status == "ok" else [],
            "ratings": scores if status == "ok" else [],
            "finish_reasons": finish if status == "ok" else [],
            "gen_response_configs": {"engine": "vllm", "temperature": 0.8, "top_p": 1.0, "max_tokens": 4096},
        }
        if tagged:
            row.update(
                task_category=rng.choice(TASKS),
                difficulty=rng.choice(report.DIFFICULTY_ORDER),
                input_quality=rng.choice(report.QUALITY_ORDER),
                language="EN",
            )
        rows.append(row)
    step = BestWorstPairing(name="pairing", min_margin=0.0, rejected_policy=rejected)
    step.load()
    return next(step.process(rows))


def _write_output(out: Path, rows: list[dict[str, Any]], rejected: str = "min") -> Path:
    output = {"dir": str(out), "push_to_hub": "someone/magpie-dpo-test", "test_fraction": 0.1}
    cfg = RecipeConfig.model_validate({"output": output, "pairing": {"rejected": rejected}}).public_dict()
    # A secret where none should ever be: the writer must scrub it anyway.
    cfg["generator"]["system_prompt"] = f"token is {SECRET}"
    cfg["output"]["hub_token"] = "value-under-a-secret-looking-key"
    write_dataset(rows, out, test_fraction=0.1, seed=7)
    (out / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_TOKEN", SECRET)
        report.write_card_and_report(out)
    return out


@pytest.fixture(scope="module")
def tagged_output(tmp_path_factory) -> Path:
    """60 instructions with task/difficulty/quality/language tags and every kind of left-out row."""
    return _write_output(tmp_path_factory.mktemp("tagged"), _rows(60, tagged=True))


@pytest.fixture(scope="module")
def untagged_output(tmp_path_factory) -> Path:
    """The smoke shape: no tag columns."""
    return _write_output(tmp_path_factory.mktemp("untagged"), _rows(30, tagged=False, seed=1))


@pytest.fixture(scope="module")
def mean_minus_2sd_output(tmp_path_factory) -> Path:
    """16 responses per instruction paired with ``pairing.rejected: mean_minus_2sd``."""
    return _write_output(tmp_path_factory.mktemp("mm2sd"), _rows(24, tagged=False, seed=3, responses=16,
                                                                 rejected="mean_minus_2sd"), "mean_minus_2sd")


@pytest.fixture(scope="module")
def empty_output(tmp_path_factory) -> Path:
    """Every row left out: no pairs at all."""
    rows = [dict(r, instruction_status="too_short") for r in _rows(4, tagged=False)]
    for row in rows:
        row["pair_status"] = "instruction_too_short"
    return _write_output(tmp_path_factory.mktemp("empty"), rows)


@pytest.fixture(scope="module")
def all_kept_output(tmp_path_factory) -> Path:
    """Nothing left out: ``left_out`` is saved empty."""
    rows = [r for r in _rows(12, tagged=False, seed=2) if r["pair_status"] == "kept"]
    return _write_output(tmp_path_factory.mktemp("all_kept"), rows)


# --------------------------------------------------------------------------- card


def _datasets_vocabulary(name: str) -> Any:
    import datasets

    return json.loads((Path(datasets.__file__).parent / "utils" / "resources" / name).read_text())


def assert_card_valid(out_dir: Path) -> Any:
    """Everything that can be checked about the card's metadata without the network."""
    from datasets.info import DatasetInfosDict
    from datasets.utils.metadata import MetadataConfigs, _NoDuplicateSafeLoader, _split_yaml_from_readme
    from huggingface_hub import DatasetCard, DatasetCardData

    text = (out_dir / "README.md").read_text()
    yaml_block, body = _split_yaml_from_readme(text)
    assert yaml_block is not None, "no YAML metadata block"
    yaml.load(yaml_block, Loader=_NoDuplicateSafeLoader)  # raises on duplicate keys
    assert body.strip(), "empty card body"

    card = DatasetCard.load(out_dir / "README.md")
    data = card.data
    assert isinstance(data, DatasetCardData)
    assert DatasetCard(str(card)).data.to_dict() == data.to_dict(), "metadata does not round-trip"

    assert data.license in HUB_LICENSES
    assert data.task_categories == ["text-generation"]
    assert data.size_categories and set(data.size_categories) <= set(_datasets_vocabulary("size_categories.json"))
    assert data.language and set(data.language) <= set(_datasets_vocabulary("languages.json"))
    creators = _datasets_vocabulary("creators.json")
    assert set(data.annotations_creators) <= set(creators["annotations"])
    assert set(data.language_creators) <= set(creators["language"])
    assert data.multilinguality in _datasets_vocabulary("multilingualities.json")
    assert {"synthetic", "dpo"} <= set(data.tags)

    dataset = report.load_output(out_dir).pairs  # load_from_disk cannot read a split saved empty
    n_rows = sum(len(split) for split in dataset.values())
    assert data.size_categories == [report.size_category(n_rows)]
    configs = MetadataConfigs.from_dataset_card_data(data)
    assert list(configs) == ["default"]
    MetadataConfigs._raise_if_data_files_field_not_valid(configs["default"])
    assert {f["split"] for f in configs["default"]["data_files"]} == set(dataset)
    if n_rows:
        info = DatasetInfosDict.from_dataset_card_data(data)["default"]
        assert info.features == dataset["train"].features
        assert {name: s.num_examples for name, s in info.splits.items()} == {k: len(v) for k, v in dataset.items()}
    return card


def test_card_parses_and_metadata_validates(tagged_output: Path) -> None:
    card = assert_card_valid(tagged_output)
    # The generator is a Llama-3.1 hub model, so its license applies to the data.
    assert card.data.license == "llama3.1"
    assert card.data.language == ["en"]
    assert 'load_dataset("someone/magpie-dpo-test")' in card.text


def test_card_states_counts_reasons_and_examples(tagged_output: Path) -> None:
    from datasets import load_from_disk

    text = (tagged_output / "README.md").read_text()
    summary = json.loads((tagged_output / "summary.json").read_text())
    left = load_from_disk(str(tagged_output / "left_out"))
    reasons = {r: left["pair_status"].count(r) for r in set(left["pair_status"])}
    assert reasons == summary["left_out"]
    assert {"instruction_duplicate", "instruction_too_short", "all_scores_tied", "fewer_than_two_usable"} <= set(reasons)
    for reason, count in reasons.items():
        assert re.search(rf"\| `{reason}` \| {count} \| [^|]*[a-z]", text), f"reason {reason} missing from the card"
    assert f"| pairs kept | {summary['pairs_kept']} |" in text
    assert f"| instructions generated | {summary['instructions']} |" in text
    assert len(re.findall(r"^### Example \d", text, flags=re.M)) == 3
    # Content holding ``` is fenced with a longer fence, so it cannot end its block early.
    assert "````text\n" + ADVERSARIAL in text
    assert "meta-llama/Llama-3.1-70B-Instruct" in text and "RLHFlow/ArmoRM-Llama3-8B-v0.1" in text


def test_untagged_and_empty_cards_validate(untagged_output: Path, empty_output: Path, all_kept_output: Path) -> None:
    assert assert_card_valid(untagged_output).data.size_categories == ["n<1K"]
    assert "Every instruction produced a pair." in assert_card_valid(all_kept_output).text
    assert "Every instruction produced a pair." in (all_kept_output / "report.html").read_text()
    card = assert_card_valid(empty_output)
    assert "No pairs were kept." in card.text
    assert "| `instruction_too_short` | 4 |" in card.text


@pytest.mark.parametrize("name", ["README.md", "report.html"])
@pytest.mark.parametrize("which", ["tagged_output", "untagged_output"])
def test_no_secrets_written(name: str, which: str, request) -> None:
    text = (request.getfixturevalue(which) / name).read_text()
    assert SECRET not in text
    assert "value-under-a-secret-looking-key" not in text
    assert report.REDACTED in text or "&lt;redacted&gt;" in text


@pytest.mark.parametrize(
    ("rows", "bucket"),
    [(0, "n<1K"), (999, "n<1K"), (1000, "1K<n<10K"), (9_999, "1K<n<10K"), (100_000, "100K<n<1M"), (10**13, "n>1T")],
)
def test_size_category(rows: int, bucket: str) -> None:
    assert report.size_category(rows) == bucket
    assert bucket in _datasets_vocabulary("size_categories.json")


def test_license_follows_the_generating_models() -> None:
    assert report.license_for(["meta-llama/Llama-3.1-70B-Instruct"] * 2) == ("llama3.1", None)
    assert report.license_for(["google/gemma-2-9b-it"]) == ("gemma", None)
    assert report.license_for(["HuggingFaceTB/SmolLM2-135M-Instruct"]) == ("apache-2.0", None)
    lic, note = report.license_for(["/models/tiny/generator"])
    assert lic == "other" and "generator (local)" in note and "/models/" not in note  # never a local path
    lic, note = report.license_for(["meta-llama/Llama-3.1-8B-Instruct", "google/gemma-2-9b-it"])
    assert lic == "other" and "llama3.1" in note and "gemma" in note


def test_push_keeps_card_metadata_and_body(tagged_output: Path, tmp_path: Path) -> None:
    """``push_to_hub`` uploads the card first; datasets' push then updates it in place.

    Runs the function ``DatasetDict.push_to_hub`` uses to rewrite the repo's README.md
    against a local copy of the repo: our license, tags and body must survive, and only
    ``configs`` / ``dataset_info`` may change.
    """
    from datasets.arrow_dataset import _get_updated_dataset_card
    from datasets.splits import SplitInfo
    from fsspec.implementations.dirfs import DirFileSystem
    from fsspec.implementations.local import LocalFileSystem
    from huggingface_hub import DatasetCard

    repo = tmp_path / "repo"
    repo.mkdir()
    shutil.copy(tagged_output / "README.md", repo / "README.md")
    pairs = report.load_output(tagged_output).pairs
    new_card, _ = _get_updated_dataset_card(
        fs=DirFileSystem(path=str(repo), fs=LocalFileSystem()), config_name="default",
        splits_info=[SplitInfo(name=name, num_bytes=1000, num_examples=len(split)) for name, split in pairs.items()],
        features=pairs["train"].features, data_dir="data", set_default=None,
        uploaded_sizes=[500] * len(pairs), deleted_sizes=[], remove_other_splits=True,
    )
    ours = DatasetCard.load(tagged_output / "README.md")
    assert new_card.text == ours.text
    before, after = ours.data.to_dict(), new_card.data.to_dict()
    changed = {key for key in before.keys() | after.keys() if before.get(key) != after.get(key)}
    assert changed <= {"dataset_info"}, changed
    assert after["configs"] == before["configs"]
    assert after["dataset_info"]["features"] == before["dataset_info"]["features"]


def test_assistant_lengths_match_python_on_chunked_sliced_data() -> None:
    """Response lengths are read from Arrow chunks; they must equal the plain-Python count."""
    from datasets import Dataset, concatenate_datasets

    def convo(i: int) -> list[dict[str, str]]:
        return [{"role": "user", "content": "q" * i}, {"role": "assistant", "content": "é" * (3 * i + 1)}]

    parts = [Dataset.from_list([{"chosen": convo(i)} for i in range(k, k + 7)]) for k in (0, 10, 20)]
    # A contiguous select slices the Arrow table: chunks that start and end mid-way.
    ds = concatenate_datasets(parts).select(range(2, 19))
    assert ds._indices is None and len(ds.data.column("chosen").chunks) == 3
    assert report._assistant_lengths(ds, "chosen") == [len(row[-1]["content"]) for row in ds["chosen"]]
    assert report._assistant_lengths(ds, "rejected") is None


# --------------------------------------------------------------------------- report (static)


def test_report_is_self_contained_with_real_plots(tagged_output: Path) -> None:
    page = parse(tagged_output / "report.html")
    assert not [t for t, _ in page.tags if t in ("script", "iframe", "object", "embed")]
    for tag, attrs in page.tags:
        for attr in ("src", "href"):
            value = attrs.get(attr)
            assert value is None or value.startswith("data:"), f"<{tag} {attr}={value!r}> would leave the file"
    plots = embedded_plots(page)
    assert set(plots) == {"scores", "margin", "lengths", "length_gap", "task_category", "difficulty", "input_quality"}
    for key, png in plots.items():
        assert blank_reason(png) is None, f"plot {key}: {blank_reason(png)}"
    assert len(set(plots.values())) == len(plots), "two plots are the same image"


def test_report_notes_missing_columns_instead_of_plotting(untagged_output: Path) -> None:
    page = parse(untagged_output / "report.html")
    assert set(embedded_plots(page)) == {"scores", "margin", "lengths", "length_gap"}
    text = re.sub(r"\s+", " ", " ".join(page.text))
    for column in ("task_category", "difficulty", "input_quality"):
        assert f"no {column} column" in text
    # Why, and what to do: the tags come from the curation recipe.
    assert text.count("run it and pass its dataset with --instructions") == 3


def _kept_rows(out_dir: Path) -> list[dict[str, Any]]:
    from datasets import load_from_disk

    return [row for split in load_from_disk(str(out_dir / "dataset")).values() for row in split.to_list()]


def test_card_and_report_show_the_margin_quantiles_and_the_length_gap(untagged_output: Path) -> None:
    import numpy as np

    rows = _kept_rows(untagged_output)
    margins = [row["score_margin"] for row in rows]
    gaps = [len(row["chosen"][-1]["content"]) - len(row["rejected"][-1]["content"]) for row in rows]
    card = (untagged_output / "README.md").read_text()
    wanted = [f"{q:.4g}" for q in np.percentile(margins, report.MARGIN_PERCENTILES)]  # numpy's linear method
    assert "| p5 | p10 | p25 | p50 | p75 | p90 | p95 |\n|---:|" in card
    assert f"| {' | '.join(wanted)} |" in card
    gap_row = (f"| length gap, chosen - rejected (chars) | {len(gaps)} | {np.mean(gaps):.4g} | {np.median(gaps):.4g} | "
               f"{min(gaps):.4g} | {max(gaps):.4g} |")
    assert gap_row in card
    assert f"The chosen answer is the longer one in {sum(g > 0 for g in gaps) / len(gaps):.0%} of pairs." in card
    page = re.sub(r"\s+", " ", " ".join(parse(untagged_output / "report.html").text))
    assert "Score margin quantiles p5 p10 p25 p50 p75 p90 p95 " + " ".join(wanted) in page
    assert f"length gap, chosen - rejected (chars) {len(gaps)} {np.mean(gaps):.4g} {np.median(gaps):.4g}" in page
    assert "Length gap" in page and "length_gap" in embedded_plots(parse(untagged_output / "report.html"))


def test_card_and_report_name_the_rejected_policy(untagged_output: Path, mean_minus_2sd_output: Path) -> None:
    reference = (untagged_output / "README.md").read_text()
    assert "the best and worst answers become `chosen` and `rejected`" in reference
    assert "`rejected` is the lowest (`pairing.rejected: min`" in reference and "rejected: min" in reference
    card = assert_card_valid(mean_minus_2sd_output).text
    assert "`rejected` is picked by `pairing.rejected: mean_minus_2sd`" in card
    assert "closest to mean - 2 sd of the row's usable scores" in card and "arXiv 2502.16825" in card
    assert "rejected: mean_minus_2sd" in card  # the resolved config
    page = re.sub(r"\s+", " ", " ".join(parse(mean_minus_2sd_output / "report.html").text))
    assert "pairing.rejected: mean_minus_2sd" in page
    rows = _kept_rows(mean_minus_2sd_output)
    assert {row["gen_response_configs"]["pairing_rejected"] for row in rows} == {"mean_minus_2sd"}
    assert all("pairing_rejected" not in row["gen_response_configs"] for row in _kept_rows(untagged_output))


def test_report_escapes_example_text(tagged_output: Path) -> None:
    html_text = (tagged_output / "report.html").read_text()
    assert "<script>" not in html_text
    assert "&lt;script&gt;console.error(&quot;injected&quot;)&lt;/script&gt;" in html_text
    assert ADVERSARIAL in " ".join(parse(tagged_output / "report.html").text)


def test_report_counts_match_summary(tagged_output: Path) -> None:
    summary = json.loads((tagged_output / "summary.json").read_text())
    text = re.sub(r"\s+", " ", " ".join(parse(tagged_output / "report.html").text))
    for reason, count in summary["left_out"].items():
        assert f"{reason} {count} " in text
    assert f"pairs kept {summary['pairs_kept']} " in text


def test_blank_detector_rejects_blank_images() -> None:
    """The plot check must be able to fail: a white and a two-colour image are not plots."""
    from PIL import Image, ImageDraw

    def png_of(image: Any) -> bytes:
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        return buf.getvalue()

    assert blank_reason(png_of(Image.new("RGB", (400, 300), "white"))) is not None
    sparse = Image.new("RGB", (400, 300), "white")
    ImageDraw.Draw(sparse).line([(0, 0), (399, 0)], fill="black")
    assert blank_reason(png_of(sparse)) is not None
    # Empty axes: frame, grid and labels in greys, no data.
    axes = Image.new("RGB", (400, 300), "white")
    draw = ImageDraw.Draw(axes)
    draw.rectangle([40, 20, 380, 260], outline="black", width=2)
    for x in range(60, 380, 20):
        draw.line([(x, 20), (x, 260)], fill=(200, 200, 200))
        draw.text((x - 5, 265), str(x), fill=(60, 60, 60))
    assert "empty axes" in (blank_reason(png_of(axes)) or "")
    bars = axes.copy()
    ImageDraw.Draw(bars).rectangle([100, 120, 140, 259], fill=report.CHOSEN_COLOR)
    assert blank_reason(png_of(bars)) is None


def test_selection_stage_is_reported_when_the_run_selected(tagged_output: Path, tmp_path: Path) -> None:
    """A run that selected instructions (selection.json, SelectionReport.to_dict()) shows that stage too."""
    out = tmp_path / "selected"
    shutil.copytree(tagged_output, out)
    selection = {
        "input_rows": 200, "selected_rows": 60, "target_size": 60,
        "dropped": {"difficulty_below_min": 90, "category_quota": 50},
        "category_mix_before": {"Information seeking": 120, "Math": 50, "Creative writing": 30},
        "category_mix_after": {"Information seeking": 20, "Math": 20, "Creative writing": 20},
    }
    (out / "selection.json").write_text(json.dumps(selection))
    report.write_card_and_report(out)
    card = (out / "README.md").read_text()
    assert "| tagged instructions (selection input) | 200 |" in card
    assert "| selected instructions | 60 | dropped: difficulty_below_min: 90, category_quota: 50 |" in card
    with_selection = embedded_plots(parse(out / "report.html"))["task_category"]
    without = embedded_plots(parse(tagged_output / "report.html"))["task_category"]
    assert blank_reason(with_selection) is None and with_selection != without

    # The usual layout: the curation recipe's selection.json beside the --instructions dataset.
    curated = tmp_path / "curated"
    (curated / "dataset").mkdir(parents=True)
    (out / "selection.json").rename(curated / "selection.json")
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    cfg["instructions"] = str(curated / "dataset")
    (out / "config.yaml").write_text(yaml.safe_dump(cfg))
    assert report.load_output(out).selection == selection
    # The queries were written elsewhere: the card names the writer the rows record, not the generator config.
    cfg["generator"]["model"] = "someone/unused-generator"
    (out / "config.yaml").write_text(yaml.safe_dump(cfg))
    report.write_card(out)
    card = (out / "README.md").read_text()
    assert "| instructions | `meta-llama/Llama-3.1-70B-Instruct` |" in card
    assert "**Instructions**: read from `dataset (local)`" in card and str(curated) not in card
    assert "| selected instructions | 60 |" in card


# --------------------------------------------------------------------------- report in chromium


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's chromium, installed by scripts/setup_chromium.sh when missing (fresh CI machines)."""
    path = chromium_path()
    if path is None:
        script = REPO_ROOT / "scripts" / "setup_chromium.sh"
        result = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=900)
        path = chromium_path()
        if result.returncode != 0 or path is None:
            pytest.fail(f"chromium is needed and {script} could not install it:\n{result.stdout[-2000:]}{result.stderr[-2000:]}")
    return path


def assert_renders(binary: str, page: Path, profile: Path, expected_plots: set[str]) -> dict[str, Any]:
    rendered = render_in_chromium(binary, page, profile)
    assert rendered["errors"] == [], rendered["errors"]
    assert {image["key"] for image in rendered["images"]} == expected_plots
    for image in rendered["images"]:
        assert image["complete"] and image["width"] > 100 and image["height"] > 100, f"plot {image['key']} not decoded: {image}"
        assert blank_reason(image["painted"]) is None, f"plot {image['key']} painted blank: {blank_reason(image['painted'])}"
    assert "Counts at each stage" in rendered["text"] and "Rows left out" in rendered["text"]
    return rendered


def test_report_renders_in_chromium(
    chromium: str, tagged_output: Path, untagged_output: Path, empty_output: Path, tmp_path: Path
) -> None:
    rendered = assert_renders(chromium, tagged_output / "report.html", tmp_path / "p1",
                              {"scores", "margin", "lengths", "length_gap", "task_category", "difficulty", "input_quality"})
    assert 'console.error("injected")' in rendered["text"]  # shown as text, not run
    assert_renders(chromium, untagged_output / "report.html", tmp_path / "p2",
                   {"scores", "margin", "lengths", "length_gap"})
    rendered = assert_renders(chromium, empty_output / "report.html", tmp_path / "p3", set())
    assert "No kept pairs" in rendered["text"]


def test_chromium_harness_catches_broken_pages(chromium: str, tmp_path: Path) -> None:
    """The rendering check must be able to fail: errors, blocked loads and undecodable images show up."""
    bad = tmp_path / "bad.html"
    bad.write_text(
        "<!DOCTYPE html><html><head><meta http-equiv='Content-Security-Policy' "
        "content=\"default-src 'none'; img-src data:; style-src 'unsafe-inline'\"></head><body>"
        "<script>console.error('x')</script><img data-plot='remote' src='http://127.0.0.1:9/x.png'>"
        "<img data-plot='broken' src='data:image/png;base64,AAAA'></body></html>"
    )
    rendered = render_in_chromium(chromium, bad, tmp_path / "profile")
    assert any("inline script" in e for e in rendered["errors"]), rendered["errors"]
    assert any("127.0.0.1:9" in e for e in rendered["errors"]), rendered["errors"]
    assert all(image["width"] == 0 for image in rendered["images"])
    scripted = tmp_path / "scripted.html"
    scripted.write_text("<!DOCTYPE html><html><body><script>console.error('boom'); null.x</script></body></html>")
    errors = render_in_chromium(chromium, scripted, tmp_path / "profile2")["errors"]
    assert any("boom" in e for e in errors) and any(e.startswith("exception") for e in errors), errors


# --------------------------------------------------------------------------- a real run


@pytest.mark.slow
def test_run_writes_card_and_report(smoke_output: Path) -> None:
    """``run_recipe`` writes both files at the end of a run."""
    assert (smoke_output / "README.md").is_file() and (smoke_output / "report.html").is_file()


@pytest.mark.slow
def test_smoke_run_card_and_report(smoke_output: Path, chromium: str, tmp_path: Path) -> None:
    """A real smoke run: the CLI regenerates both files quickly, and both pass the checks above."""
    out = tmp_path / "smoke"
    shutil.copytree(smoke_output, out, ignore=shutil.ignore_patterns(".lock", "README.md", "report.html"))
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "magpie_dl.release.report", str(out)], capture_output=True, text=True,
                            timeout=120, cwd=REPO_ROOT)
    elapsed = time.perf_counter() - started
    assert result.returncode == 0, result.stderr[-3000:]
    assert elapsed < 30, f"report CLI took {elapsed:.1f}s"  # ~3-5 s here, generous for a shared CI box
    card = assert_card_valid(out)
    summary = json.loads((out / "summary.json").read_text())
    assert f"| pairs kept | {summary['pairs_kept']} |" in card.text
    assert_renders(chromium, out / "report.html", tmp_path / "profile", {"scores", "margin", "lengths", "length_gap"})


def test_hub_push_uploads_config_pipeline_and_report_beside_the_card(tagged_output: Path, tmp_path: Path,
                                                                      monkeypatch) -> None:
    from magpie_dl.release.push import hub_files

    out = tmp_path / "run"
    shutil.copytree(tagged_output, out)
    (out / "pipeline.yaml").write_text(f"pipeline:\n  name: x\n  note: {SECRET}\n")
    monkeypatch.setenv("HF_TOKEN", SECRET)
    files = hub_files(out)
    assert list(files) == ["README.md", "config.yaml", "pipeline.yaml", "report.html"]
    assert all(SECRET.encode() not in data for data in files.values())
    assert files["report.html"] == (out / "report.html").read_bytes()
    assert yaml.safe_load(files["config.yaml"])["output"] == yaml.safe_load((out / "config.yaml").read_text())["output"]
