"""Session state: the current model, task, evaluation limit and rank plan, and the sidebar line showing them.

Defaults come from ``LOWRANK_DEFAULT_MODEL`` / ``LOWRANK_DEFAULT_TASK`` (tests point them at a
tiny model and a CSV), else ``minilm-rt`` on ``rotten_tomatoes``. The heavy objects behind the
keys are in :mod:`dashboard.cache`.
"""

from __future__ import annotations

import os
from typing import Optional

import streamlit as st

from . import cache
from .labels import model_label, plan_fraction, task_label

DEFAULT_BUDGET = 0.5
DEFAULT_STRATEGY = "uniform"


def default_model() -> str:
    return os.environ.get("LOWRANK_DEFAULT_MODEL") or "minilm-rt"


def default_task() -> str:
    return os.environ.get("LOWRANK_DEFAULT_TASK") or "rotten_tomatoes"


def init() -> None:
    """Session defaults; ``app.py`` calls it before any page runs."""
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
    """Evaluate on at most this many validation batches (``None``: the whole split)."""
    return st.session_state["eval_limit"]


def set_eval_limit(limit: Optional[int]) -> None:
    st.session_state["eval_limit"] = limit


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


def plan():
    """The current :class:`lowrank.RankPlan` of the current model, or ``None``."""
    return st.session_state["plan"]


def set_plan(new_plan) -> None:
    st.session_state["plan"] = new_plan
    st.session_state["editor_version"] += 1  # a fresh editor: pending cell edits belong to the old plan
    render_status()


def ensure_plan():
    """The current plan; a :data:`DEFAULT_STRATEGY` plan at :data:`DEFAULT_BUDGET` when there is none yet."""
    if plan() is None:
        set_plan(cache.plan_ranks(model_key(), task_key(), DEFAULT_BUDGET, DEFAULT_STRATEGY))
    return plan()


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
