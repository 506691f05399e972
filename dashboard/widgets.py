"""Small Streamlit building blocks: error display and a page's guard (:func:`stop_on_error`), option widgets
generated from a method's declared options, a button computing statistics, the cards of a sweep and of a model
build, the warnings on results that destroy the model and on an untrained head, the run-table column formats."""

from __future__ import annotations

import io
import zipfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import streamlit as st

from lowrank import errors
from lowrank.evaluation.quality import destroyed
from lowrank.experiments import build
from lowrank.experiments.jobs import eta_s
from lowrank.experiments.sweep import cancel_sweep, log_path, reap_stale, resume_sweep
from lowrank.healing import LEVELS, PRECISIONS
from lowrank.healing.heal import KINDS as HEALABLE
from lowrank.healing.heal import recipe_for
from lowrank.methods import COMPARISON, Option, get_method, run_methods
from lowrank.report.formats import format_duration
from lowrank.sequential import method_form, sweepable
from lowrank.statistics import DEFAULT, statistics_label
from lowrank.statistics.settings import calibration_notes
from lowrank.training.finetune import Recipe

from . import cache, layout, session
from .names import model_label, untrained_head_text

# Errors a user's input can cause: the CLI's (lowrank.errors.USER_ERRORS: the library's own types and OSError), and
# RuntimeError / LookupError too, since a page must never show a traceback; pages show them with st.error.
USER_ERRORS = (*errors.USER_ERRORS, RuntimeError, LookupError)

POLL_S = 2.0  # how often a card of a running background job reads its progress

# Column formats shared by every table of stored runs (Factorize results, Trade-offs run list).
RUN_COLUMNS = {
    "params_linear": st.column_config.NumberColumn("linear params", format="localized"),
    "params_total": st.column_config.NumberColumn("all params", format="localized"),
    "size_bytes": st.column_config.NumberColumn("size (bytes)", format="localized"),
    "latency_ms_b1": st.column_config.NumberColumn("latency b1 (ms)", format="%.1f"),
    "latency_ms_b32": st.column_config.NumberColumn("latency b32 (ms)", format="%.1f"),
    "wall_s": st.column_config.NumberColumn("wall (s)", format="%.1f"),
}


def show_error(prefix: str, err: BaseException) -> None:
    """One-line error on the page (never a traceback)."""
    message = errors.describe(err)
    st.error(f"{prefix}: {message}" if prefix else message, icon=":material/error:")


@contextmanager
def stop_on_error(prefix: str, choose_model: bool = False) -> Iterator[None]:
    """A page's guard: a :data:`USER_ERRORS` error in the block is shown (:func:`show_error` with ``prefix``), with
    a link to the Model & task page when ``choose_model``, and the page stops there."""
    try:
        yield
    except USER_ERRORS as err:
        show_error(prefix, err)
        if choose_model:
            layout.link("model", "Choose another model")
        st.stop()


def _parse(text: str):
    """A free-form option value: empty -> ``None`` (the method's default), else an int, a float or the text."""
    text = text.strip()
    if not text:
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def option_widget(name: str, option: Option, key: str):
    """One widget for a method option: a selectbox for a choice, else an input of the default's type
    (an empty text input for a ``None`` default, read with :func:`_parse`)."""
    default, help_text = option.default, option.help or None
    if option.choices is not None:
        choices = list(option.choices)
        return st.selectbox(
            name, choices, index=choices.index(default) if default in choices else 0, key=key, help=help_text
        )
    if isinstance(default, bool):
        return st.checkbox(name, value=default, key=key, help=help_text)
    if isinstance(default, int):
        return int(st.number_input(name, value=default, step=1, key=key, help=help_text))
    if isinstance(default, float):
        return float(st.number_input(name, value=default, format="%g", key=key, help=help_text))
    if default is None:
        return _parse(st.text_input(name, value="", placeholder="default", key=key, help=help_text))
    return st.text_input(name, value=str(default), key=key, help=help_text)


def method_choices(loaded) -> tuple[list[str], list[str]]:
    """The methods a run on ``loaded`` can use, and the ones chosen by default: the baseline and the recommended
    method, each in the form that runs by default on ``loaded`` (error-compensated on a causal LM:
    :func:`lowrank.method_form`, as ``lowrank compress`` runs it)."""
    methods = run_methods(sweepable(loaded))
    return methods, [m for m in (method_form(loaded, name) for name in COMPARISON) if m in methods]


