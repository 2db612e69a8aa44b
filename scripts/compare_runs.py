"""Compare two runs' outputs: python scripts/compare_runs.py BASELINE_DIR NEW_DIR

For a change that must not change what a recipe writes (a refactor): run the recipe before
and after into two directories and compare. Works for both recipes (dpo_100k: dataset/,
left_out/, summary.json; curation: dataset/, instructions.jsonl, left_out.jsonl,
selection.json; summary.json without its `timings`, which differ between any two runs). Rows are sorted by uuid; floats compare within tests/compare.py's
tolerance, everything else exactly. Prints IDENTICAL, or fails naming the first difference.
"""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from compare import assert_same  # noqa: E402
from datasets import load_from_disk  # noqa: E402


def rows(path: Path):
    data = load_from_disk(str(path))
    splits = data.items() if hasattr(data, "items") else [("all", data)]
    return {name: sorted(split.to_list(), key=lambda r: r["uuid"]) for name, split in splits}


base, new = Path(sys.argv[1]), Path(sys.argv[2])
checked = []
for name in ("dataset", "left_out"):
    if (base / name).exists():
        assert_same(rows(base / name), rows(new / name), name)
        checked.append(name)
for name in ("instructions.jsonl", "left_out.jsonl"):
    if (base / name).exists():
        a = sorted((json.loads(line) for line in (base / name).open()), key=lambda r: r["uuid"])
        b = sorted((json.loads(line) for line in (new / name).open()), key=lambda r: r["uuid"])
        assert_same(a, b, name)
        checked.append(name)
UNCOMPARED = {"timings"}  # summary.json's wall-clock seconds: never equal between two runs
for name in ("selection.json", "summary.json"):
    if (base / name).exists():
        a, b = (json.loads((d / name).read_text()) for d in (base, new))
        assert_same(*({k: v for k, v in x.items() if k not in UNCOMPARED} for x in (a, b)), name)
        checked.append(name)
print("IDENTICAL:", ", ".join(checked))
