"""Compare two runs' outputs: python scripts/compare_runs.py BASELINE_DIR NEW_DIR

For a change that must not change what a recipe writes (a refactor): run the recipe before
and after into two directories and compare. Works for both recipes (dpo_100k: dataset/,
left_out/, summary.json without its `timings`, which differ between any two runs; curation:
dataset/, instructions.jsonl, left_out.jsonl, selection.json). Rows are sorted by uuid; floats compare within tests/compare.py's
tolerance, everything else exactly. Prints IDENTICAL (exit 0), or one line naming the first
difference (exit 1); a missing or unreadable output is one line too (exit 2).
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


UNCOMPARED = {"timings"}  # summary.json's wall-clock seconds: never equal between two runs


def compare(base: Path, new: Path) -> list[str]:
    """The outputs compared; raises AssertionError at the first difference."""
    checked = []
    for name in ("dataset", "left_out"):
        if (base / name).exists():
            assert (new / name).exists(), f"{name}: missing from {new}"
            assert_same(rows(base / name), rows(new / name), name)
            checked.append(name)
    for name in ("instructions.jsonl", "left_out.jsonl"):
        if (base / name).exists():
            assert (new / name).exists(), f"{name}: missing from {new}"
            a = sorted((json.loads(line) for line in (base / name).open()), key=lambda r: r["uuid"])
            b = sorted((json.loads(line) for line in (new / name).open()), key=lambda r: r["uuid"])
            assert_same(a, b, name)
            checked.append(name)
    for name in ("selection.json", "summary.json"):
        if (base / name).exists():
            assert (new / name).exists(), f"{name}: missing from {new}"
            a, b = (json.loads((d / name).read_text()) for d in (base, new))
            assert_same(*({k: v for k, v in x.items() if k not in UNCOMPARED} for x in (a, b)), name)
            checked.append(name)
    assert checked, f"nothing to compare: {base} holds no dataset/, instructions.jsonl or summary.json"
    return checked


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python scripts/compare_runs.py BASELINE_DIR NEW_DIR", file=sys.stderr)
        return 2
    base, new = Path(argv[0]), Path(argv[1])
    try:
        checked = compare(base, new)
    except AssertionError as exc:
        # Values can be whole responses: the line stays short.
        print(f"DIFFERENT: {' '.join(str(exc).split())[:300]}", file=sys.stderr)
        return 1
    except (OSError, ValueError) as exc:
        print(f"error: cannot read the outputs: {exc.__class__.__name__}: {str(exc).splitlines()[0][:300]}",
              file=sys.stderr)
        return 2
    print("IDENTICAL:", ", ".join(checked))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