def option_widgets(method: str, key: str) -> dict:
    """Widgets for the declared options of ``method`` (:attr:`lowrank.methods.Method.options`); returns the
    chosen values, leaving out those left empty (the method's default applies)."""
    options = get_method(method).options
    if not options:
        st.caption("no options")
    chosen = {name: option_widget(name, option, f"{key}_{method}_{name}") for name, option in options.items()}
    return {name: value for name, value in chosen.items() if value is not None}


def healing_widgets(loaded, key: str) -> dict | None:
    """A toggle to heal every compressed model (:func:`lowrank.heal`) and its main settings; returns every
    :class:`lowrank.HealConfig` field (the recipe of ``loaded``'s kind with the chosen settings), or ``None`` when off
    or when ``loaded`` has no output distribution to distil. Block level is offered for a model that runs one block
    at a time."""
    if loaded.kind not in HEALABLE:
        return None
    target = "next-token distribution" if loaded.kind == "causal-lm" else "class probabilities (no labels used)"
    if not st.toggle(
        "Heal after factorizing",
        key=f"{key}_heal",
        help="Train the factors toward the dense model on the task's training split (no labels): block level fits "
        f"each block to the dense block's outputs, end to end the whole model to the dense {target}; a held-out "
        "slice of the split keeps only what improves, the validation split stays for the numbers shown. "
        "Objectives: docs/methods.md#healing-lowrankhealing.",
    ):
        return None
    d = recipe_for(loaded)
    levels = LEVELS if sweepable(loaded) else ("end-to-end",)
    cols = st.columns(3)
    level = cols[0].selectbox("Healing level", levels, levels.index(d.level), key=f"{key}_heal_level")
    minutes = cols[1].number_input(
        "Time budget (minutes)", 0.1, 24 * 60.0, d.time_budget_s / 60, key=f"{key}_heal_minutes"
    )
    precisions = list(PRECISIONS)
    precision = cols[2].selectbox(
        "Training precision",
        precisions,
        precisions.index(d.precision),
        key=f"{key}_heal_precision",
        help="bfloat16 mixed precision: more steps in the time budget on hardware with bfloat16 matrix units (CPUs "
        "with AMX, recent GPUs); held-out checks stay float32. docs/methods.md#healing-lowrankhealing.",
    )
    chosen = d.with_(level=level, time_budget_s=float(minutes) * 60, precision=precision)
    cols = st.columns(4)
    if chosen.blocks:
        steps = cols[0].number_input("Steps per block", 1, 100_000, d.block_steps, key=f"{key}_heal_block_steps")
        lr = cols[1].number_input(
            "Block learning rate", 1e-7, 1.0, d.block_lr, format="%.1e", key=f"{key}_heal_block_lr"
        )
        chosen = chosen.with_(block_steps=int(steps), block_lr=float(lr))
    if chosen.end_to_end:
        steps = cols[2].number_input("End-to-end steps at most", 1, 100_000, d.steps, key=f"{key}_heal_steps")
        lr = cols[3].number_input("End-to-end learning rate", 1e-7, 1.0, d.lr, format="%.1e", key=f"{key}_heal_lr")
        chosen = chosen.with_(steps=int(steps), lr=float(lr))
    return chosen.to_dict()


def statistics_button(model: str, task: str, needs: Iterable[str], **button_options) -> None:
    """A button computing the statistics ``needs`` (progress bar, error on the page), then rerunning."""
    needs = tuple(needs)
    if st.button(f"Compute {statistics_label(needs)}", icon=":material/calculate:", **button_options):
        try:
            cache.statistics(model, task, needs)
        except USER_ERRORS as err:
            show_error(f"Cannot compute the {statistics_label(needs)}", err)
        else:
            st.rerun()


def calibration_widgets(task: str, key: str) -> dict:
    """The calibration sample of data-aware methods: a corpus (default: ``task``) and a number of tokens; warns
    (st.warning) when it is small or another corpus than ``task``. Returns StatisticsSettings fields for a sweep."""
    cols = st.columns(2)
    corpus = (
        cols[0]
        .text_input(
            "Calibration corpus",
            value=task,
            key=f"{key}_calibration_task",
            help="task name or path the statistics are computed on (e.g. lee, rotten_tomatoes:text, a .txt file)",
        )
        .strip()
    )
    tokens = cols[1].number_input(
        "Calibration tokens",
        min_value=DEFAULT.batch_size * DEFAULT.max_length,
        value=DEFAULT.tokens,
        step=DEFAULT.batch_size * DEFAULT.max_length,
        key=f"{key}_calibration_tokens",
        help="rounded up to whole batches; at most the corpus's training split",
    )
    settings = DEFAULT.with_(task=corpus or None).for_tokens(int(tokens))
    for note in calibration_notes({"task": corpus or task, "tokens": settings.tokens}, task):
        st.warning(note, icon=":material/warning:")
    return {k: v for k, v in settings.to_dict().items() if v != DEFAULT.to_dict().get(k)}


