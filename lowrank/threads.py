"""Torch's CPU thread count, set deliberately by every entry point.

Two processes that each use every core thrash; ``LOWRANK_THREADS`` overrides the default
(all cores of this machine).
"""

from __future__ import annotations

import os

import torch


def set_threads(threads: int | None = None) -> int:
    """Set torch's intra-op threads to ``threads`` (default: ``$LOWRANK_THREADS`` or the CPU count); returns it."""
    n = threads or int(os.environ.get("LOWRANK_THREADS", 0) or 0) or os.cpu_count() or 1
    torch.set_num_threads(n)
    return n
