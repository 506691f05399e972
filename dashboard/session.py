"""Session state: the current model, task, evaluation limit and rank plan, and the sidebar line showing them.

A new session starts from :func:`defaults`: ``LOWRANK_DEFAULT_MODEL`` / ``LOWRANK_DEFAULT_TASK`` (tests
point them at a tiny model and a CSV), else ``minilm-rt`` on ``rotten_tomatoes``. While that default is a
fine-tuned packaged model not built yet (the first run on a machine), a new session starts on the model it
is built from (``minilm``: it loads, its untrained head is labelled) and the build runs in the background
(:func:`init`); sessions started after it finished start on the built model. The rest of the state starts
as :data:`STATE_DEFAULTS`. The heavy objects behind the keys are in :mod:`dashboard.cache`.

The task follows the model's kind (:func:`task_for`): a causal language model is measured on a text
task (Lee), an encoder or classifier on a classification task; choosing a model of the other kind
switches the task, so the session never holds a pair that cannot be measured.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass

import streamlit as st
from streamlit.runtime.pages_manager import PagesManager

from lowrank.allocation import DEFAULT_STRATEGY
from lowrank.evaluation.quality import task_kind_for
from lowrank.experiments.build import latest_build, start_build
from lowrank.models.packaged import FINETUNED
from lowrank.training.finetune import Recipe, recipe_for

from . import cache
from .names import MODEL_KIND_LABELS, TASK_KIND_LABELS, TASK_LABELS, model_label, plan_fraction, task_label

DEFAULT_BUDGET = 0.5
# The session state besides the model and task, as a new session starts it (:func:`init`).
STATE_DEFAULTS = {"plan": None, "eval_limit": None, "editor_version": 0, "rank_messages": {}}


@dataclass(frozen=True)
class Defaults:
    """What a new session starts on (:func:`defaults`)."""

    model: str  # the default model once it exists
    task: str  # the default task
    recipe: Recipe | None  # how ``model`` is built when it is a fine-tuned packaged model (built or not)

    @property
    def building(self) -> Recipe | None:
        """:attr:`recipe` while ``model`` is not built yet, else ``None``."""
        return self.recipe if self.recipe is not None and not self.recipe.built else None

    @property
    def first_model(self) -> str:
        """The model a new session starts with: ``model``, or the model it is built from until it is built."""
        return self.building.base if self.building is not None else self.model

    def first_task(self, model: str) -> str:
        """The task a session starts with on ``model``: the default task when it fits (:func:`task_for`)."""
        try:
            return task_for(model, self.task)
        except (ValueError, OSError, RuntimeError):  # the pages show why the model does not load
            return self.task


def defaults() -> Defaults:
    """The session defaults from the environment (read on every call)."""
    model = os.environ.get("LOWRANK_DEFAULT_MODEL") or "minilm-rt"
    task = os.environ.get("LOWRANK_DEFAULT_TASK") or "rotten_tomatoes"
    return Defaults(model, task, recipe_for(model) if model in FINETUNED else None)


def _measured_on(model: str) -> str:
    """The task kind ``model`` is measured on (``lm`` or ``classification``)."""
    return task_kind_for(cache.read_model_kind(model))


def tasks_for(model: str) -> list[str]:
    """The named tasks ``model`` can be measured on (an uploaded CSV fits a classifier too: :func:`csv_fits`)."""
    wanted = _measured_on(model)
    return [key for key in TASK_LABELS if cache.task_kind(key) == wanted]


def csv_fits(model: str) -> bool:
    """True when ``model`` can be measured on an uploaded ``text,label`` CSV (a classification task)."""
    return _measured_on(model) == "classification"


def task_for(model: str, current: str) -> str:
    """``current`` when ``model`` can be measured on it (or when ``current`` cannot be read: the pages show why),
    else the default task when it fits, else the first named task of the model's kind. Raises what reading the
    model's config raises."""
    wanted = _measured_on(model)
    try:
        if cache.task_kind(current) == wanted:
            return current
    except (ValueError, OSError):
        return current
    for key in (defaults().task, *TASK_LABELS):
        try:
            if cache.task_kind(key) == wanted:
                return key
        except (ValueError, OSError):  # an unreadable default CSV fits nothing
            continue
    raise ValueError(f"{model_label(model)} is measured on a {wanted} task, and none is available")


def finetune_recipe(model: str, task: str) -> Recipe:
    """How ``model`` gets a trained head for ``task``: the default model's recipe when ``model`` on ``task`` is what
    it is built from (:attr:`Defaults.recipe`), else :func:`lowrank.training.finetune.recipe_for`."""
    default = defaults().recipe
    if default is not None and (model, task) == (default.base, default.task):
        return default
    return recipe_for(model, task)


def init() -> None:
    """Session defaults; ``app.py`` calls it before any page runs. A new session starts the build of the default
    model when it is missing (:attr:`Defaults.building`), unless its last build failed (Home shows why, with a
    button to try again); a build already running anywhere is not started twice."""
    ss = st.session_state
    if "model" not in ss:
        start = defaults()
        ss["model"] = start.first_model
        building = start.building
        if building is not None:
            last = latest_build(cache.store(), building.name)
            if last is None or last["status"] != "failed":
                start_build(building, cache.store())
    if "task" not in ss:
        ss["task"] = defaults().first_task(ss["model"])
    for key, value in STATE_DEFAULTS.items():
        ss.setdefault(key, copy.copy(value))


def model_key() -> str:
    if "model" not in st.session_state:
        # This run did not start in app.py: a fresh server opened on a page's URL runs that page alone (Streamlit's
        # pages/-folder routing, in force until st.navigation first runs). Switch it off as st.navigation does and
        # rerun, so app.py sets the session up and routes to the same page.
        PagesManager.uses_pages_directory = False
        st.rerun()
    return st.session_state["model"]


def task_key() -> str:
    return st.session_state["task"]


def eval_limit() -> int | None:
    """Evaluate on at most this many validation batches (``None``: the whole split)."""
    return st.session_state["eval_limit"]


def set_eval_limit(limit: int | None) -> None:
    st.session_state["eval_limit"] = limit


def set_model(name: str) -> None:
    """Make ``name`` the current model; drops the plan of the previous one."""
    if name != model_key():
        st.session_state.update(model=name, plan=None, rank_messages={})
        st.session_state["editor_version"] += 1
        render_status()


def set_task(key: str) -> None:
    if key != task_key():
        st.session_state.update(task=key)
        render_status()


def make_current(model: str, task: str) -> str:
    """Make ``model`` current with ``task``, or with the task of its kind (:func:`task_for`) when ``task`` does not
    fit; returns the task used and leaves a one-line notice (:func:`pop_notice`) when it switched."""
    fitting = task_for(model, task)
    cache.load(model, fitting)
    set_model(model)
    set_task(fitting)
    if fitting != task:
        kind = MODEL_KIND_LABELS.get(cache.read_model_kind(model), cache.read_model_kind(model))
        st.session_state["notice"] = (
            f"{model_label(model)} is {kind}, measured by {TASK_KIND_LABELS[_measured_on(model)]}: "
            f"the task is now {task_label(fitting)}."
        )
    return fitting


def pop_notice() -> str | None:
    """The notice left by the last :func:`make_current` (once)."""
    return st.session_state.pop("notice", None)


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