def sweep_card(store, sweep: dict) -> None:
    """Progress (or outcome) of one sweep, with a stop button while it runs."""
    spec = sweep["spec"]
    if spec.get("ranks") is not None:  # a Factorize run: the methods on one plan
        title = (
            f"Factorize #{sweep['id']}: {', '.join(spec.get('methods', []))} on the plan "
            f"({', '.join(f'{b:.0%}' for b in spec.get('budgets', []))} kept, {spec.get('strategy', '')})"
        )
    else:
        title = (
            f"Sweep #{sweep['id']}{' (' + sweep['label'] + ')' if sweep.get('label') else ''}: "
            f"{', '.join(spec.get('methods', []))} × {', '.join(f'{b:.0%}' for b in spec.get('budgets', []))} "
            f"· {spec.get('strategy', '')}"
        )
    done, total = sweep.get("runs_done") or 0, sweep.get("runs_total") or 0
    if sweep["status"] == "running":
        cols = st.columns([5, 1], vertical_alignment="bottom")
        cols[0].progress(float(sweep.get("progress") or 0.0), text=f"{title} — {sweep.get('message') or ''}")
        if cols[1].button("Stop", key=f"stop_sweep_{sweep['id']}", icon=":material/stop:"):
            cancel_sweep(store, int(sweep["id"]))
            st.rerun()
    elif sweep["status"] == "done":
        st.success(f"{title} — {sweep.get('message') or 'done'}", icon=":material/check_circle:")
    else:
        cols = st.columns([5, 1], vertical_alignment="center")
        cols[0].warning(
            f"{title} — {sweep['status']}: {sweep.get('error') or ''} (log: {log_path(store, int(sweep['id']))})",
            icon=":material/warning:",
        )
        if cols[1].button(
            "Resume",
            key=f"resume_sweep_{sweep['id']}",
            icon=":material/replay:",
            help="run what is missing: runs already stored are not run again",
        ):
            try:
                resume_sweep(store, int(sweep["id"]))
            except USER_ERRORS as err:
                show_error("Cannot resume the sweep", err)
            else:
                st.rerun()
    if total and sweep["status"] == "running":
        st.caption(f"{done} of {total} runs finished")


def follow_sweep(store, label: str, body: Callable[[dict], None] | None = None) -> dict | None:
    """The latest sweep labelled ``label`` as listed now (None when there is none), drawn in a fragment that reads
    the store every :data:`POLL_S` while it runs: its :func:`sweep_card`, then ``body(sweep)``; when it finishes,
    the page reruns once (and stops polling)."""
    sweeps = store.sweeps()
    latest = sweeps[sweeps["label"] == label]
    if latest.empty:
        return None
    sweep_id = int(latest["id"].iloc[0])
    running = latest["status"].iloc[0] == "running"

    @st.fragment(run_every=POLL_S if running else None)
    def live() -> None:
        reap_stale(store)
        sweep = store.get_sweep(sweep_id)
        if running and sweep["status"] != "running":
            st.rerun()  # finished: redraw the page once, without polling
        sweep_card(store, sweep)
        if body is not None:
            body(sweep)

    live()
    return latest.iloc[0].to_dict()


def destroyed_runs(runs: pd.DataFrame, dense: dict | None, task: str) -> dict[int, str]:
    """``{run id: why}`` for the finished compressed runs of ``runs`` that destroy the model
    (:func:`lowrank.evaluation.quality.destroyed`: perplexity above 10x dense, accuracy at chance)."""
    if dense is None or runs.empty:
        return {}
    chance = cache.chance(task) if dense["metric"] == "accuracy" else None  # chance: of a classification task only
    flagged = {}
    for row in runs[(runs["status"] == "done") & (runs["method"] != "dense")].to_dict("records"):
        value = None if pd.isna(row["value"]) else float(row["value"])
        why = destroyed(row["metric"], value, dense["value"], chance)
        if why:
            flagged[int(row["id"])] = why
    return flagged


