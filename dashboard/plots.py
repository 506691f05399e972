"""Plotly figure builders for the dashboard (pure functions of DataFrames; no Streamlit)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from lowrank.analysis.spectra import ENERGY_LEVELS
from lowrank.experiments.compare import metric_info

HEATMAP_METRICS = {
    "effective_rank": "effective rank",
    "stable_rank": "stable rank",
    "rank90": "rank for 90% energy",
    "dispersion": "Fisher dispersion",
    "risk": "SVD risk",
    "taylor": "Taylor loss change",
    "output_change": "predicted output change",
}


def _layout(fig: go.Figure, title: str, height: int = 380, **kwargs) -> go.Figure:
    fig.update_layout(
        title=dict(text=title, x=0, xanchor="left"),
        height=height,
        margin=dict(l=10, r=10, t=50, b=10),
        hoverlabel=dict(namelength=-1),
        **kwargs,
    )
    return fig


def layer_label(row) -> str:
    return f"block {row['block']} · {row['type']}" if row["block"] >= 0 else str(row["name"])


def spectrum_figure(frame: pd.DataFrame, names: Sequence[str]) -> go.Figure:
    """Singular values (log scale) of the selected layers, one line each."""
    fig = go.Figure()
    for _, row in frame[frame["name"].isin(names)].iterrows():
        s = np.asarray(row["singular_values"])
        fig.add_trace(
            go.Scatter(
                x=np.arange(1, len(s) + 1),
                y=s,
                mode="lines",
                name=layer_label(row),
                customdata=[row["name"]] * len(s),
                hovertemplate="%{customdata}<br>σ<sub>%{x}</sub> = %{y:.6g}<extra></extra>",
            )
        )
    fig.update_yaxes(type="log", title="singular value")
    fig.update_xaxes(title="singular value index (largest first)")
    return _layout(fig, "Singular values", legend=dict(font=dict(size=11)))


def energy_figure(frame: pd.DataFrame, names: Sequence[str]) -> go.Figure:
    """Cumulative energy ``sum_{i<=k} s_i^2 / sum s_i^2`` against rank, with 90/95/99% guides."""
    fig = go.Figure()
    for _, row in frame[frame["name"].isin(names)].iterrows():
        e = np.asarray(row["energy"])
        fig.add_trace(
            go.Scatter(
                x=np.arange(1, len(e) + 1),
                y=e,
                mode="lines",
                name=layer_label(row),
                customdata=[row["name"]] * len(e),
                hovertemplate="%{customdata}<br>rank %{x} keeps %{y:.4%} of the energy<extra></extra>",
            )
        )
    for level in ENERGY_LEVELS:
        fig.add_hline(
            y=level,
            line=dict(dash="dot", width=1, color="gray"),
            annotation_text=f"{level:.0%}",
            annotation_position="bottom right",
        )
    fig.update_yaxes(title="cumulative energy", tickformat=".0%", range=[0, 1.02])
    fig.update_xaxes(title="rank")
    return _layout(fig, "Cumulative energy", legend=dict(font=dict(size=11)))


OUTLIER_FENCE = 3.0  # a value beyond this many interquartile ranges outside the quartiles is an outlier


def color_range(values) -> dict:
    """A colour range for a heatmap that one outlier cannot swamp.

    Values beyond :data:`OUTLIER_FENCE` interquartile ranges outside the quartiles are outliers: the
    range spans the others (outliers take the end colours). Signed values get a diverging scale
    centred on 0. Returns ``zmin``, ``zmax``, ``zmid`` (or ``None``), ``colorscale`` and ``high`` /
    ``low``: masks of the outliers above / below the range (same shape as ``values``)."""
    z = np.asarray(values, dtype=float)
    finite = z[np.isfinite(z)]
    high, low = np.zeros(z.shape, dtype=bool), np.zeros(z.shape, dtype=bool)
    if finite.size == 0:
        return dict(zmin=None, zmax=None, zmid=None, colorscale="Viridis", high=high, low=low)
    lo, hi = float(finite.min()), float(finite.max())
    if finite.size >= 4:
        q1, q3 = np.percentile(finite, [25, 75])
        spread = q3 - q1
        top, bottom = q3 + OUTLIER_FENCE * spread, q1 - OUTLIER_FENCE * spread
        with np.errstate(invalid="ignore"):
            high, low = np.isfinite(z) & (z > top), np.isfinite(z) & (z < bottom)
        inliers = finite[(finite <= top) & (finite >= bottom)]
        if inliers.size and (high.any() or low.any()):
            lo, hi = float(inliers.min()), float(inliers.max())
    if lo < 0 < hi:
        bound = max(-lo, hi)
        return dict(zmin=-bound, zmax=bound, zmid=0.0, colorscale="RdBu_r", high=high, low=low)
    if lo == hi:
        return dict(zmin=None, zmax=None, zmid=None, colorscale="Viridis", high=high, low=low)
    return dict(zmin=lo, zmax=hi, zmid=None, colorscale="Viridis", high=high, low=low)


def _cell_text(value: float, high: bool, low: bool) -> str:
    if not np.isfinite(value):
        return ""
    return f"{value:.3g}" + (" ▲" if high else " ▼" if low else "")


def heatmap_figure(frame: pd.DataFrame, column: str, title: str | None = None) -> go.Figure:
    """Block (rows) x layer type (columns) heatmap of ``column``; hover shows the layer and the exact value.

    The colour range is robust (:func:`color_range`): an outlier keeps its exact value in its cell, marked
    ▲ (above the colour range) or ▼ (below), and the title says so."""
    types = list(dict.fromkeys(frame["type"]))
    blocks = sorted(frame["block"].unique())
    z = np.full((len(blocks), len(types)), np.nan)
    names = np.full((len(blocks), len(types)), "", dtype=object)
    for _, row in frame.iterrows():
        i, j = blocks.index(row["block"]), types.index(row["type"])
        z[i, j] = row[column]
        names[i, j] = row["name"]
    scale = color_range(z)
    text = [
        [_cell_text(z[i, j], scale["high"][i, j], scale["low"][i, j]) for j in range(len(types))]
        for i in range(len(blocks))
    ]
    label = HEATMAP_METRICS.get(column, column)
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=types,
            y=[f"block {b}" for b in blocks],
            customdata=names,
            text=text,
            colorscale=scale["colorscale"],
            zmin=scale["zmin"],
            zmax=scale["zmax"],
            zmid=scale["zmid"],
            texttemplate="%{text}",
            textfont=dict(size=11),
            hovertemplate="%{customdata}<br>%{y} · %{x}<br>" + label + " = %{z:.6g}<extra></extra>",
            colorbar=dict(title=dict(text=label, side="right"), tickformat=".3~g"),
        )
    )
    fig.update_yaxes(autorange="reversed", title="Transformer block")
    fig.update_xaxes(title="layer type")
    outliers = int(scale["high"].sum() + scale["low"].sum())
    heading = title or f"{label} by block and layer type"
    if outliers:
        heading += (
            f"<br><sup>colours span the other cells: {outliers} outlier{'s' if outliers > 1 else ''} "
            "(▲ above, ▼ below the colour range) show their value in the cell</sup>"
        )
    return _layout(fig, heading, height=max(260, 60 + 42 * len(blocks)) + (20 if outliers else 0))


CONVERGENCE_WORST = 5  # layers drawn by name in a convergence plot; the others are summarised


def convergence_figure(history: dict[str, list[float]], title: str, worst: int = CONVERGENCE_WORST) -> go.Figure:
    """Weighted error per iteration relative to the start (``E_k / E_0``, log scale).

    With at most ``worst`` layers, one line each. With more: the median over layers and the band between
    the 10th and 90th percentiles (a layer that stopped early keeps its last value), and the ``worst`` layers
    with the highest final ``E / E_0`` drawn by name."""
    curves = {name: np.asarray(errors, dtype=float) for name, errors in history.items()}
    curves = {name: errors / errors[0] for name, errors in curves.items() if len(errors) and errors[0] > 0}
    fig = go.Figure()
    shown = curves
    if len(curves) > worst:
        length = max(len(c) for c in curves.values())
        padded = np.stack([np.pad(c, (0, length - len(c)), mode="edge") for c in curves.values()])
        low, median, high = np.percentile(padded, [10, 50, 90], axis=0)
        x = np.arange(length)
        fig.add_trace(go.Scatter(x=x, y=high, mode="lines", line=dict(width=0), showlegend=False, hoverinfo="skip"))
        fig.add_trace(
            go.Scatter(
                x=x,
                y=low,
                mode="lines",
                line=dict(width=0),
                fill="tonexty",
                fillcolor="rgba(120,120,120,0.25)",
                name=f"10th–90th percentile of {len(curves)} layers",
                hovertemplate="iteration %{x}<br>10th percentile E/E₀ = %{y:.3g}<extra></extra>",
            )
        )
        fig.add_trace(
            go.Scatter(
                x=x,
                y=median,
                mode="lines",
                line=dict(color="black", width=2),
                name=f"median of {len(curves)} layers",
                hovertemplate="iteration %{x}<br>median E/E₀ = %{y:.3g}<extra></extra>",
            )
        )
        shown = dict(sorted(curves.items(), key=lambda item: -item[1][-1])[:worst])
    for name, relative in shown.items():
        fig.add_trace(
            go.Scatter(
                x=np.arange(len(relative)),
                y=relative,
                mode="lines+markers",
                name=name,
                customdata=np.asarray(history[name], dtype=float),
                hovertemplate=name + "<br>iteration %{x}<br>E/E₀ = %{y:.3g}<br>E = %{customdata:.3g}<extra></extra>",
            )
        )
    if len(curves) > worst:
        title += f"<br><sup>median and spread of {len(curves)} layers; the {worst} with the highest final error by name</sup>"
    fig.update_yaxes(type="log", title="weighted error relative to the start, E / E₀ (log scale)")
    fig.update_xaxes(title="solver iteration", dtick=1)
    return _layout(fig, title, height=420 if len(curves) > worst else 380)


def pareto_mask(x: Sequence[float], y: Sequence[float], higher_is_better: bool = True) -> np.ndarray:
    """True for points no other point beats: at most as many parameters and a strictly better metric
    (or fewer parameters and an equal metric)."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    score = y if higher_is_better else -y
    order = np.lexsort((-score, x))  # by parameters, best score first among equals
    mask = np.zeros(len(x), dtype=bool)
    best = -math.inf
    for i in order:
        if score[i] > best:
            mask[i] = True
            best = score[i]
    return mask


