"""Spectra: singular values and cumulative energy of selected layers, and a block x layer-type heatmap
of rank statistics, Fisher dispersion, the predicted SVD risk and the Taylor estimates of SVD's loss change and of
how much it changes the predictions, and those predictions against what was measured (per layer and per run)."""

from __future__ import annotations

import streamlit as st

from dashboard import (
    agreement,
    cache,
    layout,
    names,
    plots,
    session,
    widgets,
)  # first: sets up the environment for torch
from lowrank.analysis.metrics import RISK_THRESHOLD, risk_summary
from lowrank.analysis.spectra import PLAIN, metrics
from lowrank.methods import get_method
from lowrank.statistics import DEFAULT, statistics_label

TAYLOR_TERMS = {"taylor": "total", "output_change": "second_order"}  # heatmap statistic -> svd_loss_change term
FISHER_STATISTICS = ("dispersion", "risk")  # heatmap statistics computed from the predictions' statistics
RESULTS = "docs/results/predictor.md"  # how well each estimate ranks layers, measured

examples = f"{DEFAULT.num_batches * DEFAULT.batch_size} {DEFAULT.split} examples"

layout.header(__file__)
model, task = session.model_key(), session.task_key()

with widgets.stop_on_error(f"Cannot compute the spectra of {names.model_label(model)}", choose_model=True):
    cache.check_pair(model, task)
    frame = cache.spectra(model, task)  # from the disk cache when the weights are unchanged: no model load


order = list(names.SPECTRUM_METRICS)  # plain first, then by how much of the model the metric sees
spectrum_metrics = sorted(metrics(), key=lambda m: order.index(m) if m in order else len(order))
metric = st.segmented_control(
    "Metric",
    spectrum_metrics,
    default=PLAIN,
    format_func=names.spectrum_metric_label,
    required=True,
    key="spectra_metric",
    help="Whose singular values: W itself, or the matrix a weighted method truncates. Its squared tail "
    "sum_{i>r} s_i^2 is that method's error at rank r, so a faster decay means each rank buys more.",
)
layer_names = {row["name"]: plots.layer_label(row) for _, row in frame.iterrows()}  # the same under every metric
first_block = frame["block"].min()
selected = st.multiselect(
    "Layers",
    list(layer_names),
    default=list(frame.loc[frame["block"] == first_block, "name"]),
    format_func=lambda n: layer_names[n],
    key="spectra_layers",
    help="Singular values and energy curves of these layers",
)
if metric != PLAIN:
    with widgets.stop_on_error(f"Cannot compute the spectra under {metric}"):
        shown = cache.layer_metric_spectra(model, task, metric, selected)  # these layers first: seconds
    st.caption(
        f"Singular values of {names.SPECTRUM_METRICS.get(metric, metric)}, the matrix {metric} truncates, from "
        f"its {statistics_label(get_method(metric).needs)} on {examples}."
    )
else:
    shown = frame
left, right = st.columns(2)
left.plotly_chart(plots.spectrum_figure(shown, selected), key="spectrum")
right.plotly_chart(plots.energy_figure(shown, selected), key="energy")
if metric != PLAIN:
    with widgets.stop_on_error(f"Cannot compute the spectra under {metric}"):
        frame = cache.metric_spectra(model, task, metric)  # every layer, for the heatmaps below
with widgets.stop_on_error(f"Cannot load {names.model_label(model)}", choose_model=True):
    loaded = cache.load(model, task)  # the heatmaps below need the model (and its statistics)

st.subheader("By block and layer type")
have_statistics = cache.is_cached(model, task, cache.PREDICTION_NEEDS)
needed = statistics_label(cache.PREDICTION_NEEDS)
column = st.segmented_control(
    "Statistic",
    list(plots.HEATMAP_METRICS),
    default="effective_rank",
    format_func=plots.HEATMAP_METRICS.get,
    required=True,
    key="heatmap_metric",
)
stats = frame.drop(columns=["singular_values", "energy"])
if column in FISHER_STATISTICS and not have_statistics:
    st.info(
        f"Fisher dispersion and SVD risk need the {needed} of the model on the task "
        f"(one pass over {examples}, cached on disk).",
        icon=":material/info:",
    )
    widgets.statistics_button(model, task, cache.PREDICTION_NEEDS, type="primary")
elif column == "dispersion":
    stats["dispersion"] = stats["name"].map(cache.dispersion(model, task))
    st.plotly_chart(plots.heatmap_figure(stats, "dispersion"), key="heatmap")
    st.caption(
        "Coefficient of variation of the Fisher information summed per input feature: 0 when every input "
        "matters equally; large where plain SVD spends its rank on the wrong directions."
    )
elif column == "risk":
    ranks, source = agreement.plan_ranks(model, task)
    table = cache.risk(model, task, tuple(sorted(ranks.items())))
    stats = stats.merge(table[["name", "rank", "loss_svd", "loss_weighted", "risk"]], on="name", how="left")
    st.plotly_chart(plots.heatmap_figure(stats, "risk"), key="heatmap")
    summary = risk_summary(table)
    verdict = "plain SVD is expected to lose accuracy" if summary["svd_expected_to_drop"] else "plain SVD looks safe"
    st.caption(
        f"Predicted loss increase of plain SVD divided by that of Fisher-weighted SVD, at the ranks of {source} "
        "(empty cells: layers kept dense)."
    )
    (st.warning if summary["svd_expected_to_drop"] else st.success)(
        f"{verdict}: predicted loss increase {summary['total_loss_svd']:.4g} (SVD) vs {summary['total_loss_weighted']:.4g} "
        f"(weighted); {len(summary['flagged'])} layer(s) flagged with risk ≥ {RISK_THRESHOLD:g}"
        + (f": {', '.join(layer_names[n] for n in summary['flagged'][:8])}" if summary["flagged"] else "")
    )
elif column in TAYLOR_TERMS:
    ranks, source = agreement.plan_ranks(model, task)
    with widgets.stop_on_error("Cannot compute the Taylor estimate"):
        estimates = cache.taylor(model, task, tuple(sorted(ranks.items())))
    stats[column] = stats["name"].map({name: e[TAYLOR_TERMS[column]] for name, e in estimates.items()})
    st.plotly_chart(plots.heatmap_figure(stats, column), key="heatmap")
    if column == "taylor":
        st.caption(
            f"Loss change (nats) predicted for replacing each layer alone by its plain-SVD approximation at the "
            f"ranks of {source}: the first-order term plus the full empirical-Fisher quadratic form over "
            f"{examples} (lowrank.statistics.taylor.svd_loss_change). Negative: the change is expected "
            f"to lower the loss. How well it ranks layers: `{RESULTS}`."
        )
    else:
        st.caption(
            f"How much replacing each layer alone by its plain-SVD approximation at the ranks of {source} "
            "changes the model: the full empirical-Fisher quadratic form 0.5 mean_n <g_n, dW>^2 over "
            f"{examples}, a second-order estimate of the mean KL divergence between the dense and the "
            "compressed predictions (nats); whether a change raises or lowers the validation loss it cannot "
            f"say. How well it ranks layers: `{RESULTS}`."
        )
else:
    st.plotly_chart(plots.heatmap_figure(stats, column), key="heatmap")
    if not have_statistics:
        st.caption(f"Fisher dispersion and SVD risk become available once the {needed} is computed.")

with st.expander("All statistics"):
    st.dataframe(stats, hide_index=True)

agreement.layer_section(model, task, "spectra")
checked = agreement.checked_summary(model, task)
if checked is not None and checked.drop_checks:
    st.subheader("Predicted against measured, per run")
    agreement.run_section(checked, "spectra")
