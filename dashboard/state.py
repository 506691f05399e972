"""Session state (current model, task, rank plan) and the cached heavy work every page shares.

Heavy results are cached across reruns and sessions (``st.cache_resource`` for models and
Fisher tensors, ``st.cache_data`` for tables); each shows a progress bar the first time.
Defaults come from ``LOWRANK_DEFAULT_MODEL`` / ``LOWRANK_DEFAULT_TASK`` (tests point them at
a tiny model and a CSV), else ``minilm-rt`` on ``rotten_tomatoes``.
"""

from __future__ import annotations

import hashlib
import inspect
import os
import re
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd
import streamlit as st

import lowrank
from lowrank.assets import cache_dir
from lowrank.runs import RunStore, default_path
from lowrank.sweep import FISHER_SETTINGS, dense_reference

from .widgets import ProgressBar, show_error

# Errors a user's input can cause (TaskError and ModelLoadError are ValueErrors, AssetError a RuntimeError);
# pages show them with st.error instead of a traceback.
USER_ERRORS = (ValueError, OSError, RuntimeError, LookupError)

TASK_LABELS = {
    "rotten_tomatoes": "Rotten Tomatoes (sentiment, accuracy)",
    "lee": "Lee corpus (English news text, perplexity)",
}
DEFAULT_BUDGET = 0.5
DEFAULT_STRATEGY = "uniform"


def default_model() -> str:
    return os.environ.get("LOWRANK_DEFAULT_MODEL") or "minilm-rt"


def default_task() -> str:
    return os.environ.get("LOWRANK_DEFAULT_TASK") or "rotten_tomatoes"


def init() -> None:
    """Session defaults; called by ``app.py`` before any page runs."""
    ss = st.session_state
    ss.setdefault("model", default_model())
    ss.setdefault("task", default_task())
    ss.setdefault("plan", None)
    ss.setdefault("eval_limit", None)
    ss.setdefault("editor_version", 0)
    ss.setdefault("results", [])


def model_key() -> str:
    return st.session_state["model"]


def task_key() -> str:
    return st.session_state["task"]


def eval_limit() -> Optional[int]:
    return st.session_state["eval_limit"]


def is_csv(key: str) -> bool:
    return str(key).lower().endswith(".csv")


def task_label(key: str) -> str:
    return f"CSV {Path(key).name}" if is_csv(key) else TASK_LABELS.get(key, key)


def model_label(key: str) -> str:
    return key if key in lowrank.PACKAGED else Path(key).name or key


def set_model(name: str) -> None:
    """Make ``name`` the current model; drops the plan and the factorization results of the previous one."""
    if name != model_key():
        st.session_state.update(model=name, plan=None, results=[])
        st.session_state["editor_version"] += 1
        render_status()


def set_task(key: str) -> None:
    if key != task_key():
        st.session_state.update(task=key, results=[])
        render_status()


def render_status(slot=None) -> None:
    """Draw the current model, task and plan into the sidebar slot (``slot`` registers it for this run),
    so a change made further down the page shows at once."""
    if slot is not None:
        st.session_state["_status_slot"] = slot
    slot = st.session_state.get("_status_slot")
    if slot is None:
        return
    current = plan()
    plan_text = "none yet" if current is None else f"{plan_fraction(current):.0%} kept ({current.strategy})"
    slot.markdown(f"**Model** {model_label(model_key())}  \n**Task** {task_label(task_key())}  \n**Plan** {plan_text}")