def tradeoff_figure(runs: pd.DataFrame, dense: dict | None = None, destroyed: dict | None = None) -> go.Figure:
    """Metric against kept parameters of the compressible layers: one line per method (and strategy),
    the Pareto front outlined, the dense model as a reference line, and the runs in ``destroyed``
    (``{run id: why}``) crossed out in red. Which way is better and whether the axis is logarithmic come from
    :data:`lowrank.experiments.compare.METRICS` (perplexity: lower, log axis)."""
    metric = runs["metric"].iloc[0] if len(runs) else (dense or {}).get("metric", "accuracy")
    reads = metric_info(metric)
    fig = go.Figure()
    runs = runs.sort_values("params_linear")
    several = runs["strategy"].nunique() > 1
    for (method, strategy), group in runs.groupby(["method", "strategy"], sort=True, dropna=False):
        label = f"{method} · {strategy}" if several else str(method)
        fig.add_trace(
            go.Scatter(
                x=group["params_linear"],
                y=group["value"],
                mode="lines+markers",
                name=label,
                customdata=np.stack(
                    [
                        group["budget"],
                        group["kept_fraction"],
                        group["size_bytes"] / 1e6,
                        group["latency_ms_b1"].astype(float),
                        group["id"],
                    ],
                    axis=1,
                ),
                hovertemplate=(
                    label + "<br>budget %{customdata[0]:.0%} · kept %{customdata[1]:.1%}<br>"
                    "%{x:,} linear params<br>" + metric + " %{y:.4f}<br>%{customdata[2]:.1f} MB · "
                    "%{customdata[3]:.1f} ms (batch 1)<br>run #%{customdata[4]}<extra></extra>"
                ),
            )
        )
    if len(runs):
        mask = pareto_mask(runs["params_linear"], runs["value"], reads.higher_is_better)
        front = runs[mask].sort_values("params_linear")
        fig.add_trace(
            go.Scatter(
                x=front["params_linear"],
                y=front["value"],
                mode="lines+markers",
                name="Pareto front",
                line=dict(shape="hv", dash="dot", color="black", width=1),
                marker=dict(symbol="circle-open", size=16, line=dict(width=2, color="black")),
                hovertemplate="Pareto front<br>%{x:,} params<br>" + metric + " %{y:.4f}<extra></extra>",
            )
        )
    if dense is not None:
        fig.add_hline(
            y=dense["value"],
            line=dict(dash="dash", color="gray"),
            annotation_text=f"dense {dense['value']:.4g}",
            annotation_position="top left",
        )
        fig.add_trace(
            go.Scatter(
                x=[dense["params_linear"]],
                y=[dense["value"]],
                mode="markers",
                name="dense",
                marker=dict(symbol="star", size=14, color="gray"),
                hovertemplate="dense<br>%{x:,} linear params<br>" + metric + " %{y:.4f}<extra></extra>",
            )
        )
    flagged = runs[runs["id"].isin(list(destroyed or {}))] if len(runs) else runs
    if len(flagged):
        fig.add_trace(
            go.Scatter(
                x=flagged["params_linear"],
                y=flagged["value"],
                mode="markers",
                name="destroys the model",
                marker=dict(symbol="x-thin", size=18, line=dict(width=3, color="crimson")),
                customdata=[destroyed[int(i)] for i in flagged["id"]],
                hovertemplate="run #%{text}: %{customdata}<extra></extra>",
                text=[str(int(i)) for i in flagged["id"]],
            )
        )
    fig.update_xaxes(title="kept parameters in compressible layers")
    fig.update_yaxes(
        title=metric + (" (log scale)" if reads.log_axis else ""), type="log" if reads.log_axis else "linear"
    )
    return _layout(fig, f"{metric.capitalize()} vs kept parameters", height=460)
