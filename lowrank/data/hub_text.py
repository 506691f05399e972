"""Hub text datasets as language-modelling corpora: ``hf:<dataset id>[:<config>][#<column>]``.

``hf:wikitext:wikitext-2-raw-v1`` is the ``wikitext`` dataset's ``wikitext-2-raw-v1`` configuration, read through
``datasets`` (Parquet or other data files only: ``datasets`` runs no dataset scripts, and nothing here passes
``trust_remote_code``). Each non-empty row of the text column is one document, in the dataset's own
``train`` / ``validation`` / ``test`` splits (whichever it has). The column is ``#<column>`` when given, else
``text``, else the dataset's only string column. When the hub is unreachable or offline mode is set
(:func:`lowrank.data.tasks.hub_reachable`), ``datasets`` runs in offline mode and reads its local cache; a dataset
that is not cached is a one-line :class:`~lowrank.data.tasks.TaskError`, at once, without network retries.
Cost: the dataset's download once (then its cache), and one pass over its rows.
"""

from __future__ import annotations

from contextlib import contextmanager
from unittest import mock

import datasets
import huggingface_hub.constants

from lowrank.data.tasks import PREFIXED, SPLITS, Task, TaskError, hub_reachable

PREFIX = "hf:"
TEXT_COLUMN = "text"


def parse(name: str) -> tuple[str, str | None, str | None]:
    """``(dataset id, config or None, column or None)`` of ``hf:<id>[:<config>][#<column>]``."""
    body, _, column = name.removeprefix(PREFIX).partition("#")
    path, _, config = body.partition(":")
    if not path.strip() or (_ and not config.strip()):
        raise TaskError(
            f"{name!r}: a hub dataset is named hf:<dataset id>[:<config>][#<column>], "
            "e.g. hf:wikitext:wikitext-2-raw-v1"
        )
    return path.strip(), config.strip() or None, column.strip() or None


@contextmanager
def offline():
    """``datasets`` and ``huggingface_hub`` in offline mode: the local cache only, no request sent."""
    with (
        mock.patch.object(datasets.config, "HF_HUB_OFFLINE", True),
        mock.patch.object(huggingface_hub.constants, "HF_HUB_OFFLINE", True),
    ):
        yield


def _text_column(name: str, dataset, column: str | None) -> str:
    strings = [c for c, f in dataset.features.items() if getattr(f, "dtype", None) in ("string", "large_string")]
    if column is not None:
        if column not in dataset.column_names:
            raise TaskError(f"{name}: no column {column!r}; it has {', '.join(dataset.column_names)}")
        return column
    if TEXT_COLUMN in dataset.column_names:
        return TEXT_COLUMN
    if len(strings) == 1:
        return strings[0]
    raise TaskError(
        f"{name}: no 'text' column and {len(strings)} string columns ({', '.join(strings) or 'none'}); "
        "name one: hf:<dataset id>[:<config>]#<column>"
    )


def load_hub_text(name: str) -> Task:
    """The corpus ``hf:<id>[:<config>][#<column>]`` (see the module docstring)."""
    path, config, column = parse(name)
    reachable = hub_reachable()
    try:
        if reachable:
            loaded = datasets.load_dataset(path, config)
        else:
            with offline():
                loaded = datasets.load_dataset(path, config)
    except Exception as err:  # datasets raises many types for unknown, unreachable or uncached sets
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if not reachable:
            raise TaskError(
                f"{name} needs the hub (huggingface.co is unreachable or offline mode is set) and is not in the "
                f"local datasets cache ({reason})"
            ) from err
        raise TaskError(f"could not load {name} through `datasets`: {reason}") from err
    texts = {}
    for split in SPLITS:
        if split in loaded:
            rows = loaded[split]
            key = _text_column(name, rows, column)
            texts[split] = [t for t in rows[key] if isinstance(t, str) and t.strip()]
    if not texts:
        raise TaskError(f"{name}: none of the splits {', '.join(SPLITS)}; it has {', '.join(loaded)}")
    task = Task(name, "lm", texts, source="datasets")
    task.meta.update(dataset=path, config=config, column=column or _text_column(name, loaded[next(iter(texts))], None))
    return task


PREFIXED[PREFIX] = load_hub_text
