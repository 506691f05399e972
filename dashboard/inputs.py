"""What a browser may ask the server for: model folders only under allowed roots, bounded uploads.

The dashboard listens on 127.0.0.1 by default (``.streamlit/config.toml``, ``make run``); anyone who
reaches it may still type a path, so:

* :func:`model_source`: a typed model is a packaged name, a Hugging Face id, or a folder under
  the cache, the working directory or a root of ``LOWRANK_MODEL_ROOTS`` (``os.pathsep``-separated).
  Any other path gets one message, the same whether it exists or not, so the box does not reveal
  which server paths exist.
* :func:`check_upload` / :func:`expire_uploads`: an uploaded CSV is at most :data:`MAX_UPLOAD_MB`
  megabytes (also ``server.maxUploadSize``), and uploads untouched for :data:`UPLOAD_DAYS` days are
  deleted.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from lowrank.files.cache import cache_dir
from lowrank.models import PACKAGED
from lowrank.models.loading import looks_like_path

ROOTS_ENV = "LOWRANK_MODEL_ROOTS"
MAX_UPLOAD_MB = 20  # keep equal to server.maxUploadSize in .streamlit/config.toml
UPLOAD_DAYS = 7


def model_roots() -> list[Path]:
    """Folders a typed model path may lie under: the cache, the working directory and ``$LOWRANK_MODEL_ROOTS``."""
    extra = [Path(p).expanduser() for p in os.environ.get(ROOTS_ENV, "").split(os.pathsep) if p.strip()]
    return [root.resolve() for root in (cache_dir(), Path.cwd(), *extra)]


def _refused(text: str) -> ValueError:
    return ValueError(
        f"cannot load {text!r}: not a packaged model, a Hugging Face id, or a model folder under the "
        f"cache, the working directory or ${ROOTS_ENV}"
    )


def model_source(text: str) -> str:
    """The model to load for the text typed in the model box (see the module docstring); ``ValueError`` otherwise."""
    text = text.strip()
    if text in PACKAGED:
        return text
    path = Path(text).expanduser()
    if not (looks_like_path(text) or ".." in path.parts or "\\" in text):
        local = Path.cwd() / path
        if not local.exists():
            return text  # a hub id such as org/name (or nothing: loading says so)
        path = local
    try:
        resolved = path.resolve()
    except (OSError, RuntimeError) as err:
        raise _refused(text) from err
    inside = any(resolved == root or root in resolved.parents for root in model_roots())
    if not inside or not resolved.is_dir():
        raise _refused(text)
    return str(resolved)


def check_upload(name: str, data: bytes) -> None:
    if len(data) > MAX_UPLOAD_MB * 2**20:
        raise ValueError(f"{name}: {len(data) / 2**20:.1f} MB is over the upload limit of {MAX_UPLOAD_MB} MB")


def expire_uploads(folder: Path, keep: Path, days: float = UPLOAD_DAYS) -> int:
    """Delete the upload folders under ``folder`` untouched for ``days`` days (never ``keep``); returns how many."""
    if not folder.is_dir():
        return 0
    cutoff, removed = time.time() - days * 86400, 0
    for entry in folder.iterdir():
        if entry.is_dir() and entry != keep and entry.stat().st_mtime < cutoff:
            shutil.rmtree(entry, ignore_errors=True)
            removed += 1
    return removed
