"""Small Streamlit building blocks: a progress-bar adapter for the library's progress callbacks,
error display, per-method option widgets generated from the method registry, number formats."""

from __future__ import annotations

import inspect
import math
from typing import Optional

import streamlit as st

from lowrank.factorize import get_method
from lowrank.weighted import AXES, INIT_AXES, SOLVERS

# Known choice lists for string options of registered methods; other options get a free input.
OPTION_CHOICES = {"solver": tuple(SOLVERS), "axis": AXES, "init_axis": INIT_AXES}


class ProgressBar:
    """``st.progress`` driven by library callbacks ``fn(done, total, message)``.

    Creates its own placeholder where it is constructed (also inside cached functions, where
    Streamlit replays it), and clears it on exit unless ``keep``; a kept bar ends at 100% with
    ``done_text``.
    """

    def __init__(self, label: str, keep: bool = False, done_text: Optional[str] = None):
        self.label = label
        self.keep = keep
        self.done_text = done_text or f"{label}: done"
        self.slot = st.empty()
        self.slot.progress(0.0, text=label)

    def __call__(self, done: int, total: int, message: str = "") -> None:
        fraction = done / total if total else 1.0
        text = f"{self.label}: {message}" if message else self.label
        self.slot.progress(min(1.0, max(0.0, fraction)), text=text)

    def __enter__(self) -> "ProgressBar":
        return self

    def __exit__(self, kind, value, traceback) -> None:
        if self.keep and kind is None:
            self.slot.progress(1.0, text=self.done_text)
        else:
            self.slot.empty()


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
    message = str(err).strip() or type(err).__name__
    st.error(f"{prefix}: {message}" if prefix else message, icon=":material/error:")


def method_options(method: str) -> dict:
    """Keyword options of a registered method with their defaults (from its signature)."""
    params = list(inspect.signature(get_method(method).fn).parameters.values())[2:]
    return {p.name: p.default for p in params
            if p.name != "importance" and p.default is not inspect.Parameter.empty
            and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def option_widgets(method: str, key: str) -> dict:
    """Widgets for ``method``'s options (choice lists for known names); returns the chosen values."""
    chosen = {}
    defaults = method_options(method)
    if not defaults:
        st.caption("no options")
    for name, default in defaults.items():
        widget_key = f"{key}_{method}_{name}"
        if name in OPTION_CHOICES and isinstance(default, str):
            choices = list(OPTION_CHOICES[name])
            chosen[name] = st.selectbox(name, choices, index=choices.index(default) if default in choices else 0, key=widget_key)
        elif isinstance(default, bool):
            chosen[name] = st.checkbox(name, value=default, key=widget_key)
        elif isinstance(default, int):
            chosen[name] = int(st.number_input(name, value=default, step=1, key=widget_key))
        elif isinstance(default, float):
            chosen[name] = float(st.number_input(name, value=default, format="%g", key=widget_key))
        elif isinstance(default, str):
            chosen[name] = st.text_input(name, value=default, key=widget_key)
    return chosen


def method_label(method: str) -> str:
    spec = get_method(method)
    return f"{method} (needs Fisher)" if spec.needs_importance else method


def fmt_params(n) -> str:
    if n is None or (isinstance(n, float) and math.isnan(n)):
        return "–"
    n = float(n)
    if abs(n) >= 1e6:
        return f"{n / 1e6:.2f}M"
    if abs(n) >= 1e3:
        return f"{n / 1e3:.1f}k"
    return f"{n:.0f}"


def fmt_metric(metric: Optional[str], value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.2f}" if metric == "perplexity" else f"{value:.3f}"


def fmt_bytes(n) -> str:
    if n is None or (isinstance(n, float) and math.isnan(n)):
        return "–"
    return f"{float(n) / 1e6:.1f} MB"


def fmt_ms(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return f"{float(v):.1f} ms"


def sweep_card(store, sweep: dict) -> None:
    """Progress (or outcome) of one sweep, with a stop button while it runs."""
    from lowrank.sweep import cancel_sweep, log_path

    spec = sweep["spec"]
    title = (f"Sweep #{sweep['id']}{' (' + sweep['label'] + ')' if sweep.get('label') else ''}: "
             f"{', '.join(spec.get('methods', []))} × {', '.join(f'{b:.0%}' for b in spec.get('budgets', []))} "
             f"· {spec.get('strategy', '')}")
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
        st.warning(f"{title} — {sweep['status']}: {sweep.get('error') or ''} (log: {log_path(store, int(sweep['id']))})",
                   icon=":material/warning:")
    if total and sweep["status"] == "running":
        st.caption(f"{done} of {total} runs finished")


def zip_folder(folder) -> bytes:
    """The files of ``folder`` as a zip archive (stored, not deflated: weights hardly compress)."""
    import io
    import zipfile
    from pathlib import Path

    folder = Path(folder)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                archive.write(path, f"{folder.name}/{path.relative_to(folder)}")
    return buffer.getvalue()