def destroyed_warning(runs: pd.DataFrame, flagged: dict[int, str]) -> None:
    """One warning naming every run of ``flagged`` (:func:`destroyed_runs`) and why."""
    if not flagged:
        return
    by_id = runs.set_index("id")
    lines = [
        f"**{by_id.loc[i, 'method']}** (run #{i}"
        + (f", {by_id.loc[i, 'budget']:.0%} budget" if pd.notna(by_id.loc[i, "budget"]) else "")
        + f"): {why}"
        for i, why in flagged.items()
    ]
    st.warning(
        "Destroyed by the factorization (crossed out in the plot):  \n" + "  \n".join(lines),
        icon=":material/dangerous:",
    )


def build_card(recipe: Recipe) -> None:
    """The background build of ``recipe``'s model (:mod:`lowrank.experiments.build`): a button starting it, its
    progress (step of total, time left, message) polled every :data:`POLL_S` seconds while it runs (the page is
    drawn again once when it ends), then a button switching to the built model, or why it stopped with a button
    to build it again."""
    store = cache.store()
    running = (build.latest_build(store, recipe.name) or {}).get("status") == "running"
    label = model_label(recipe.name)

    @st.fragment(run_every=POLL_S if running else None)
    def card() -> None:
        row = build.latest_build(store, recipe.name)
        if running and (row or {}).get("status") != "running":
            st.rerun()  # ended: draw the page once more, without polling
        if row is not None and row["status"] == "running":
            st.progress(min(1.0, (row["step"] or 0) / row["total"]) if row["total"] else 0.0, text=build_text(row))
        elif recipe.built:
            if session.model_key() != recipe.name:
                cols = st.columns([4, 1], vertical_alignment="center")
                cols[0].success(
                    f"{label} is built" + (f" ({row['message']})" if row else ""), icon=":material/check_circle:"
                )
                if cols[1].button(f"Use {label}", key=f"use_{recipe.name}", icon=":material/swap_horiz:"):
                    try:
                        session.make_current(recipe.name, recipe.task)
                    except USER_ERRORS as err:
                        show_error(f"Cannot use {label}", err)
                    else:
                        st.rerun()
        else:
            if row is not None:  # failed or interrupted
                ended_job_warning(f"Building {label}", row, build.log_path(store, int(row["id"])))
            again = row is not None
            if st.button(
                f"Build {label} again" if again else "Fine-tune in the background",
                key=f"build_{recipe.name}",
                icon=":material/replay:" if again else ":material/school:",
                help=f"builds {recipe.out}",
            ):
                try:
                    build.start_build(recipe, store)
                except USER_ERRORS as err:
                    show_error(f"Cannot build {label}", err)
                else:
                    st.rerun()

    card()


def ended_job_warning(what: str, row: dict, log) -> None:
    """Why a background job stopped without finishing: ``what failed: its error (log: ...)``."""
    st.warning(
        f"{what} {row['status']}: {row.get('error') or row.get('message') or ''} (log: {log})",
        icon=":material/warning:",
    )


def build_text(row: dict) -> str:
    """What a running build is doing: ``Building minilm-rt: fine-tuning, loss 0.41 · step 120 of 638 · about 8 min
    left``."""
    return step_text(f"Building {model_label(row['name'])}", row)


def step_text(title: str, row: dict) -> str:
    """``title: message · step k of n · about t left`` for the row of a running job counting steps."""
    text = f"{title}: {row.get('message') or 'starting'}"
    if row.get("total"):
        text += f" · step {row['step'] or 0} of {row['total']}"
    left = eta_s(row)
    return text + (f" · about {format_duration(left)} left" if left is not None else "")


def untrained_head_warning(model: str, task: str) -> bool:
    """A warning when ``model`` has an untrained head on ``task`` (:func:`dashboard.cache.untrained_head`), with the
    card fine-tuning it in the background (:func:`build_card`); returns whether the head is untrained."""
    untrained = cache.untrained_head(model, task)
    if untrained:
        try:
            recipe = session.finetune_recipe(model, task)
        except USER_ERRORS as err:
            show_error(f"Cannot fine-tune {model_label(model)}", err)
            return untrained
        st.warning(untrained_head_text(model, task, recipe.command), icon=":material/school:")
        build_card(recipe)
    return untrained


def zip_folder(folder) -> bytes:
    """The files of ``folder`` as a zip archive (stored, not deflated: weights hardly compress)."""
    folder = Path(folder)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                archive.write(path, f"{folder.name}/{path.relative_to(folder)}")
    return buffer.getvalue()
