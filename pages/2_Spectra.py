"""Spectra: singular values and cumulative energy of selected layers, and a block x layer-type heatmap
of rank statistics, Fisher dispersion, the predicted SVD risk and the Taylor estimates of SVD's loss change and of
how much it changes the predictions."""

from __future__ import annotations

import streamlit as st

from dashboard import layout, plots, state, widgets
from lowrank.compress import resolve_ranks
from lowrank.metrics import risk_summary

layout.setup("Spectra")
model, task = state.model_key(), state.task_key()
try:
    loaded = state.current_model()
    frame = state.spectra(model, task)
except state.USER_ERRORS as err:
    widgets.show_error(f"Cannot compute the spectra of {state.model_label(model)}", err)
    st.page_link("pages/1_Model_and_task.py", label="Choose another model", icon=":material/dataset:")
    st.stop()


TAYLOR_TERMS = {"taylor": "total", "output_change": "second_order"}  # heatmap statistic -> svd_loss_change term


def plan_ranks() -> tuple[dict[str, int], str]:
    """The ranks the risk and Taylor heatmaps use, and where they come from (for the caption)."""
    current_plan = state.plan()
    if current_plan is not None:
        return current_plan.ranks, "the current rank plan"
    return resolve_ranks(loaded.model, state.DEFAULT_BUDGET), f"{state.DEFAULT_BUDGET:.0%} kept in every layer"


labels = {row["name"]: plots.layer_label(row) for _, row in frame.iterrows()}
first_block = frame["block"].min()
selected = st.multiselect("Layers", list(labels), default=list(frame.loc[frame["block"] == first_block, "name"]),
                          format_func=lambda n: labels[n], key="spectra_layers",
                          help="Singular values and energy curves of these layers")
left, right = st.columns(2)
left.plotly_chart(plots.spectrum_figure(frame, selected), key="spectrum")
right.plotly_chart(plots.energy_figure(frame, selected), key="energy")

st.subheader("By block and layer type")
have_fisher = state.fisher_available(model, task)
choices = list(plots.HEATMAP_METRICS)
column = st.segmented_control("Statistic", choices, default="effective_rank", format_func=plots.HEATMAP_METRICS.get,
                              required=True, key="heatmap_metric")
stats = frame.drop(columns=["singular_values", "energy"])
if column in ("dispersion", "risk") and not have_fisher:
    st.info("Fisher dispersion and SVD risk need the Fisher information of the model on the task "
            "(one pass over 512 training examples, cached on disk).", icon=":material/info:")
    state.fisher_button(model, task, type="primary")
elif column == "dispersion":
    stats["dispersion"] = stats["name"].map(state.dispersion(model, task))
    st.plotly_chart(plots.heatmap_figure(stats, "dispersion"), key="heatmap")
    st.caption("Coefficient of variation of the Fisher information summed per input feature: 0 when every input "
               "matters equally; large where plain SVD spends its rank on the wrong directions.")
elif column == "risk":
    ranks, source = plan_ranks()
    table = state.risk(model, task, tuple(sorted(ranks.items())))
    stats = stats.merge(table[["name", "rank", "loss_svd", "loss_weighted", "risk"]], on="name", how="left")
    st.plotly_chart(plots.heatmap_figure(stats, "risk"), key="heatmap")
    summary = risk_summary(table)
    verdict = "plain SVD is expected to lose accuracy" if summary["svd_expected_to_drop"] else "plain SVD looks safe"
    st.caption(f"Predicted loss increase of plain SVD divided by that of Fisher-weighted SVD, at the ranks of {source} "
               "(empty cells: layers kept dense).")
    (st.warning if summary["svd_expected_to_drop"] else st.success)(
        f"{verdict}: predicted loss increase {summary['total_loss_svd']:.4g} (SVD) vs {summary['total_loss_weighted']:.4g} "
        f"(weighted); {len(summary['flagged'])} layer(s) flagged with risk ≥ 1.5"
        + (f": {', '.join(labels[n] for n in summary['flagged'][:8])}" if summary["flagged"] else ""))
elif column in TAYLOR_TERMS:
    ranks, source = plan_ranks()
    try:
        estimates = state.taylor(model, task, tuple(sorted(ranks.items())))
    except state.USER_ERRORS as err:
        widgets.show_error("Cannot compute the Taylor estimate", err)
        st.stop()
    stats[column] = stats["name"].map({name: e[TAYLOR_TERMS[column]] for name, e in estimates.items()})
    st.plotly_chart(plots.heatmap_figure(stats, column), key="heatmap")
    sample = state.fisher_settings()
    examples = sample["num_batches"] * sample["batch_size"]
    if column == "taylor":
        st.caption(f"Loss change (nats) predicted for replacing each layer alone by its plain-SVD approximation at the "
                   f"ranks of {source}: the first-order term plus the full empirical-Fisher quadratic form over "
                   f"{examples} training examples (lowrank.fisher.svd_loss_change). Negative: the change is expected "
                   "to lower the loss. On minilm-rt it ranks layers by their measured validation-loss change better "
                   "than the diagonal estimate behind the risk (Spearman 0.55-0.71 vs 0.48-0.53 over two builds, "
                   "benchmarks/predictor.py).")
    else:
        st.caption(f"How much replacing each layer alone by its plain-SVD approximation at the ranks of {source} "
                   "changes the model: the full empirical-Fisher quadratic form 0.5 mean_n <g_n, dW>^2 over "
                   f"{examples} training examples, a second-order estimate of the mean KL divergence between the "
                   "dense and the compressed predictions (nats). On minilm-rt it ranks layers by the measured KL at "
                   "Spearman 0.85 with the right size (benchmarks/predictor.py); whether a change raises or lowers "
                   "the validation loss it cannot say.")
else:
    st.plotly_chart(plots.heatmap_figure(stats, column), key="heatmap")
    if not have_fisher:
        st.caption("Fisher dispersion and SVD risk become available once the Fisher information is computed.")

with st.expander("All statistics"):
    st.dataframe(stats, hide_index=True)
