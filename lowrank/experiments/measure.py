"""Background measurements of each layer alone (:func:`lowrank.analysis.agreement.single_layer_kl`): one job per
measurement (:mod:`lowrank.experiments.jobs`), in the run store's ``measurements`` table.

A :class:`LayerMeasurement` names what is measured: the model, the fingerprint of its weight files, the task, the
ranks and the number of batches; its :attr:`~LayerMeasurement.name` is the identity of the job. :func:`start_measurement`
runs it in a worker process unless the same measurement is running (reused) or done (nothing to start; new weights
give a new name, so a result is never served for other weights); :func:`run_measurement`, the worker's part, writes
step, total and the layer being measured to the row, then the table as the row's ``result``; :func:`latest` is the
newest row of a measurement and :func:`result_frame` its table. Cost: one forward pass per layer and batch, and
at most one SQLite write per :data:`~lowrank.experiments.jobs.PROGRESS_S` seconds.
"""

from __future__ import annotations

import hashlib
import json
from contextlib import suppress
from dataclasses import asdict, dataclass

import pandas as pd

from lowrank.analysis.agreement import single_layer_kl
from lowrank.data import load_task
from lowrank.experiments.jobs import Job, StepProgress, reap_stale
from lowrank.experiments.stop import stoppable
from lowrank.experiments.store import RunStore
from lowrank.models import load_model
from lowrank.models.packaged import weights_key

TABLE = "measurements"


@dataclass(frozen=True)
class LayerMeasurement:
    """Each layer of ``ranks`` (``{layer: rank}``) replaced alone by plain SVD, the KL to dense measured on the first
    ``batches`` validation batches of ``task``; ``weights``: the fingerprint of the model's weight files
    (:func:`lowrank.models.packaged.weights_key`, filled in from ``model`` when left empty)."""

    model: str
    task: str
    ranks: dict[str, int]
    batches: int = 4
    weights: str | None = None

    def __post_init__(self) -> None:
        if self.batches < 1:
            raise ValueError(f"batches must be at least 1, got {self.batches}")
        if not self.ranks:
            raise ValueError("no layer to measure: every layer is kept dense")
        object.__setattr__(self, "ranks", {str(k): int(v) for k, v in sorted(self.ranks.items())})
        if self.weights is None:
            object.__setattr__(self, "weights", weights_key(self.model))

    @property
    def name(self) -> str:
        """The identity of the measurement: every field, the weights' fingerprint included."""
        identity = json.dumps(asdict(self), sort_keys=True)
        return "layer-kl-" + hashlib.sha1(identity.encode()).hexdigest()[:20]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, spec: dict) -> LayerMeasurement:
        return cls(**spec)


def start_measurement(measurement: LayerMeasurement, store: RunStore | None = None) -> int | None:
    """Run ``measurement`` in a worker process; returns the id of its job (a new one, or the one already running),
    ``None`` when it is done already. A process that cannot be started ends the job ``failed``, saying why."""
    store = store or RunStore()
    reap_stale(store)
    job_id, new = store.start_named_job(
        TABLE, measurement.name, measurement.to_dict(), needed=lambda: not _done(store, measurement)
    )
    if new:
        with suppress(OSError):  # the job ended failed, saying why: the caller shows its row
            Job(store, TABLE, job_id).launch()
    return job_id


def _done(store: RunStore, measurement: LayerMeasurement) -> bool:
    return bool(store.jobs(TABLE, name=measurement.name, status="done"))


def latest(store: RunStore, measurement: LayerMeasurement) -> dict | None:
    """The newest row of ``measurement`` (after :func:`~lowrank.experiments.jobs.reap_stale`): a done one when any
    is done, else the newest of any status; ``None`` when it never ran."""
    reap_stale(store)
    done = store.jobs(TABLE, name=measurement.name, status="done")
    if done:
        return done[0]
    rows = store.jobs(TABLE, name=measurement.name)
    return rows[0] if rows else None


def result_frame(row: dict) -> pd.DataFrame:
    """The table of a done measurement's row: ``name``, ``rank``, ``measured_kl`` per layer."""
    if row.get("status") != "done" or not row.get("result"):
        raise ValueError(f"measurement {row.get('id')} has no result (status {row.get('status')})")
    return pd.DataFrame(json.loads(row["result"]), columns=["name", "rank", "measured_kl"])


def run_measurement(store: RunStore, job_id: int) -> dict:
    """Run the recorded measurement ``job_id`` in this process; returns its summary (layers, batches)."""
    job = Job(store, TABLE, job_id)
    measurement = LayerMeasurement.from_dict(job.row()["spec"])
    with job.running() as done:
        task = load_task(measurement.task)
        loaded = load_model(measurement.model, task=task)
        frame = single_layer_kl(
            loaded, task, measurement.ranks, limit=measurement.batches, progress=stoppable(StepProgress(job))
        )
        done["result"] = frame.to_dict("records")
        done["message"] = f"measured {len(frame)} layers alone on {measurement.batches} validation batches"
    return {"layers": len(frame), "batches": measurement.batches}
