"""Files: the cache folder, safe atomic writes of outputs, and one conversion of results to JSON.

Outputs. Every folder :func:`atomic_dir` writes holds a marker file (:data:`MARKER`) listing the
files it wrote. :func:`writable_output` is the one decision on whether a folder may be replaced:
a missing path, an empty folder or a folder this tool wrote, never a file, a link, a folder holding
anything else, or the working directory and its parents. :func:`writable_file` decides the same
for single files (rank plans).

Crash safety. Temporary and set-aside copies are hidden siblings named with the writer's process
id and start time (``.<name>.tmp-<pid>-<start>-<token>``, ``.<name>.old-<pid>-<start>-<token>``).
When their process is dead, :func:`recover` (called by the loaders and by every atomic write in
the same folder) restores a set-aside copy whose target is missing and deletes the rest.

Files and folders get the user's umask defaults (not the 0600 / 0700 of ``tempfile`` or of the
writers a block calls, e.g. safetensors).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import secrets
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from fnmatch import fnmatch
from pathlib import Path

import numpy as np
import pandas as pd
import psutil

from lowrank.processes import own_start, process_alive

MARKER = ".lowrank-output"
# Files this tool writes into a model folder; a folder written before markers existed is ours when it
# holds only these and at least one of RECORD_FILES (only lowrank writes those).
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
# Tests only: seconds atomic_dir sleeps between renaming the old folder aside and the new one in, so a
# test can kill the process inside that window deterministically.
PAUSE_ENV = "LOWRANK_TEST_PAUSE_BETWEEN_RENAMES"
LEGACY_AGE_S = 24 * 3600  # temporary folders of older versions (no pid in the name) are removed after a day

_HIDDEN = re.compile(r"^\.(?P<name>.+)\.(?P<kind>tmp|old)-(?P<pid>\d+)-(?P<start>\d+)-[0-9a-f]+$")
_LEGACY_OLD = re.compile(r"^\.(?P<name>.+)\.(?P<kind>old)-(?P<pid>\d+)$")
_LEGACY_TMP = re.compile(r"^\.(?P<name>.+)\.(?P<kind>tmp)-[a-z0-9_]{8}$")

logger = logging.getLogger("lowrank")


class OutputError(ValueError):
    """An output path may not be written (it holds something this tool did not write)."""


def notice(message: str) -> None:
    """A one-line notice on stderr (the ``lowrank`` logger at warning level)."""
    logger.warning(message)


def cache_dir() -> Path:
    root = Path(os.environ.get("LOWRANK_CACHE", Path.home() / ".cache" / "lowrank")).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    return root


# ---------------------------------------------------------------- may this path be written?


def writable_output(target: str | Path, force: bool = False) -> Path:
    """``target`` if the folder may be (re)written, else :class:`OutputError` (one line, naming it).

    Allowed: a missing path, an empty folder, a folder whose marker lists everything in it, and a
    folder of older versions holding only model files plus one of :data:`RECORD_FILES`. ``force``
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
    listed = _marker_files(target)
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


def _marker_files(folder: Path) -> list[str] | None:
    """The files the marker in ``folder`` lists, or ``None`` when there is no readable marker."""
    try:
        data = json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    files = data.get("files")
    return [str(f) for f in files] if isinstance(files, list) else []


def _write_marker(folder: Path, files: list[str] | None) -> None:
    (folder / MARKER).write_text(json.dumps({"written_by": "lowrank", "files": files}) + "\n")


# ---------------------------------------------------------------- atomic writes and recovery


def _hidden(target: Path, kind: str) -> Path:
    return target.with_name(f".{target.name}.{kind}-{os.getpid()}-{own_start()}-{secrets.token_hex(4)}")


