"""Atomic writes and their recovery: an output is either the old copy or the whole new one.

:func:`atomic_dir` fills a hidden temporary sibling and renames it in place of the target (the old copy
renamed aside first, removed last); :func:`atomic_write_bytes` does the same for one file with
``os.replace``. Each temporary or set-aside copy is the ``content`` of a hidden holder folder
``.<name>.tmp-<pid>-<start>-<token>`` / ``.<name>.old-<pid>-<start>-<token>`` whose :data:`OWNER` file,
written before the copy, records that pid, start time, kind and target name. Recovery touches a hidden
entry only when its owner file matches its name and that process is dead, or (a writer killed while creating
or removing the holder) when the holder holds nothing but a truncated owner file or none: :func:`recover` (the loaders:
reading, it never deletes) puts back a set-aside copy whose target is missing; every atomic write also
removes the other holders in its folder. A user's ``.results.old-2023`` is never ours. Files and folders
get the user's umask defaults (not the 0600 / 0700 of ``tempfile`` or of safetensors). Cost: two renames
per write, one small owner file, and one listing of the parent folder.
"""

from __future__ import annotations

import glob
import json
import os
import re
import secrets
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from lowrank.files.outputs import MARKER, writable_output, write_marker
from lowrank.processes import own_start, process_alive
from lowrank.progress import notice

# Tests only: seconds atomic_dir sleeps between renaming the old folder aside and the new one in, so a
# test can kill the process inside that window deterministically.
PAUSE_ENV = "LOWRANK_TEST_PAUSE_BETWEEN_RENAMES"
OWNER = ".lowrank-writer"  # in every holder: {"written_by", "pid", "start", "kind", "target"}
CONTENT = "content"  # in a holder: the temporary or set-aside copy itself
OWNER_MAX_BYTES = 4096  # a larger owner file is not one this tool wrote

_HOLDER = re.compile(r"^\.(?P<name>.+)\.(?P<kind>tmp|old)-(?P<pid>\d+)-(?P<start>\d+)-[0-9a-f]{8}$")


def _owner_text(pid: int, start: int, kind: str, target: str) -> str:
    """The :data:`OWNER` file of a holder of ``target`` written by process ``(pid, start)``."""
    owner = {"written_by": "lowrank", "pid": pid, "start": start, "kind": kind, "target": target}
    return json.dumps(owner) + "\n"


def _holder(target: Path, kind: str) -> Path:
    """A new hidden sibling of ``target`` holding only its :data:`OWNER` file; the copy goes in as ``CONTENT``."""
    pid, start = os.getpid(), own_start()
    holder = target.with_name(f".{target.name}.{kind}-{pid}-{start}-{secrets.token_hex(4)}")
    holder.mkdir()
    (holder / OWNER).write_text(_owner_text(pid, start, kind, target.name))
    return holder


