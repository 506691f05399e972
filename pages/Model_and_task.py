"""Model & task: choose a packaged model, a Hugging Face id or a local folder, and a task; see the
architecture, parameter counts, compressible layers and the dense model's quality."""

from __future__ import annotations

import time

import streamlit as st

import lowrank
from dashboard import cache, inputs, layout, names, session, widgets  # first: sets up the environment for torch
from lowrank.report import formats

layout.header(__file__)


def try_select(model: str, task: str) -> bool:
    """Make ``model`` current with ``task``, or with a task of its kind when ``task`` does not fit; otherwise
    show why not."""
    try:
        session.make_current(model, task)
    except widgets.USER_ERRORS as err:
        widgets.show_error(f"Cannot use {names.model_label(model)}", err)
        return False
    return True


notice = session.pop_notice()
if notice:
    st.info(notice, icon=":material/swap_horiz:")
model, task = session.model_key(), session.task_key()
left, right = st.columns(2, gap="large")

with left:
    st.subheader("Model")
    packaged = model in lowrank.PACKAGED
    sources = ["Packaged", "Hugging Face id or local folder"]
    source = st.radio("Source", sources, index=0 if packaged else 1, horizontal=True, key="model_source")
    if source == sources[0]:
        names = list(lowrank.PACKAGED)
        choice = st.selectbox(
            "Packaged model",
            names,
            index=names.index(model) if packaged else 0,
            format_func=lambda n: f"{n}: {lowrank.PACKAGED[n]}",
            key="packaged_model",
        )
        if choice != model and try_select(choice, task):
            st.rerun()
    else:
        with st.form("custom_model", border=False):
            typed = st.text_input(
                "Hugging Face id or local folder",
                value="" if packaged else model,
                placeholder="e.g. prajjwal1/bert-tiny or /data/models/my-bert",
            )
            submitted = st.form_submit_button("Load model", icon=":material/download:")
        if submitted:
            typed = typed.strip()
            if not typed:
                st.error("Enter a Hugging Face model id or the path of a local model folder.", icon=":material/error:")
            else:
                try:
                    source = inputs.model_source(typed)  # a path only under the allowed roots
                except ValueError as err:
                    widgets.show_error("", err)
                else:
                    if source != model and try_select(source, task):
                        st.rerun()

with right:
    st.subheader("Task")
    try:
        options, csv_fits = session.tasks_for(model), session.csv_fits(model)
    except widgets.USER_ERRORS:  # the model's config is unreadable: shown below
        options, csv_fits = list(names.TASK_LABELS), True
    if names.is_csv(task) and csv_fits:
        options.append(task)
    upload = "upload"
    if csv_fits:
        options.append(upload)
    else:
        st.caption(
            f"{names.model_label(model)} is a causal language model: it is measured by perplexity on a text "
            "task (classification tasks and CSV uploads need a classifier)."
        )
    picked = st.radio(
        "Task",
        options,
        index=options.index(task) if task in options else 0,
        key="task_choice",
        format_func=lambda k: "Upload a CSV (columns text,label)" if k == upload else names.task_label(k),
    )
    if picked == upload:
        uploaded = st.file_uploader(
            "CSV with columns text,label (optional split column: train/validation/test)",
            type=["csv"],
            key="task_upload",
        )
        if uploaded is not None:
            try:
                path = cache.save_upload(uploaded.name, uploaded.getvalue())
                cache.get_task(path)
            except widgets.USER_ERRORS as err:
                widgets.show_error(f"Cannot use {uploaded.name}", err)
            else:
                if path != task and try_select(model, path):
                    st.rerun()
    elif picked != task and try_select(model, picked):
        st.rerun()

model, task = session.model_key(), session.task_key()
with widgets.stop_on_error(f"Cannot load {names.model_label(model)}"):
    loaded = cache.load(model, task)
    task_obj = cache.get_task(task)

