"""The ``lowrank`` calls the pages share, on plain keys (model and task names), cached where heavy.

Models, tasks, statistics and the run store are cached across reruns and sessions with
``st.cache_resource``; tables with ``st.cache_data``. Each heavy call shows a progress bar the
first time. Statistics are resolved by :func:`lowrank.statistics.statistics_for` with the one
:data:`lowrank.statistics.DEFAULT` sampling, so the dashboard, the CLI and the sweeps share their
disk cache.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Iterable, Optional

import numpy as np
import pandas as pd
import streamlit as st

import lowrank
import lowrank.statistics
from lowrank.allocation import layer_loss_curves
from lowrank.analysis.metrics import fisher_dispersion, risk_table
from lowrank.experiments.run import dense_reference
from lowrank.experiments.store import RunStore, default_path
from lowrank.io import atomic_write_bytes, cache_dir
from lowrank.layers import break_even_rank, max_useful_rank
from lowrank.needs import needs_for
from lowrank.progress import Progress
from lowrank.statistics import DEFAULT, Stats, select, statistics_for
from lowrank.statistics.fisher import svd_loss_change
from lowrank.threads import set_threads

from .inputs import check_upload, expire_uploads
from .labels import is_csv, statistics_label
from .progress import ProgressBar

# What the predicted losses (loss curves, dispersion, SVD risk) are computed from.
PREDICTION_NEEDS = needs_for(predict=True)


@st.cache_resource(show_spinner=False)
def threads() -> int:
    """Torch's CPU thread count, set once per dashboard process (:func:`lowrank.threads.set_threads`)."""
    return set_threads()


@st.cache_resource(show_spinner=False)
def _store(path: str) -> RunStore:
    return RunStore(path)


def store() -> RunStore:
    """The run store at ``<cache>/runs.sqlite`` (``LOWRANK_CACHE`` read on every call)."""
    return _store(str(default_path()))


def save_upload(name: str, data: bytes) -> str:
    """Keep an uploaded CSV under ``<cache>/uploads/<hash>/<name>``; returns its path (the task key).

    A kept copy whose bytes differ from the upload (damaged on disk) is written again.
    Refuses files over :data:`dashboard.inputs.MAX_UPLOAD_MB`; uploads untouched for
    :data:`dashboard.inputs.UPLOAD_DAYS` days are deleted."""
    check_upload(name, data)
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(name).name) or "upload.csv"
    if not safe.lower().endswith(".csv"):
        safe += ".csv"
    path = cache_dir() / "uploads" / hashlib.sha1(data).hexdigest()[:12] / safe
    if not path.is_file() or path.read_bytes() != data:
        atomic_write_bytes(path, data)
    os.utime(path.parent)  # used now: expires UPLOAD_DAYS after its last upload
    expire_uploads(path.parent.parent, keep=path.parent)
    return str(path)


@st.cache_resource(show_spinner=False, max_entries=8)
def _task(key: str, mtime: float) -> lowrank.Task:
    return lowrank.load_task(key)


def get_task(key: str) -> lowrank.Task:
    """The task ``key`` (a CSV is reloaded when its file changes)."""
    mtime = Path(key).stat().st_mtime if is_csv(key) and Path(key).exists() else 0.0
    return _task(key, mtime)


@st.cache_resource(show_spinner="Loading the model...", max_entries=3)
def load(model: str, task: str) -> lowrank.LoadedModel:
    """The model with a head for ``task`` when it is a classification task."""
    return lowrank.load_model(model, task=get_task(task))


@st.cache_data(show_spinner=False, max_entries=4)
def spectra(model: str, task: str) -> pd.DataFrame:
    with ProgressBar("Computing singular values") as bar:
        return lowrank.spectra(load(model, task), progress=bar)


def layer_table(model: str, task: str) -> pd.DataFrame:
    """Compressible layers: name, type, block, out, in, params, break-even and largest useful rank."""
    frame = spectra(model, task)[["name", "type", "block", "out", "in", "params"]].copy()
    frame["break_even"] = [break_even_rank(o, i) for o, i in zip(frame["out"], frame["in"])]
    frame["max_rank"] = [max_useful_rank(o, i) for o, i in zip(frame["out"], frame["in"])]
    return frame


