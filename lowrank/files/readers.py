"""Reading a folder that another process may be replacing: every file from one version of it, or a one-line error.

:func:`lowrank.files.atomic.atomic_dir` replaces a folder by two renames, so a reader opening its files one by one
could take the config of the old copy and the weights of the new one. :func:`read_whole` notes the folder's
identity (device, inode, change time) before and after a read: when it changed in between, or the folder was
missing while a live writer had its old copy set aside, the read is repeated (:data:`ATTEMPTS` in all, a short
pause between), then refused with :class:`FolderReplaced`. Cost: two ``stat`` calls per read; a retry reads again.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from lowrank.files.atomic import replacing

ATTEMPTS = 3
PAUSE_S = 0.05
T = TypeVar("T")


class FolderReplaced(OSError):
    """The folder was replaced by another process during every attempt to read it."""


def identity(folder: Path) -> tuple[int, int, int] | None:
    """``(device, inode, change time)`` of ``folder``, ``None`` when nothing is there."""
    try:
        st = os.stat(folder)
    except OSError:
        return None
    return st.st_dev, st.st_ino, st.st_ctime_ns


def read_whole(folder: str | Path, read: Callable[[], T]) -> T:
    """``read()``, whose files all came from one version of ``folder``.

    A read during which ``folder`` was replaced (its identity changed, or it was missing mid-replacement)
    is repeated; its error, if any, is dropped, since it may come from mixing two versions. An error of a
    read the folder did not change under is raised as it is. After :data:`ATTEMPTS` disturbed reads:
    :class:`FolderReplaced` ("being replaced, retry").
    """
    folder = Path(folder)
    for attempt in range(ATTEMPTS):
        before = identity(folder)
        try:
            result, error = read(), None
        except Exception as err:  # judged below: raised unless the folder changed meanwhile
            result, error = None, err
        after = identity(folder)
        if before == after and not (after is None and replacing(folder)):
            if error is not None:
                raise error
            return result
        time.sleep(PAUSE_S * (attempt + 1))
    raise FolderReplaced(f"{folder} is being replaced by another process; retry")
