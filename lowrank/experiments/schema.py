"""Run store schema: the columns of its tables (runs, sweeps, builds, measurements), how a file made before a column existed
gains it (``ALTER TABLE``, then :data:`BACKFILL` for the old rows), and how values go in (JSON for containers, NULL
for non-finite floats) and come out (JSON columns decoded). :mod:`lowrank.experiments.store` reads and writes rows.
"""

from __future__ import annotations

import json
import math
import sqlite3

from lowrank.evaluation.perplexity import WINDOWS, protocol_text
from lowrank.evaluation.quality import classification_protocol

STATUSES = ("running", "done", "failed", "interrupted")

# column -> SQL type; ``id`` is the primary key
RUN_COLUMNS = {
    "sweep_id": "INTEGER",
    "status": "TEXT",
    "created": "REAL",
    "finished": "REAL",
    "model": "TEXT",
    "fingerprint": "TEXT",
    "task": "TEXT",
    "split": "TEXT",
    "eval_limit": "INTEGER",
    "method": "TEXT",
    "solver": "TEXT",
    "strategy": "TEXT",
    "budget": "REAL",
    "align": "INTEGER",
    "ranks": "TEXT",
    "options": "TEXT",
    "healing": "TEXT",  # what lowrank.heal did after factorization (settings, held-out KL, seconds), JSON; else NULL
    "metric": "TEXT",
    "value": "REAL",
    "loss": "REAL",
    "examples": "INTEGER",
    "params_total": "INTEGER",
    "params_linear": "INTEGER",
    "dense_params_linear": "INTEGER",
    "kept_fraction": "REAL",
    "size_bytes": "INTEGER",
    "latency_ms_b1": "REAL",
    "latency_ms_b32": "REAL",
    "latency_info": "TEXT",  # how the latencies were measured (lowrank.evaluation.latency.measure_latencies), JSON
    "throughput": "TEXT",  # tokens/s against dense, FLOP bound, conditions (lowrank.evaluation.throughput), JSON
    "protocol": "TEXT",  # how the quality was measured, in words (lowrank.evaluation.evaluation.measurement_protocol)
    "factorize_s": "REAL",
    "wall_s": "REAL",
    "output_dir": "TEXT",
    "error": "TEXT",
    "host": "TEXT",
    "pid": "INTEGER",
    "pid_started": "REAL",
}
JSON_COLUMNS = ("ranks", "options", "healing", "latency_info", "throughput")
# Runs stored before a column existed get this value when the column is added: (SQL expression, parameters).
# Every run before ``protocol`` was measured by ``evaluate``'s defaults then: windows of 256 tokens, texts cut at 128.
BACKFILL = {
    "protocol": (
        "CASE metric WHEN 'perplexity' THEN ? WHEN 'accuracy' THEN ? END",
        (protocol_text(WINDOWS, 256), classification_protocol(128)),
    )
}

SWEEP_COLUMNS = {
    "status": "TEXT",
    "created": "REAL",
    "updated": "REAL",
    "finished": "REAL",
    "label": "TEXT",
    "spec": "TEXT",
    "progress": "REAL",
    "message": "TEXT",
    "runs_done": "INTEGER",
    "runs_total": "INTEGER",
    "error": "TEXT",
    "host": "TEXT",
    "pid": "INTEGER",
    "pid_started": "REAL",
}

BUILD_COLUMNS = {
    "status": "TEXT",
    "name": "TEXT",  # the model the build makes (a packaged name or a folder)
    "spec": "TEXT",  # its recipe (lowrank.training.finetune.Recipe), JSON
    "created": "REAL",
    "updated": "REAL",
    "started": "REAL",  # when the steps began (ETA: from here)
    "finished": "REAL",
    "step": "INTEGER",
    "total": "INTEGER",
    "message": "TEXT",
    "error": "TEXT",
    "host": "TEXT",
    "pid": "INTEGER",
    "pid_started": "REAL",
}
MEASUREMENT_COLUMNS = BUILD_COLUMNS | {
    "name": "TEXT",  # the measurement's identity (lowrank.experiments.measure.LayerMeasurement.name)
    "spec": "TEXT",  # the measurement (model, its weight files, task, ranks, batches), JSON
    "result": "TEXT",  # its table once done, JSON records
}
# the tables of jobs (lowrank.experiments.jobs)
JOB_COLUMNS = {"sweeps": SWEEP_COLUMNS, "builds": BUILD_COLUMNS, "measurements": MEASUREMENT_COLUMNS}
TABLES = {"runs": RUN_COLUMNS, **JOB_COLUMNS}


def create_table(conn: sqlite3.Connection, table: str, columns: dict[str, str]) -> None:
    """Create ``table`` with ``columns`` (SQL types) and an ``id`` primary key; a file without a column gains it."""
    body = ", ".join(f'"{name}" {kind}' for name, kind in columns.items())
    conn.execute(f"CREATE TABLE IF NOT EXISTS {table} (id INTEGER PRIMARY KEY AUTOINCREMENT, {body})")
    present = {row["name"] for row in conn.execute(f"PRAGMA table_info({table})")}
    for name, kind in columns.items():  # a file without a column gains it (with its BACKFILL for old rows)
        if name not in present:
            conn.execute(f'ALTER TABLE {table} ADD COLUMN "{name}" {kind}')
            if table == "runs" and name in BACKFILL:
                expression, params = BACKFILL[name]
                conn.execute(f'UPDATE {table} SET "{name}" = {expression}', params)


def check_fields(fields: dict, columns: dict[str, str]) -> dict:
    """``fields`` as stored (:func:`clean`); ``ValueError`` for a field outside ``columns`` or an unknown status."""
    unknown = sorted(set(fields) - set(columns))
    if unknown:
        raise ValueError(f"unknown run store field(s) {unknown}; known: {', '.join(columns)}")
    status = fields.get("status")
    if status is not None and status not in STATUSES:
        raise ValueError(f"status must be one of {STATUSES}, got {status!r}")
    return {k: clean(v) for k, v in fields.items()}


def clean(value):
    """SQLite-friendly value: JSON for containers, None for non-finite floats, plain ints and floats."""
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, sort_keys=True)
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()  # numpy / torch scalars
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def decode_spec(row: dict) -> dict:
    """A job row with its ``spec`` decoded (``{}`` when empty)."""
    row["spec"] = json.loads(row["spec"]) if row["spec"] else {}
    return row


def decode_run(row: dict) -> dict:
    """A run row with its :data:`JSON_COLUMNS` decoded."""
    for column in JSON_COLUMNS:
        if row.get(column):
            row[column] = json.loads(row[column])
    return row