st.divider()
st.subheader("Architecture")
config = loaded.model.config
layers = cache.layer_table(model, task)
total = loaded.num_parameters()
linear = int(layers["params"].sum())
architecture = (getattr(config, "architectures", None) or [type(loaded.model).__name__])[0]
st.markdown(
    f"**{architecture}** (`{config.model_type}`, {loaded.kind}) · "
    f"{getattr(config, 'num_hidden_layers', '?')} blocks · hidden size {getattr(config, 'hidden_size', '?')} · "
    f"{getattr(config, 'num_attention_heads', '?')} attention heads · vocabulary {getattr(config, 'vocab_size', 0):,}"
)
cols = st.columns(4)
cols[0].metric("Parameters", formats.format_params(total), help=f"{total:,}")
cols[1].metric(
    "In compressible layers",
    formats.format_params(linear),
    f"{linear / total:.0%} of all",
    delta_color="off",
    delta_arrow="off",
    help=f"{linear:,}; embeddings, norms and heads stay dense",
)
cols[2].metric("Elsewhere", formats.format_params(total - linear), help="embeddings, norms, biases and heads")
cols[3].metric("Compressible layers", len(layers))
with st.expander(f"Compressible layers ({len(layers)})"):
    st.dataframe(
        layers,
        hide_index=True,
        column_config={
            "name": st.column_config.TextColumn("layer", width="large"),
            "params": st.column_config.NumberColumn("params", format="localized"),
            "break_even": st.column_config.NumberColumn(
                "break-even rank", help="r (out + in) >= out x in: no saving at or above"
            ),
            "max_rank": st.column_config.NumberColumn("largest useful rank"),
        },
    )

st.subheader("Task")
sizes = task_obj.sizes()
label_names = ", ".join(task_obj.label_names) if task_obj.label_names else "none (next-token prediction)"
st.markdown(
    f"**{names.task_label(task)}** · {task_obj.kind} · "
    + " / ".join(f"{sizes[s]:,} {s}" for s in sizes)
    + f" · labels: {label_names}"
)
with st.expander("Examples from the validation split"):
    texts = task_obj.split_texts("validation")[:5]
    rows = {"text": [str(t) for t in texts]}
    if task_obj.labels:
        rows["label"] = [task_obj.label_names[i] for i in task_obj.labels["validation"][:5]]
    st.dataframe(rows, hide_index=True)

st.subheader("Dense model quality")
with st.expander("Evaluation settings"):
    limit = st.number_input(
        "Evaluate on at most this many batches of the validation split (0 = all of it)",
        min_value=0,
        value=session.eval_limit() or 0,
        step=1,
    )
    if (limit or None) != session.eval_limit():
        session.set_eval_limit(int(limit) or None)
        st.rerun()
# A failed evaluation is not retried on every rerun (each try records a failed run): only on request.
attempt = (model, task, session.eval_limit(), cache.fingerprint(model, task))
failed = st.session_state.setdefault("dense_failures", {})
if attempt in failed:
    st.error(f"Cannot evaluate the dense model: {failed[attempt]}", icon=":material/error:")
    if not st.button("Try again", icon=":material/refresh:"):
        st.stop()
    del failed[attempt]
try:
    dense = cache.dense_evaluation(model, task, session.eval_limit())
except widgets.USER_ERRORS as err:
    failed[attempt] = str(err).strip() or type(err).__name__
    widgets.show_error("Cannot evaluate the dense model", err)
    st.stop()
untrained = widgets.untrained_head_warning(model, task)
cols = st.columns(5)
cols[0].metric(
    names.quality_label(dense["metric"], untrained),
    formats.format_metric(dense["metric"], dense["value"]),
    help=f"{dense['examples']:,} {'examples' if dense['metric'] == 'accuracy' else 'tokens'} of the validation split"
    + (f"; {dense['protocol']}" if isinstance(dense.get("protocol"), str) else ""),
)
cols[1].metric("Loss", f"{dense['loss']:.4f}")
cols[2].metric("Size on disk", formats.format_bytes(dense["size_bytes"]), help="safetensors file, float32")
cols[3].metric(
    "Latency, batch 1",
    formats.format_ms(dense["latency_ms_b1"]),
    help=names.latency_help(dense.get("latency_info"), "b1"),
)
cols[4].metric(
    "Latency, batch 32",
    formats.format_ms(dense["latency_ms_b32"]),
    help=names.latency_help(dense.get("latency_info"), "b32"),
)
measured = time.strftime("%Y-%m-%d %H:%M", time.localtime(dense["finished"]))
st.caption(
    f"Run #{dense['id']} in the run store, measured {measured}; reused until the weights, task or evaluation "
    "settings change."
)
