"""The cache folder: ``$LOWRANK_CACHE``, else ``~/.cache/lowrank`` (created on first use).

It holds what is expensive to get again: fetched assets, built models, statistics and the run store.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """The cache folder, created if missing."""
    root = Path(os.environ.get("LOWRANK_CACHE", Path.home() / ".cache" / "lowrank")).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    return root
