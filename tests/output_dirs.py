"""Output directories as users keep them, for tests."""

from __future__ import annotations

from pathlib import Path


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every path under ``root`` with its bytes (None for a directory)."""
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


def users_files(root: Path) -> Path:
    """A directory as a user keeps it: a README, a config, a dataset folder, a cache."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "README.md").write_text("my notes\n")
    (root / "config.yaml").write_text("mine: true\n")
    (root / "dataset").mkdir()
    (root / "dataset" / "part.txt").write_text("my data\n")
    (root / "cache").mkdir()
    (root / "cache" / "keep.bin").write_bytes(b"\x00\x01")
    return root
