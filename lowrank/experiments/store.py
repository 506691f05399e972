"""Run store: every compression run, sweep, model build and background measurement, persisted in one SQLite file.

One row per run (model, task, method, ranks, measurements, timings), per sweep, build and measurement (the background jobs
of :mod:`lowrank.experiments.jobs`: spec, progress, message, heartbeat). A row is ``running`` while the process that
owns it (host, pid, start time) is alive, then ``done``, ``failed`` (``error`` holds the message) or ``interrupted``
(stopped from outside, or its process died: :meth:`RunStore.reap`, which every read calls first). At most one build
runs per model (:meth:`RunStore.start_build`). Default file ``<cache>/runs.sqlite`` (``LOWRANK_CACHE``). Every call
opens its own connection, in WAL mode, writes take the lock up front (``BEGIN IMMEDIATE``), so the dashboard, workers
and the CLI write one file at the same time; a file that fails SQLite's quick check is moved aside to
``<file>.corrupt-<timestamp>`` (never deleted) and a fresh store started; a store is created only where nothing
exists, never over a folder or another kind of file (:func:`lowrank.validate.store_path`). The tables' columns and
how an older file gains new ones: :mod:`lowrank.experiments.schema`. Cost: a connection per call.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd

from lowrank.experiments.jobs import ending
from lowrank.experiments.schema import (
    JOB_COLUMNS,
    RUN_COLUMNS,
    SWEEP_COLUMNS,
    TABLES,
    check_fields,
    create_table,
    decode_run,
    decode_spec,
)
from lowrank.files.cache import cache_dir
from lowrank.processes import process_alive, process_started
from lowrank.progress import notice
from lowrank.validate import store_path


def default_path() -> Path:
    return cache_dir() / "runs.sqlite"


def _owner() -> dict:
    pid = os.getpid()
    return {"host": socket.gethostname(), "pid": pid, "pid_started": process_started(pid)}


class RunHandle:
    """A started run: :meth:`update` measurements, :meth:`finish` when done."""

    def __init__(self, store: RunStore, run_id: int):
        self.store = store
        self.id = run_id
        self.finished = False

    def update(self, **fields) -> None:
        self.store.update_run(self.id, **fields)

    def finish(self, **fields) -> None:
        self.store.finish_run(self.id, **fields)
        self.finished = True

    def end(self, status: str, error: str | None = None) -> None:
        """End the run as :func:`lowrank.experiments.jobs.ending` decided (``done``: unless :meth:`finish` did)."""
        if status != "done":
            self.store.fail_run(self.id, error, status)
        elif not self.finished:
            self.finish()


class RunStore:
    """Runs, sweeps and builds in one SQLite file (see module docstring). Cheap to create: no connection is kept."""

    def __init__(self, path: str | Path | None = None):
        self.path = store_path(path if path is not None else default_path())
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._open()
        except sqlite3.DatabaseError as err:
            if not _is_corrupt(err):
                raise ValueError(f"{self.path}: cannot open the run store ({err})") from err
            aside = self._move_aside()
            notice(f"{self.path} is not a valid run database ({err}); moved it to {aside.name} and started a new one")
            self._open()

    def _open(self) -> None:
        """Check the file and create the tables (``sqlite3.DatabaseError`` when the file is corrupt)."""
        with self._connect() as conn:
            conn.execute("PRAGMA journal_mode=WAL")
            problem = conn.execute("PRAGMA quick_check").fetchone()[0]
            if problem != "ok":
                raise CorruptStore(f"quick check: {problem}")
        with self._write() as conn:
            for table, columns in TABLES.items():
                create_table(conn, table, columns)

    def _move_aside(self) -> Path:
        """Rename the database (and its -wal / -shm files) to ``<name>.corrupt-<timestamp>``; returns the new path."""
        stamp = time.strftime("%Y%m%d-%H%M%S")
        aside, n = self.path.with_name(f"{self.path.name}.corrupt-{stamp}"), 1
        while aside.exists():
            aside, n = self.path.with_name(f"{self.path.name}.corrupt-{stamp}-{n}"), n + 1
        for suffix in ("-wal", "-shm"):
            companion = self.path.with_name(self.path.name + suffix)
            if companion.exists():
                companion.rename(aside.with_name(aside.name + suffix))
        self.path.rename(aside)
        return aside

    # ------------------------------------------------------------ connections

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        conn = sqlite3.connect(self.path, timeout=60.0, isolation_level=None)
        conn.row_factory = sqlite3.Row
        try:
            conn.execute("PRAGMA busy_timeout=60000")
            yield conn
        finally:
            conn.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self._connect() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def _insert(self, table: str, columns: dict[str, str], fields: dict, conn: sqlite3.Connection | None = None) -> int:
        """Insert a row; inside the write transaction ``conn`` when given, else in one of its own."""
        if conn is None:
            with self._write() as conn:
                return self._insert(table, columns, fields, conn)
        fields = check_fields(fields, columns)
        names = ", ".join(f'"{k}"' for k in fields)
        marks = ", ".join("?" for _ in fields)
        cursor = conn.execute(f"INSERT INTO {table} ({names}) VALUES ({marks})", tuple(fields.values()))
        return int(cursor.lastrowid)

    def _update(self, table: str, columns: dict[str, str], row_id: int, fields: dict) -> None:
        fields = check_fields(fields, columns)
        if not fields:
            return
        sets = ", ".join(f'"{k}" = ?' for k in fields)
        with self._write() as conn:
            cursor = conn.execute(f"UPDATE {table} SET {sets} WHERE id = ?", (*fields.values(), int(row_id)))
            if cursor.rowcount == 0:
                raise KeyError(f"no {table[:-1]} with id {row_id} in {self.path}")

    # ------------------------------------------------------------ runs

    def start_run(self, **fields) -> int:
        """Insert a ``running`` row owned by this process; returns its id."""
        return self._insert("runs", RUN_COLUMNS, {"status": "running", "created": time.time(), **_owner(), **fields})

    def update_run(self, run_id: int, **fields) -> None:
        self._update("runs", RUN_COLUMNS, run_id, fields)

    def finish_run(self, run_id: int, **fields) -> None:
        self._update("runs", RUN_COLUMNS, run_id, {**fields, "status": "done", "finished": time.time()})

    def fail_run(self, run_id: int, error: str, status: str = "failed") -> None:
        if status not in ("failed", "interrupted"):
            raise ValueError(f"a run ends as 'failed' or 'interrupted', not {status!r}")
        self._update("runs", RUN_COLUMNS, run_id, {"status": status, "error": error, "finished": time.time()})

    @contextmanager
    def record(self, **fields) -> Iterator[RunHandle]:
        """Start a run; the block calls ``handle.finish(**measurements)``. The run ends as every job does
        (:func:`lowrank.experiments.jobs.ending`): ``failed`` or ``interrupted`` when the block raises (the exception
        propagates), else ``done``, with what was updated when the block did not call ``finish``."""
        handle = RunHandle(self, self.start_run(**fields))
        with ending(handle.end):
            yield handle

    def _row(self, table: str, kind: str, row_id: int) -> dict:
        """The row ``row_id`` of ``table`` (after :meth:`reap`), undecoded; ``KeyError`` naming the ``kind`` when absent."""
        self.reap()
        with self._connect() as conn:
            row = conn.execute(f"SELECT * FROM {table} WHERE id = ?", (int(row_id),)).fetchone()
        if row is None:
            raise KeyError(f"no {kind} with id {row_id} in {self.path}")
        return dict(row)

    def get_run(self, run_id: int) -> dict:
        return decode_run(self._row("runs", "run", run_id))

    def runs(self, **filters) -> pd.DataFrame:
        """All runs (newest first) as a DataFrame, optionally filtered by equality on columns
        (``status`` may also be a list); ``created``/``finished`` as datetimes, JSON columns decoded."""
        self.reap()
        where, params = [], []
        for key, value in filters.items():
            if key not in RUN_COLUMNS and key != "id":
                raise ValueError(f"cannot filter runs by {key!r}")
            if isinstance(value, (list, tuple, set)):
                where.append(f'"{key}" IN ({", ".join("?" for _ in value)})')
                params.extend(value)
            elif value is None:
                where.append(f'"{key}" IS NULL')
            else:
                where.append(f'"{key}" = ?')
                params.append(value)
        query = "SELECT * FROM runs" + (f" WHERE {' AND '.join(where)}" if where else "") + " ORDER BY id DESC"
        with self._connect() as conn:
            rows = [decode_run(dict(r)) for r in conn.execute(query, params)]
        frame = pd.DataFrame(rows, columns=["id", *RUN_COLUMNS])
        for column in ("created", "finished"):
            frame[column] = pd.to_datetime(frame[column], unit="s")
        return frame

    def find_run(self, **filters) -> dict | None:
        """The newest ``done`` run matching ``filters`` (e.g. a dense reference), or ``None``."""
        frame = self.runs(status="done", **filters)
        return None if frame.empty else self.get_run(int(frame["id"].iloc[0]))

    def reap(self) -> int:
        """Mark ``running`` runs and jobs of dead processes on this host ``interrupted``; returns how many."""
        host = socket.gethostname()
        count = 0
        for table in TABLES:
            with self._connect() as conn:
                rows = conn.execute(
                    f"SELECT id, pid, pid_started FROM {table} WHERE status = 'running' AND host = ?", (host,)
                ).fetchall()
            dead = [r["id"] for r in rows if not process_alive(r["pid"], r["pid_started"])]
            if dead:
                with self._write() as conn:
                    marks = ", ".join("?" for _ in dead)
                    conn.execute(
                        f"UPDATE {table} SET status = 'interrupted', finished = ?, "
                        f"error = COALESCE(error, 'its process ended without finishing') "
                        f"WHERE status = 'running' AND id IN ({marks})",
                        (time.time(), *dead),
                    )
                count += len(dead)
        return count

    # ------------------------------------------------------------ jobs: sweeps, builds and measurements

    def get_job(self, table: str, job_id: int) -> dict:
        return decode_spec(self._row(table, table[:-1], job_id))

    def jobs(self, table: str, **filters) -> list[dict]:
        """The rows of job table ``table`` (newest first) whose columns equal ``filters`` (a list: any of its values;
        ``None``: not filtered), after :meth:`reap`."""
        unknown = sorted(set(filters) - set(JOB_COLUMNS[table]))
        if unknown:
            raise ValueError(f"cannot filter {table} by {unknown}")
        self.reap()
        where, params = [], []
        for column, value in filters.items():
            if value is not None:
                values = list(value) if isinstance(value, (list, tuple, set)) else [value]
                where.append(f'"{column}" IN ({", ".join("?" for _ in values)})')
                params.extend(values)
        query = f"SELECT * FROM {table}" + (f" WHERE {' AND '.join(where)}" if where else "") + " ORDER BY id DESC"
        with self._connect() as conn:
            return [decode_spec(dict(r)) for r in conn.execute(query, params)]

    def update_job(self, table: str, job_id: int, **fields) -> None:
        """Write ``fields`` and the row's ``updated`` time (with no fields: the job's heartbeat)."""
        self._update(table, JOB_COLUMNS[table], job_id, {**fields, "updated": time.time()})

    def claim_job(self, table: str, job_id: int, pid: int, **fields) -> None:
        """Record ``pid`` (a live process on this host) as the job's owner, and ``fields`` in the same write."""
        self.update_job(table, job_id, **fields, pid=pid, pid_started=process_started(pid), host=socket.gethostname())

    def end_job(
        self, table: str, job_id: int, status: str, message: str | None = None, error: str | None = None, **fields
    ) -> None:
        """End a job ``done``, ``failed`` or ``interrupted`` (a done sweep's progress is 1), writing ``fields`` too."""
        if status not in ("done", "failed", "interrupted"):
            raise ValueError(f"a {table[:-1]} ends as done, failed or interrupted, not {status!r}")
        fields.update(status=status, finished=time.time(), error=error)
        if message is not None:
            fields["message"] = message
        if status == "done" and "progress" in JOB_COLUMNS[table]:
            fields["progress"] = 1.0
        self.update_job(table, job_id, **fields)

    # ------------------------------------------------------------ sweeps

    def create_sweep(self, spec: dict, label: str = "", runs_total: int | None = None) -> int:
        """Insert a ``running`` sweep for ``spec`` (a JSON-able dict), owned by this process until its worker claims
        it (:meth:`claim_job`)."""
        now = time.time()
        return self._insert(
            "sweeps",
            SWEEP_COLUMNS,
            {
                "status": "running",
                "created": now,
                "updated": now,
                "label": label,
                "spec": json.dumps(spec, sort_keys=True),
                "progress": 0.0,
                "message": "starting",
                "runs_done": 0,
                "runs_total": runs_total,
                **_owner(),
            },
        )

    def update_sweep(self, sweep_id: int, **fields) -> None:
        self.update_job("sweeps", sweep_id, **fields)

    def end_sweep(self, sweep_id: int, status: str, error: str | None = None, message: str | None = None) -> None:
        self.end_job("sweeps", sweep_id, status, message, error)

    def get_sweep(self, sweep_id: int) -> dict:
        return self.get_job("sweeps", sweep_id)

    def sweeps(self, status: str | list | None = None) -> pd.DataFrame:
        """The sweeps (newest first, with ``status`` when given: one or a list) as a DataFrame, times as datetimes."""
        frame = pd.DataFrame(self.jobs("sweeps", status=status), columns=["id", *SWEEP_COLUMNS])
        for column in ("created", "updated", "finished"):
            frame[column] = pd.to_datetime(frame[column], unit="s")
        return frame

    # ------------------------------------------------------------ builds

    def start_named_job(self, table: str, name: str, spec: dict, needed: Callable[[], bool]) -> tuple[int | None, bool]:
        """Claim the job ``name`` of ``table`` (builds: a model; measurements: an identity) in one write transaction,
        so two processes never both start one.

        Returns ``(id, False)`` for the job of ``name`` already running, ``(None, False)`` when ``needed()`` says
        there is nothing to do, else ``(id, True)`` for a new ``running`` job of ``spec`` (a JSON-able dict) owned by
        this process until its worker claims it (:meth:`claim_job`)."""
        self.reap()
        now = time.time()
        with self._write() as conn:
            row = conn.execute(
                f"SELECT id FROM {table} WHERE name = ? AND status = 'running' ORDER BY id DESC LIMIT 1", (name,)
            ).fetchone()
            if row is not None:
                return int(row["id"]), False
            if not needed():
                return None, False
            fields = {
                "status": "running",
                "name": name,
                "spec": json.dumps(spec, sort_keys=True),
                "created": now,
                "updated": now,
                "step": 0,
                "message": "starting",
                **_owner(),
            }
            return self._insert(table, JOB_COLUMNS[table], fields, conn), True

    def start_build(self, name: str, spec: dict, needed: Callable[[], bool]) -> tuple[int | None, bool]:
        """:meth:`start_named_job` of the build of model ``name``: at most one runs per model."""
        return self.start_named_job("builds", name, spec, needed)

    def update_build(self, build_id: int, **fields) -> None:
        self.update_job("builds", build_id, **fields)

    def end_build(self, build_id: int, status: str, message: str, error: str | None = None) -> None:
        self.end_job("builds", build_id, status, message, error)

    def get_build(self, build_id: int) -> dict:
        return self.get_job("builds", build_id)

    def builds(self, name: str | None = None, status: str | None = None) -> list[dict]:
        """The builds (newest first), of model ``name`` and with ``status`` when given."""
        return self.jobs("builds", name=name, status=status)


class CorruptStore(sqlite3.DatabaseError):
    """The run database failed SQLite's integrity check."""


def _is_corrupt(err: sqlite3.DatabaseError) -> bool:
    """True for a damaged file (not a database, malformed), false for a busy or unreachable one."""
    if isinstance(err, CorruptStore):
        return True
    name = getattr(err, "sqlite_errorname", None)
    if name is not None:
        return name in ("SQLITE_CORRUPT", "SQLITE_NOTADB")
    return not isinstance(err, sqlite3.OperationalError)