def _umask() -> int:
    """The process's umask (read without changing it where /proc allows)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _apply_umask(folder: Path) -> None:
    """Give ``folder`` and everything in it the permissions the umask gives new files and folders."""
    mask = _umask()
    folder.chmod(0o777 & ~mask)
    for root, dirs, files in os.walk(folder):
        for names, mode in ((dirs, 0o777), (files, 0o666)):
            for path in (os.path.join(root, n) for n in names):
                if not os.path.islink(path):
                    os.chmod(path, mode & ~mask)


def _pause_for_tests() -> None:
    seconds = os.environ.get(PAUSE_ENV)
    if seconds:
        time.sleep(float(seconds))


@contextmanager
def atomic_dir(target: str | Path, force: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling folder; when the block succeeds it replaces ``target``.

    ``target`` must pass :func:`writable_output` (checked before the block and again after it).
    The folder gets the marker at once, and at the end the list of its files and the umask's
    permissions. An existing target is renamed aside, the new folder renamed in, the old one
    removed: a process killed in between leaves the old copy, which :func:`recover` restores.
    Leftovers of dead writers in the parent folder are cleaned first. On error the temporary
    folder is removed and ``target`` is as it was.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    _sweep(target.parent)
    writable_output(target, force)
    tmp = _hidden(target, "tmp")
    tmp.mkdir()
    try:
        _write_marker(tmp, None)
        yield tmp
        _write_marker(tmp, sorted(p.name for p in tmp.iterdir() if p.name != MARKER))
        _apply_umask(tmp)
        writable_output(target, force)
        if os.path.lexists(target):
            old = _hidden(target, "old")
            target.rename(old)
            _pause_for_tests()
            try:
                tmp.rename(target)
            except BaseException:
                old.rename(target)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary sibling and ``os.replace`` (the user's umask, not 0600)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _sweep(path.parent)
    tmp = _hidden(path, "tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def recover(target: str | Path) -> None:
    """Repair what killed writers left at ``target``: if it is missing, restore the copy a killed
    replacement set aside; remove its temporary and set-aside copies of dead processes."""
    target = Path(target)
    if target.name and target.parent.is_dir():
        _sweep(target.parent, target.name)


def _leftover(entry: Path) -> tuple[str, str] | None:
    """``(target name, "tmp" | "old")`` when ``entry`` is a leftover of a dead writer of this tool, else ``None``."""
    if match := _HIDDEN.match(entry.name):
        if process_alive(int(match["pid"]), float(match["start"])):
            return None
        if match["kind"] == "tmp" and entry.is_dir() and not (entry / MARKER).exists():
            return None
    elif match := _LEGACY_OLD.match(entry.name):
        if psutil.pid_exists(int(match["pid"])) or not entry.is_dir():
            return None
    elif match := _LEGACY_TMP.match(entry.name):
        if not entry.is_dir() or entry.is_symlink() or time.time() - entry.stat().st_mtime < LEGACY_AGE_S:
            return None
        if not all(any(fnmatch(p.name, pat) for pat in (*MODEL_FILES, *RECORD_FILES)) for p in entry.iterdir()):
            return None
    else:
        return None
    return match["name"], match["kind"]


def _sweep(parent: Path, name: str | None = None) -> None:
    """Restore or remove leftovers of dead writers in ``parent`` (only those of target ``name`` when given)."""
    try:
        entries = [e for e in parent.iterdir() if e.name.startswith(".")]
    except OSError:
        return
    found = []
    for entry in entries:
        try:
            leftover = _leftover(entry)
            if leftover is not None and (name is None or leftover[0] == name):
                found.append((entry, *leftover, entry.lstat().st_mtime))
        except OSError:
            continue
    found.sort(key=lambda item: (item[2] != "old", -item[3]))  # set-aside copies first, newest first
    for entry, base, kind, _ in found:
        target = parent / base
        try:
            if kind == "old" and not os.path.lexists(target):
                entry.rename(target)
                notice(f"restored {target} from the copy an interrupted save had set aside")
            elif entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        except OSError:
            continue


# ---------------------------------------------------------------- JSON


def to_jsonable(value):
    """``value`` with numpy scalars/arrays, DataFrames and non-finite floats made JSON-safe (NaN/inf -> None)."""
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return to_jsonable(value.tolist())
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return None if not math.isfinite(float(value)) else float(value)
    if isinstance(value, pd.DataFrame):
        return to_jsonable(value.to_dict(orient="records"))
    return value if isinstance(value, (str, int, bool, type(None))) else str(value)
