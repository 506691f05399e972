"""Stop requests for a background worker: SIGTERM sets a flag that long work checks at every progress tick."""

from __future__ import annotations

import threading

from lowrank.progress import Progress

_STOP = threading.Event()  # set by SIGTERM in a worker process


def interrupt(signum, frame):
    """SIGTERM handler: remember the request and raise at once."""
    _STOP.set()
    raise KeyboardInterrupt(f"signal {signum}")


def check_stop() -> None:
    """Raise ``KeyboardInterrupt`` when a stop was requested.

    The SIGTERM handler raises at once, but Python only prints an exception raised while a
    ``__del__`` or a C callback is running (``Exception ignored in ...``), so a signal landing
    there would be lost; progress callbacks wrapped by :func:`stoppable` and the end of a sweep call this to
    notice it at the next progress tick.
    """
    if _STOP.is_set():
        raise KeyboardInterrupt("stop requested")


def request_stop() -> None:
    """Ask this process's long work to stop at its next progress tick (a stop request read from the run store)."""
    _STOP.set()


def stoppable(progress: Progress) -> Progress:
    """``progress`` that first checks for a stop request (see :func:`check_stop`)."""

    def checked(done: int, total: int, message: str = "") -> None:
        check_stop()
        progress(done, total, message)

    return checked
