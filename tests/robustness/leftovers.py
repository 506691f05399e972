"""Hidden folders as a killed save leaves them (a holder with its owner file), and ones a user made that look alike."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import psutil

from lowrank.files.atomic import CONTENT, OWNER


def dead_pid() -> int:
    """The id of a process that has ended (it may be reused later; the recorded start time still tells)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def dead_number(start: int = 2023) -> int:
    """The first number from ``start`` that is no live process id (the issue's ``.results.old-2023``)."""
    while psutil.pid_exists(start):
        start += 1
    return start


def killed_copy(parent: Path, target: str, kind: str, pid: int, start: int, payload: str = "x") -> Path:
    """The holder a save of ``target`` by process ``(pid, start)`` leaves when killed: its owner file, and its copy
    (``CONTENT``, a folder with ``lowrank.json`` reading ``payload``)."""
    holder = parent / f".{target}.{kind}-{pid}-{start}-0badc0de"
    holder.mkdir()
    owner = {"written_by": "lowrank", "pid": pid, "start": start, "kind": kind, "target": target}
    (holder / OWNER).write_text(json.dumps(owner) + "\n")
    (holder / CONTENT).mkdir()
    (holder / CONTENT / "lowrank.json").write_text(payload)
    return holder
