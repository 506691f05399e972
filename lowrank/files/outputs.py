"""May this path be written? The one decision on replacing an output, from what the tool wrote there.

Every folder the atomic writer fills holds a marker file (:data:`MARKER`) listing the files it wrote.
:func:`writable_output` allows a folder to be replaced when it is missing, empty or the tool's own (its
marker lists everything in it; a folder without a marker: only :data:`MODEL_FILES` plus one of
:data:`RECORD_FILES`), and never a file, a link, a folder holding anything else, or the working
directory and its parents. :func:`writable_file` decides the same for single files (rank plans, reports)
from their bytes. Cost: one listing of the folder and one read of its marker.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from fnmatch import fnmatch
from pathlib import Path

MARKER = ".lowrank-output"
# Files this tool writes into a model folder; a folder without a marker is ours when it holds only these
# and at least one of RECORD_FILES (only lowrank writes those).
MODEL_FILES = (
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "model-*-of-*.safetensors",
    "model.safetensors.index.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "tokenizer.model",
    "spiece.model",
    "chat_template.jinja",
    "chat_template.json",
)
RECORD_FILES = ("lowrank.json", "masks.safetensors", "pruning.json", "training.json")


class OutputError(ValueError):
    """An output path may not be written (it holds something this tool did not write)."""


def writable_output(target: str | Path, force: bool = False) -> Path:
    """``target`` if the folder may be (re)written, else :class:`OutputError` (one line, naming it).

    Allowed: a missing path, an empty folder, a folder whose marker lists everything in it, and a
    folder without a marker holding only model files plus one of :data:`RECORD_FILES`. ``force``
    also allows a folder of model files alone (no marker or record: it may be a model of yours).
    Never, even with ``force``: a file, a symbolic link, a folder holding other files, the working
    directory or one of its parents.
    """
    target = Path(target)
    if target.is_symlink():
        raise OutputError(f"{target} is a symbolic link; refusing to replace it (give another output folder)")
    if not target.exists():
        return target
    here, resolved = Path.cwd().resolve(), target.resolve()
    if resolved == here or resolved in here.parents:
        raise OutputError(f"{target} is the working directory or one of its parents; refusing to replace it")
    if not target.is_dir():
        raise OutputError(f"{target} is a file, not a folder; refusing to replace it (give another output folder)")
    try:
        entries = sorted(p.name for p in target.iterdir())
    except OSError as err:
        raise OutputError(f"{target} cannot be read ({err.strerror}); refusing to replace it") from err
    listed = read_marker(target)
    if listed is not None:
        foreign = [n for n in entries if n != MARKER and n not in listed]
    else:
        foreign = [n for n in entries if not any(fnmatch(n, p) for p in (*MODEL_FILES, *RECORD_FILES))]
    if foreign:
        more = f" and {len(foreign) - 3} more" if len(foreign) > 3 else ""
        raise OutputError(
            f"{target} holds {', '.join(foreign[:3])}{more}, which lowrank did not write; refusing to "
            "replace it (move those away or give another output folder)"
        )
    if entries and listed is None and not any(n in RECORD_FILES for n in entries) and not force:
        raise OutputError(
            f"{target} holds a model that lowrank did not mark as its output; "
            "replace it with --force (force=True) or give another output folder"
        )
    return target


def writable_file(path: str | Path, ours: Callable[[bytes], bool]) -> Path:
    """``path`` if the file may be (re)written: missing, or a regular file whose bytes ``ours`` recognises
    as this tool's; :class:`OutputError` (one line) otherwise."""
    path = Path(path)
    if path.is_symlink():
        raise OutputError(f"{path} is a symbolic link; refusing to replace it (give another file name)")
    if not path.exists():
        return path
    if not path.is_file():
        raise OutputError(f"{path} is a folder, not a file; refusing to replace it (give another file name)")
    if not ours(path.read_bytes()):
        raise OutputError(
            f"{path} exists and was not written by lowrank; refusing to overwrite it "
            "(remove it or give another file name)"
        )
    return path


def read_marker(folder: Path) -> list[str] | None:
    """The files the marker in ``folder`` lists, or ``None`` when there is no readable marker."""
    try:
        data = json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    files = data.get("files")
    return [str(f) for f in files] if isinstance(files, list) else []


def write_marker(folder: Path, files: list[str] | None) -> None:
    (folder / MARKER).write_text(json.dumps({"written_by": "lowrank", "files": files}) + "\n")
