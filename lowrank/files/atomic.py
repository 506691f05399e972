"""Atomic writes and their recovery: an output is either the old copy or the whole new one.

:func:`atomic_dir` fills a hidden temporary sibling and renames it in place of the target (the old copy
renamed aside first, removed last); :func:`atomic_write_bytes` does the same for one file with
``os.replace``. Temporary and set-aside copies are named with the writer's process id and start time
(``.<name>.tmp-<pid>-<start>-<token>``, ``.<name>.old-<pid>-<start>-<token>``): when that process is
dead, :func:`recover` (called by the loaders and by every atomic write in the same folder) restores a
set-aside copy whose target is missing and deletes the rest. Files and folders get the user's umask
defaults (not the 0600 / 0700 of ``tempfile`` or of safetensors). Cost: two renames per write and one
listing of the parent folder.
"""

from __future__ import annotations

import glob
import os
import re
import secrets
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from fnmatch import fnmatch
from pathlib import Path

import psutil

from lowrank.files.outputs import MARKER, MODEL_FILES, RECORD_FILES, writable_output, write_marker
from lowrank.processes import own_start, process_alive
from lowrank.progress import notice

# Tests only: seconds atomic_dir sleeps between renaming the old folder aside and the new one in, so a
# test can kill the process inside that window deterministically.
PAUSE_ENV = "LOWRANK_TEST_PAUSE_BETWEEN_RENAMES"
LEGACY_AGE_S = 24 * 3600  # temporary folders named without a pid are removed after a day

_HIDDEN = re.compile(r"^\.(?P<name>.+)\.(?P<kind>tmp|old)-(?P<pid>\d+)-(?P<start>\d+)-[0-9a-f]+$")
_LEGACY_OLD = re.compile(r"^\.(?P<name>.+)\.(?P<kind>old)-(?P<pid>\d+)$")
_LEGACY_TMP = re.compile(r"^\.(?P<name>.+)\.(?P<kind>tmp)-[a-z0-9_]{8}$")


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
        write_marker(tmp, None)
        yield tmp
        write_marker(tmp, sorted(p.name for p in tmp.iterdir() if p.name != MARKER))
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


def replacing(target: str | Path) -> bool:
    """True while a live process is between the two renames of :func:`atomic_dir` at ``target``: its old
    copy set aside, the new one not yet in place (a reader finds no folder there for that moment)."""
    target = Path(target)
    try:
        entries = list(target.parent.glob(f".{glob.escape(target.name)}.old-*"))
    except OSError:
        return False
    for entry in entries:
        match = _HIDDEN.match(entry.name)
        if match and match["name"] == target.name and process_alive(int(match["pid"]), float(match["start"])):
            return True
    return False


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
