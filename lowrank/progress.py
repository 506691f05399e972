"""What a long call tells its caller while it runs: progress, and one-line notices.

A progress callback is any ``fn(done: int, total: int, message: str) -> None``.
Library functions take ``progress=None`` and call :func:`report`; :class:`TqdmProgress` draws the
calls as a terminal progress bar. :func:`notice`
says something the caller did not ask about (a restored folder, a cache it could not use)
on the ``lowrank`` logger.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

Progress = Callable[[int, int, str], None]

logger = logging.getLogger("lowrank")


def notice(message: str) -> None:
    """A one-line notice on stderr (the ``lowrank`` logger at warning level)."""
    logger.warning(message)


def report(progress: Progress | None, done: int, total: int, message: str = "") -> None:
    if progress is not None:
        progress(done, total, message)


def scaled(progress: Progress | None, start: float, stop: float) -> Progress | None:
    """A callback mapping a sub-task's [0, total] onto the [start, stop] fraction of ``progress`` (out of 1000)."""
    if progress is None:
        return None

    def inner(done: int, total: int, message: str = "") -> None:
        fraction = start + (stop - start) * (done / total if total else 1.0)
        progress(int(round(1000 * fraction)), 1000, message)

    return inner


class TqdmProgress:
    """A tqdm bar driven by progress callbacks; the bar is re-created when the message's stage changes."""

    def __init__(self, disable: bool = False):
        self.bar = None
        self.disable = disable

    def __call__(self, done: int, total: int, message: str = "") -> None:
        from tqdm.auto import tqdm

        if self.bar is None or self.bar.total != total or done < self.bar.n:
            self.close()
            self.bar = tqdm(total=total, disable=self.disable, dynamic_ncols=True)
        self.bar.set_description(message[:60], refresh=False)
        self.bar.update(done - self.bar.n)
        if done >= total:
            self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