def _remove(holder: Path) -> None:
    """Delete ``holder``, its :data:`OWNER` file last (a kill midway leaves it recognisable, never orphaned)."""
    for entry in holder.iterdir():
        if entry.name == OWNER:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    (holder / OWNER).unlink(missing_ok=True)
    holder.rmdir()


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
    holder = _holder(target, "tmp")
    try:
        tmp = holder / CONTENT
        tmp.mkdir()
        write_marker(tmp, None)
        yield tmp
        write_marker(tmp, sorted(p.name for p in tmp.iterdir() if p.name != MARKER))
        _apply_umask(tmp)
        writable_output(target, force)
        if os.path.lexists(target):
            old = _holder(target, "old")
            target.rename(old / CONTENT)
            _pause_for_tests()
            try:
                tmp.rename(target)
            except BaseException:
                (old / CONTENT).rename(target)
                raise
            with suppress(OSError):
                _remove(old)
        else:
            tmp.rename(target)
    finally:
        with suppress(OSError):
            _remove(holder)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary sibling and ``os.replace`` (the user's umask, not 0600)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _sweep(path.parent)
    holder = _holder(path, "tmp")
    try:
        fd = os.open(holder / CONTENT, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(holder / CONTENT, path)
    finally:
        with suppress(OSError):
            _remove(holder)


def recover(target: str | Path) -> None:
    """If ``target`` is missing because a killed replacement had set it aside, rename that copy back.

    Only a holder whose :data:`OWNER` file proves it (:func:`_owned`) is touched, and nothing is deleted
    but that holder once emptied: loaders call this, and a read deletes nothing of anyone's.
    """
    target = Path(target)
    if target.name and target.parent.is_dir():
        _sweep(target.parent, target.name, delete=False)


def replacing(target: str | Path) -> bool:
    """True while a live process is between the two renames of :func:`atomic_dir` at ``target``: its old
    copy set aside in an ``old`` holder, the new one not yet in place (a reader finds no folder there then)."""
    target = Path(target)
    try:
        entries = list(target.parent.glob(f".{glob.escape(target.name)}.old-*"))
    except OSError:
        return False
    for entry in entries:
        match = _HOLDER.match(entry.name)
        if (
            match
            and match["name"] == target.name
            and (entry / CONTENT).exists()
            and process_alive(int(match["pid"]), int(match["start"]))
        ):
            return True
    return False


def _owned(entry: Path) -> tuple[str, str] | None:
    """``(target name, "tmp" | "old")`` when ``entry`` is a holder of a dead writer of this tool, else ``None``.

    Its name must parse, it must be a real folder, and its :data:`OWNER` file (a regular file of at most
    :data:`OWNER_MAX_BYTES`) must record exactly the pid, start time, kind and target its name gives. A writer
    killed between creating the holder and finishing its owner file (or between removing the owner file and
    the folder) leaves a holder with nothing in it but a prefix of that owner file, or no file: that is
    ours too, and holds nothing of anyone's.
    """
    match = _HOLDER.match(entry.name)
    if match is None or entry.is_symlink() or not entry.is_dir():
        return None
    pid, start = int(match["pid"]), int(match["start"])
    expected = _owner_text(pid, start, match["kind"], match["name"])
    owner = entry / OWNER
    if owner.is_symlink() or (owner.exists() and not owner.is_file()):
        return None
    raw = b""
    if owner.exists():
        with owner.open("rb") as fh:
            raw = fh.read(OWNER_MAX_BYTES + 1)
    if len(raw) > OWNER_MAX_BYTES:
        return None
    try:
        complete = json.loads(raw) == json.loads(expected)
    except ValueError:
        complete = False
    cut_short = os.listdir(entry) in ([], [OWNER]) and expected.encode().startswith(raw)
    if not (complete or cut_short) or process_alive(pid, start):
        return None
    return match["name"], match["kind"]


def _sweep(parent: Path, name: str | None = None, delete: bool = True) -> None:
    """Put back set-aside copies whose target is missing and, with ``delete``, remove the other holders of
    dead writers in ``parent`` (only those of target ``name`` when given)."""
    try:
        entries = [e for e in parent.iterdir() if e.name.startswith(".")]
    except OSError:
        return
    found = []
    for entry in entries:
        try:
            owned = _owned(entry)
            if owned is not None and (name is None or owned[0] == name):
                found.append((entry, *owned, entry.lstat().st_mtime))
        except OSError:
            continue
    found.sort(key=lambda item: (item[2] != "old", -item[3]))  # set-aside copies first, newest first
    for entry, base, kind, _ in found:
        target, content = parent / base, entry / CONTENT
        try:
            if kind == "old" and not os.path.lexists(target) and os.path.lexists(content):
                content.rename(target)
                notice(f"restored {target} from the copy an interrupted save had set aside")
            if delete or os.listdir(entry) in ([], [OWNER]):
                _remove(entry)
        except OSError:
            continue
