"""The ``lowrank`` calls the pages share, on plain keys (model and task names), cached where heavy.

Models, tasks, statistics and the run store are cached across reruns and sessions with
``st.cache_resource``; tables with ``st.cache_data``. Each heavy call shows a progress bar the
first time. Statistics are resolved by :func:`lowrank.statistics.statistics_for` with the one
:data:`lowrank.statistics.DEFAULT` sampling, so its entries are the disk cache every other
computation with the defaults reads. Spectra are also kept on disk (``<cache>/spectra/``), keyed by the identity of the
model's weight files, so a fresh server paints them without loading the model; spectra under a metric
(``<cache>/spectra/<metric>/``) also by the identity of the statistics' cache files they were computed from.

A model is only ever loaded with a task it can be measured on (:func:`check_pair`): its kind is read
from its config first (:func:`read_model_kind`), without loading weights.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

import lowrank
import lowrank.statistics
from lowrank import report
from lowrank.alignment import DEFAULT_ALIGN
from lowrank.allocation import layer_loss_curves
from lowrank.analysis.metrics import fisher_dispersion, risk_table
from lowrank.analysis.spectra import PLAIN
from lowrank.data import NAMED_TASKS, hub_reachable
from lowrank.evaluation.quality import chance_accuracy, check_task_fits
from lowrank.experiments.run import dense_reference
from lowrank.experiments.store import RunStore, default_path
from lowrank.files.atomic import atomic_write_bytes
from lowrank.files.cache import cache_dir
from lowrank.info import CompressionInfo, load_info
from lowrank.layers import break_even_rank, max_useful_rank
from lowrank.models import compressible_weights, model_kind
from lowrank.models.labels import head_untrained
from lowrank.models.loading import load_config
from lowrank.models.packaged import resolve_source, weights_key
from lowrank.needs import needs_for
from lowrank.progress import Progress
from lowrank.statistics import DEFAULT, Stats, select, statistics_for, statistics_label
from lowrank.statistics.cache import recorded_digest, weights_fingerprint
from lowrank.statistics.resolve import cache_entries, computations
from lowrank.statistics.taylor import svd_loss_change
from lowrank.threads import set_threads

from .inputs import check_upload, expire_uploads
from .names import is_csv, model_label, task_label
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
    os.utime(path.parent)  # in use: expires UPLOAD_DAYS after its last upload
    expire_uploads(path.parent.parent, keep=path.parent)
    return str(path)


@st.cache_resource(show_spinner=False, max_entries=8)
def _task(key: str, mtime: float) -> lowrank.Task:
    return lowrank.load_task(key)


def get_task(key: str) -> lowrank.Task:
    """The task ``key`` (a CSV is reloaded when its file changes)."""
    mtime = Path(key).stat().st_mtime if is_csv(key) and Path(key).exists() else 0.0
    return _task(key, mtime)


@st.cache_data(show_spinner=False, max_entries=32)
def read_model_kind(model: str) -> str:
    """``classifier``, ``causal-lm`` or ``encoder``: :func:`lowrank.models.model_kind` of the model's config, read
    without loading the weights."""
    source = resolve_source(model)
    return model_kind(load_config(source, model, Path(source).exists() or not hub_reachable()))


def task_kind(key: str) -> str:
    """``classification`` or ``lm`` (a named task without loading it)."""
    return NAMED_TASKS[key].kind if key in NAMED_TASKS else get_task(key).kind


def untrained_head(model: str, task: str) -> bool:
    """True when ``model`` measured on ``task`` gets a freshly initialised classification head
    (:func:`lowrank.models.labels.head_untrained`); False when either cannot be read (the pages show why)."""
    try:
        return head_untrained(read_model_kind(model), task_kind(task))
    except (ValueError, OSError, RuntimeError):
        return False


def check_pair(model: str, task: str) -> None:
    """``ValueError``, in words, when ``model`` cannot be measured on ``task`` (a causal LM on a classification task...)."""
    check_task_fits(model_label(model), read_model_kind(model), task_kind(task), task_label(task))


@st.cache_resource(show_spinner="Loading the model...", max_entries=3)
def _load(model: str, task: str) -> lowrank.LoadedModel:
    return lowrank.load_model(model, task=get_task(task))


def load(model: str, task: str) -> lowrank.LoadedModel:
    """The model with a head for ``task`` when it is a classification task; refused (:func:`check_pair`)
    before loading when the two do not fit."""
    check_pair(model, task)
    return _load(model, task)


def spectra_path(model: str) -> Path | None:
    key = weights_key(model)
    return None if key is None else cache_dir() / "spectra" / f"{key}.parquet"


def metric_spectra_identity(model: str, task: str, metric: str) -> str | None:
    """What the spectra under ``metric`` are computed from: the weight files (:func:`weights_key`, or the hub id),
    the metric and its statistics (:func:`statistics_identity`); ``None`` while a statistics file is missing. It
    keys both the memory and the disk entry, so new statistics are never served stale spectra."""
    stats = statistics_identity(model, task, lowrank.get_method(metric).needs)
    if stats is None:
        return None
    identity = json.dumps([weights_key(model) or f"hub:{model}", metric, stats])
    return hashlib.sha1(identity.encode()).hexdigest()[:20]


def metric_spectra_path(model: str, task: str, metric: str, identity: str | None = None) -> Path | None:
    """The disk entry of the spectra under ``metric``, named by :func:`metric_spectra_identity`; ``None`` for a hub
    id or while a statistics file is missing."""
    identity = identity or metric_spectra_identity(model, task, metric)
    if identity is None or weights_key(model) is None:
        return None
    return cache_dir() / "spectra" / metric / f"{identity}.parquet"


def _read_spectra(path: Path | None) -> pd.DataFrame | None:
    """The spectra stored at ``path``; ``None`` when there is none or it is damaged (then computed again)."""
    if path is None or not path.exists():
        return None
    try:
        frame = pd.read_parquet(path)
    except (OSError, ValueError):
        return None
    return frame.astype({c: object for c in frame.columns if pd.api.types.is_string_dtype(frame[c])})


def _write_spectra(path: Path | None, frame: pd.DataFrame) -> None:
    if path is not None:
        buffer = io.BytesIO()
        frame.to_parquet(buffer)
        atomic_write_bytes(path, buffer.getvalue())


def spectra(model: str, task: str) -> pd.DataFrame:
    """:func:`lowrank.spectra` of the model: read from the disk cache when its weight files are unchanged
    (no model load), else computed (with a progress bar) and written there."""
    return _spectra(model, task, spectra_path(model))


@st.cache_data(show_spinner=False, max_entries=4)
def _spectra(model: str, task: str, path: Path | None) -> pd.DataFrame:
    if (frame := _read_spectra(path)) is not None:
        return frame
    with ProgressBar("Computing singular values") as bar:
        frame = lowrank.spectra(load(model, task), progress=bar)
    _write_spectra(path, frame)
    return frame


def _metric_identity(model: str, task: str, metric: str) -> str:
    """:func:`metric_spectra_identity`, the statistics computed first (with a progress bar) when missing."""
    if (identity := metric_spectra_identity(model, task, metric)) is None:
        statistics(model, task, lowrank.get_method(metric).needs)
        identity = metric_spectra_identity(model, task, metric)
    if identity is None:
        raise RuntimeError(f"the statistics of {metric} could not be stored in the cache folder")
    return identity


def metric_spectra(model: str, task: str, metric: str) -> pd.DataFrame:
    """:func:`lowrank.spectra` under ``metric`` (a closed-form method) for every layer: the singular values of the
    matrix it truncates, from its statistics (computed with a progress bar when missing); read from the disk cache
    when the weights and statistics are unchanged (:func:`metric_spectra_identity`). The plain spectra for ``svd``."""
    if metric == PLAIN:
        return spectra(model, task)
    return _metric_spectra(model, task, metric, _metric_identity(model, task, metric))


@st.cache_data(show_spinner=False, max_entries=8)
def _metric_spectra(model: str, task: str, metric: str, identity: str) -> pd.DataFrame:
    path = metric_spectra_path(model, task, metric, identity)
    if (frame := _read_spectra(path)) is not None:
        return frame
    stats = statistics(model, task, lowrank.get_method(metric).needs)
    with ProgressBar(f"Singular values of every layer under {metric}") as bar:
        frame = lowrank.spectra(load(model, task), progress=bar, metric=metric, stats=stats)
    _write_spectra(path, frame)
    return frame


def layer_metric_spectra(model: str, task: str, metric: str, layers: Iterable[str]) -> pd.DataFrame:
    """:func:`metric_spectra` of ``layers`` only: the rows of the whole table where it is in memory or on disk,
    else computed for these layers alone (a fraction of the whole table's time), kept in memory only."""
    layers = tuple(sorted(set(layers)))
    if metric == PLAIN or not layers:
        frame = spectra(model, task)
    else:
        identity = _metric_identity(model, task, metric)
        path = metric_spectra_path(model, task, metric, identity)
        if path is None or not path.exists():
            return _layer_metric_spectra(model, task, metric, identity, layers)
        frame = _metric_spectra(model, task, metric, identity)
    return frame[frame["name"].isin(layers)].reset_index(drop=True)


@st.cache_data(show_spinner=False, max_entries=16)
def _layer_metric_spectra(model: str, task: str, metric: str, identity: str, layers: tuple[str, ...]) -> pd.DataFrame:
    stats = statistics(model, task, lowrank.get_method(metric).needs)
    with ProgressBar(f"Singular values of the chosen layers under {metric}") as bar:
        return lowrank.spectra(load(model, task), progress=bar, metric=metric, stats=stats, layers=layers)


@st.cache_data(show_spinner=False, max_entries=4)
def layer_table(model: str, task: str) -> pd.DataFrame:
    """Compressible layers: name, type, block, out, in, params, break-even and largest useful rank."""
    frame = spectra(model, task)[["name", "type", "block", "out", "in", "params"]].copy()
    frame["break_even"] = [break_even_rank(o, i) for o, i in zip(frame["out"], frame["in"])]
    frame["max_rank"] = [max_useful_rank(o, i) for o, i in zip(frame["out"], frame["in"])]
    return frame


# ---------------------------------------------------------------- statistics


def statistics_identity(model: str, task: str, needs: Iterable[str]) -> str | None:
    """The content of the statistics cache files holding ``needs`` for ``model`` on ``task`` (the default sample):
    their names and recorded checksums; ``None`` while one is missing or unreadable. Costs a weights fingerprint
    and a header read per file."""
    paths = cache_entries(load(model, task), get_task(task), tuple(needs), DEFAULT)
    entries = [[p.name, recorded_digest(p)] for p in paths]
    if any(digest is None for _, digest in entries):
        return None
    return hashlib.sha1(json.dumps(entries).encode()).hexdigest()[:20]


def _compute_statistics(model: str, task: str, needs: tuple[str, ...]) -> Stats:
    with ProgressBar(f"Computing the {statistics_label(needs)}") as bar:
        return statistics_for(load(model, task), get_task(task), needs, DEFAULT, progress=bar)


@st.cache_resource(show_spinner=False, max_entries=4)
def _statistics(model: str, task: str, needs: tuple[str, ...], identity: str) -> Stats:
    """The statistics on disk, kept in memory under the files' content (:func:`statistics_identity`): a file
    rewritten by another process or session is read again."""
    return _compute_statistics(model, task, needs)


@st.cache_resource(show_spinner=False)
def _cached_statistics() -> set:
    return set()


def is_cached(model: str, task: str, needs: Iterable[str]) -> bool:
    """True when every kind of ``needs`` costs nothing now (on disk, or needing no data). A yes is remembered for
    the process (statistics on disk stay there), so a rerun does not fingerprint the weights again."""
    key = (model, task, tuple(needs))
    known = _cached_statistics()
    if key not in known and lowrank.statistics.is_cached(load(model, task), get_task(task), key[2], DEFAULT):
        known.add(key)
    return key in known


def statistics(model: str, task: str, needs: Iterable[str], also_if_cached: Iterable[str] = ()) -> Stats:
    """``{layer: {key: tensor}}`` with every kind of ``needs`` (computed with a progress bar the first
    time; the kinds of one calibration pass in one call, kept together), plus those of ``also_if_cached`` that
    cost nothing now. Kept in memory by the content of their cache files, read again when another process
    rewrites them."""
    needs = tuple(dict.fromkeys(needs))
    extra = tuple(k for k in dict.fromkeys(also_if_cached) if k not in needs and is_cached(model, task, (k,)))
    merged: Stats = {}
    for group in computations(needs + extra):
        identity = statistics_identity(model, task, group)
        stats = (
            _compute_statistics(model, task, group) if identity is None else _statistics(model, task, group, identity)
        )
        for layer, tensors in stats.items():
            merged.setdefault(layer, {}).update(tensors)
    return merged


def plan_ranks(
    model: str,
    task: str,
    budget: float,
    strategy: str,
    progress: Progress | None = None,
    align: int = DEFAULT_ALIGN,
) -> lowrank.RankPlan:
    """A rank plan from :func:`lowrank.allocation.allocate` (ranks multiples of ``align``), with the statistics
    ``strategy`` needs (computed when missing) and those of the predicted losses when they cost nothing."""
    stats = statistics(model, task, needs_for(strategy=strategy), also_if_cached=PREDICTION_NEEDS)
    return lowrank.allocate(
        load(model, task), budget, strategy, stats=stats, task=get_task(task), progress=progress, align=align
    )


@st.cache_data(show_spinner="The SVD-drop metric on the plain-SVD runs...", max_entries=8)
def drop_checks(model: str, task: str, run_ids: tuple, _summary: report.Summary) -> tuple:
    """:func:`lowrank.report.drop_checks` of ``_summary``; ``run_ids`` (its dense and plain-SVD runs) is the cache key."""
    return report.drop_checks(_summary, compressible_weights(load(model, task).model), _fisher(model, task))


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
    return risk_table(compressible_weights(load(model, task).model), _fisher(model, task), dict(ranks_key))


@st.cache_data(show_spinner=False, max_entries=8)
def taylor(model: str, task: str, ranks_key: tuple) -> dict[str, dict[str, float]]:
    """Per layer: ``{"first_order", "second_order", "total"}``, the Taylor estimate of the loss change of
    its plain SVD alone (:func:`lowrank.statistics.taylor.svd_loss_change` on the default sample)."""
    with ProgressBar("Taylor estimate of the SVD loss change") as bar:
        return svd_loss_change(load(model, task), get_task(task), dict(ranks_key), DEFAULT, progress=bar)


# ---------------------------------------------------------------- runs


def dense_evaluation(model: str, task: str, eval_limit: int | None) -> dict:
    """Dense quality, size and latency: from the run store, or evaluated (with progress) and stored."""
    loaded = load(model, task)
    with ProgressBar("Evaluating the dense model") as bar:
        return dense_reference(store(), loaded, get_task(task), task, "validation", eval_limit, progress=bar)


def fingerprint(model: str, task: str) -> str:
    """The weights fingerprint the run store records for the model (:func:`lowrank.statistics.cache.weights_fingerprint`)."""
    return weights_fingerprint(load(model, task).model)


@st.cache_data(show_spinner=False, max_entries=16)
def chance(task: str) -> float | None:
    """Accuracy of always answering the most common validation label (``None`` for a text task)."""
    return chance_accuracy(get_task(task), "validation")


@st.cache_data(show_spinner=False, max_entries=32)
def _compression_info(folder: str, mtime: float) -> CompressionInfo:
    return load_info(folder)


def compression_info(folder: str) -> CompressionInfo | None:
    """What a saved compressed model records (ranks, solver histories, per-layer facts); ``None`` when missing."""
    meta = Path(folder) / "lowrank.json"
    return _compression_info(folder, meta.stat().st_mtime) if meta.exists() else None