def save_upload(name: str, data: bytes) -> str:
    """Keep an uploaded CSV under ``<cache>/uploads/<hash>/<name>``; returns its path (the task key)."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(name).name) or "upload.csv"
    if not safe.lower().endswith(".csv"):
        safe += ".csv"
    path = cache_dir() / "uploads" / hashlib.sha1(data).hexdigest()[:12] / safe
    if not path.exists():
        lowrank.assets.atomic_write_bytes(path, data)
    return str(path)


@st.cache_resource(show_spinner=False)
def _store(path: str) -> RunStore:
    return RunStore(path)


def store() -> RunStore:
    """The run store at ``<cache>/runs.sqlite`` (``LOWRANK_CACHE`` read on every call)."""
    return _store(str(default_path()))


# ---------------------------------------------------------------- cached heavy work


@st.cache_resource(show_spinner=False, max_entries=8)
def _task(key: str, mtime: float) -> lowrank.Task:
    return lowrank.load_task(key)


def get_task(key: Optional[str] = None) -> lowrank.Task:
    key = key or task_key()
    mtime = Path(key).stat().st_mtime if is_csv(key) and Path(key).exists() else 0.0
    return _task(key, mtime)


@st.cache_resource(show_spinner="Loading the model...", max_entries=3)
def load(model: str, task: str) -> lowrank.LoadedModel:
    """The model with a head for ``task`` when it is a classification task."""
    return lowrank.load_model(model, task=get_task(task))


def current_model() -> lowrank.LoadedModel:
    return load(model_key(), task_key())


@st.cache_data(show_spinner=False, max_entries=4)
def spectra(model: str, task: str) -> pd.DataFrame:
    with ProgressBar("Computing singular values") as bar:
        return lowrank.spectra(load(model, task), progress=bar)


def fisher_settings() -> dict:
    """The full settings :func:`lowrank.fisher.estimate_fisher` keys its disk cache on."""
    from lowrank.fisher import estimate_fisher

    params = inspect.signature(estimate_fisher).parameters
    names = ("num_batches", "batch_size", "max_length", "labels", "split", "seed")
    return {n: FISHER_SETTINGS.get(n, params[n].default) for n in names}


def fisher_available(model: str, task: str) -> bool:
    """True when the Fisher information of (model, task) is on disk (any page can then use it at once)."""
    from lowrank.fisher import fisher_cache_path

    return fisher_cache_path(load(model, task), get_task(task), fisher_settings()).exists()


@st.cache_resource(show_spinner=False, max_entries=2)
def fisher(model: str, task: str) -> dict:
    """Empirical Fisher information per compressible layer (disk-cached by the library)."""
    from lowrank.fisher import estimate_fisher

    with ProgressBar("Estimating Fisher information") as bar:
        return estimate_fisher(load(model, task), get_task(task), progress=bar, **FISHER_SETTINGS)


def fisher_if_available(model: str, task: str) -> Optional[dict]:
    return fisher(model, task) if fisher_available(model, task) else None


@st.cache_data(show_spinner=False, max_entries=4)
def loss_curves(model: str, task: str) -> dict[str, np.ndarray]:
    """Predicted loss increase at every rank, per layer (FWSVD curves from the Fisher information)."""
    from lowrank.allocate import layer_loss_curves

    with ProgressBar("Predicted loss curves") as bar:
        return layer_loss_curves(load(model, task), fisher(model, task), progress=bar)


@st.cache_data(show_spinner="Fisher dispersion per layer...", max_entries=4)
def dispersion(model: str, task: str) -> dict[str, float]:
    from lowrank.metrics import fisher_dispersion

    return {name: fisher_dispersion(F) for name, F in fisher(model, task).items()}


@st.cache_data(show_spinner="Predicted SVD risk per layer...", max_entries=8)
def risk(model: str, task: str, ranks_key: tuple) -> pd.DataFrame:
    """:func:`lowrank.metrics.risk_table` at the given ``(name, rank)`` pairs."""
    from lowrank.architectures import compressible_linears
    from lowrank.metrics import risk_table

    loaded = load(model, task)
    weights = {n: m.weight for n, m in compressible_linears(loaded.model).items()}
    return risk_table(weights, fisher(model, task), dict(ranks_key))


@st.cache_data(show_spinner=False, max_entries=8)
def taylor(model: str, task: str, ranks_key: tuple) -> dict[str, dict[str, float]]:
    """Per layer: ``{"first_order", "second_order", "total"}``, the Taylor estimate of the loss change of its
    plain SVD alone (:func:`lowrank.fisher.svd_loss_change` on the Fisher sample of the training split)."""
    from lowrank.fisher import svd_loss_change

    with ProgressBar("Taylor estimate of the SVD loss change") as bar:
        return svd_loss_change(load(model, task), get_task(task), dict(ranks_key), progress=bar, **FISHER_SETTINGS)


def layer_table(model: str, task: str) -> pd.DataFrame:
    """Compressible layers: name, type, block, out, in, params, break-even and largest useful rank."""
    from lowrank.layers import break_even_rank, max_useful_rank

    frame = spectra(model, task)[["name", "type", "block", "out", "in", "params"]].copy()
    frame["break_even"] = [break_even_rank(o, i) for o, i in zip(frame["out"], frame["in"])]
    frame["max_rank"] = [max_useful_rank(o, i) for o, i in zip(frame["out"], frame["in"])]
    return frame


def stored_dense(model: str, task: str) -> Optional[dict]:
    """The dense reference run in the store for the current weights and settings, if any (no computation)."""
    from lowrank.fisher import weights_fingerprint

    return store().find_run(method="dense", fingerprint=weights_fingerprint(load(model, task).model), task=task,
                            split="validation", eval_limit=eval_limit())


def dense_evaluation(model: str, task: str) -> dict:
    """Dense quality, size and latency: from the run store, or evaluated (with progress) and stored."""
    with ProgressBar("Evaluating the dense model") as bar:
        return dense_reference(store(), load(model, task), get_task(task), task, "validation", eval_limit(), progress=bar)


# ---------------------------------------------------------------- rank plan


def plan():
    """The current rank plan of the current model, or ``None``."""
    return st.session_state["plan"]


def set_plan(new_plan) -> None:
    st.session_state["plan"] = new_plan
    st.session_state["editor_version"] += 1  # a fresh editor: pending cell edits belong to the old plan
    render_status()


def ensure_plan():
    """The current plan; a uniform plan at the default budget when there is none yet."""
    if plan() is None:
        from lowrank.allocate import allocate

        loaded = current_model()
        importance = fisher_if_available(model_key(), task_key())
        set_plan(allocate(loaded, DEFAULT_BUDGET, DEFAULT_STRATEGY, importance=importance))
    return plan()


def plan_fraction(p) -> float:
    return p.params / p.dense_params if p.dense_params else float("nan")


def fisher_button(model: str, task: str, **button_options) -> None:
    """A button computing the Fisher information (progress bar, error on the page), then rerunning."""
    if st.button("Compute Fisher information", icon=":material/calculate:", **button_options):
        try:
            fisher(model, task)
        except USER_ERRORS as err:
            show_error("Cannot estimate the Fisher information", err)
        else:
            st.rerun()