# ---------------------------------------------------------------- statistics


@st.cache_resource(show_spinner=False, max_entries=4)
def _statistic(model: str, task: str, kind: str) -> Stats:
    with ProgressBar(f"Computing the {statistics_label((kind,))}") as bar:
        return statistics_for(load(model, task), get_task(task), (kind,), DEFAULT, progress=bar)


def is_cached(model: str, task: str, needs: Iterable[str]) -> bool:
    """True when every kind of ``needs`` costs nothing now (on disk, or needing no data)."""
    return lowrank.statistics.is_cached(load(model, task), get_task(task), tuple(needs), DEFAULT)


def statistics(model: str, task: str, needs: Iterable[str], also_if_cached: Iterable[str] = ()) -> Stats:
    """``{layer: {key: tensor}}`` with every kind of ``needs`` (computed with a progress bar the first
    time), plus those of ``also_if_cached`` that cost nothing now."""
    needs = tuple(needs)
    kinds = needs + tuple(k for k in also_if_cached if k not in needs and is_cached(model, task, (k,)))
    merged: Stats = {}
    for kind in kinds:
        for layer, tensors in _statistic(model, task, kind).items():
            merged.setdefault(layer, {}).update(tensors)
    return merged


def plan_ranks(model: str, task: str, budget: float, strategy: str,
               progress: Optional[Progress] = None) -> lowrank.RankPlan:
    """A rank plan from :func:`lowrank.allocation.allocate`, with the statistics ``strategy`` needs (computed
    when missing) and those of the predicted losses when they cost nothing."""
    stats = statistics(model, task, needs_for(strategy=strategy), also_if_cached=PREDICTION_NEEDS)
    return lowrank.allocate(load(model, task), budget, strategy, stats=stats, task=get_task(task), progress=progress)


def _fisher(model: str, task: str) -> dict:
    return select(statistics(model, task, PREDICTION_NEEDS), "fisher")


@st.cache_data(show_spinner=False, max_entries=4)
def loss_curves(model: str, task: str) -> dict[str, np.ndarray]:
    """Predicted loss increase at every rank, per layer (FWSVD curves from the Fisher information)."""
    with ProgressBar("Predicted loss curves") as bar:
        return layer_loss_curves(load(model, task), _fisher(model, task), progress=bar)


@st.cache_data(show_spinner="Fisher dispersion per layer...", max_entries=4)
def dispersion(model: str, task: str) -> dict[str, float]:
    return {name: fisher_dispersion(F) for name, F in _fisher(model, task).items()}


@st.cache_data(show_spinner="Predicted SVD risk per layer...", max_entries=8)
def risk(model: str, task: str, ranks_key: tuple) -> pd.DataFrame:
    """:func:`lowrank.analysis.metrics.risk_table` at the given ``(name, rank)`` pairs."""
    weights = {n: m.weight for n, m in lowrank.compressible_linears(load(model, task).model).items()}
    return risk_table(weights, _fisher(model, task), dict(ranks_key))


@st.cache_data(show_spinner=False, max_entries=8)
def taylor(model: str, task: str, ranks_key: tuple) -> dict[str, dict[str, float]]:
    """Per layer: ``{"first_order", "second_order", "total"}``, the Taylor estimate of the loss change of
    its plain SVD alone (:func:`lowrank.statistics.fisher.svd_loss_change` on the default sample)."""
    with ProgressBar("Taylor estimate of the SVD loss change") as bar:
        return svd_loss_change(load(model, task), get_task(task), dict(ranks_key), DEFAULT, progress=bar)


# ---------------------------------------------------------------- runs


def dense_evaluation(model: str, task: str, eval_limit: Optional[int]) -> dict:
    """Dense quality, size and latency: from the run store, or evaluated (with progress) and stored."""
    with ProgressBar("Evaluating the dense model") as bar:
        return dense_reference(store(), load(model, task), get_task(task), task, "validation", eval_limit, progress=bar)
