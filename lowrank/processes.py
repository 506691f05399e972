"""Is a process still alive? One answer for the run store and the atomic writers (pid plus start time)."""

from __future__ import annotations

import os

import psutil


def process_started(pid: int) -> float | None:
    """Creation time of process ``pid`` (seconds since the epoch), ``None`` if there is no such live process."""
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
        return proc.create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def process_alive(pid: int | None, started: float | None) -> bool:
    """True when ``pid`` is a live process created at ``started`` (guards against recycled ids)."""
    if pid is None:
        return False
    now = process_started(int(pid))
    return now is not None and (started is None or abs(now - float(started)) < 1.0)


def own_start() -> int:
    """This process's start time in whole seconds (what temporary names record next to the pid)."""
    return int(process_started(os.getpid()) or 0)
