"""The errors bad input causes, in one place: the CLI prints each as one ``error: ...`` line (exit 2),
the dashboard as a message on the page; anything else is a bug and keeps its traceback.

The library's own types (:class:`ModelLoadError`, :class:`TaskError`, :class:`AssetError`; every
validation raises ``ValueError``; a diverging fine-tuning ``FloatingPointError``) and ``OSError``
(a file that cannot be read or written: :func:`describe` names it).
"""

from __future__ import annotations

from lowrank.assets import AssetError
from lowrank.data.tasks import TaskError
from lowrank.models.errors import ModelLoadError

USER_ERRORS: tuple[type[BaseException], ...] = (
    ModelLoadError,
    TaskError,
    AssetError,
    ValueError,
    FloatingPointError,
    OSError,
)


def describe(err: BaseException) -> str:
    """One line for a user error: ``<file>: <reason>`` for an ``OSError``, else the message's first line."""
    if isinstance(err, OSError) and err.filename is not None:
        return f"{err.filename}: {err.strerror or type(err).__name__}"
    text = str(err).strip()
    if isinstance(err, KeyError) and len(err.args) == 1:
        text = str(err.args[0])
    return text.splitlines()[0] if text else type(err).__name__
