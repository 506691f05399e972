"""Which stored runs are compared with which, and which way a task metric is better.

A compressed run is compared with a dense run of the same model on the same task, measured the same way (same
split, same evaluation limit, same protocol: :data:`MEASURED_BY`). :func:`reference_run` is that dense run: the newest finished dense run of a model
(by name, or by its weights fingerprint) on a task with the settings asked for; a setting left at :data:`ANY`
is that of the newest dense run, and :func:`comparable` then keeps the runs measured like it. Every comparison
picks its reference here, so they all agree.

:data:`METRICS` says how each task metric reads: whether higher is better, how many decimals it is shown with,
whether it is plotted on a log axis (perplexity: the exponential of a loss). A run healed after factorization
(:func:`lowrank.heal`, its ``healing`` column set) is compared under its own name, ``<method> healed``
(:func:`shown_methods`), never taken for the method alone. Cost: one run-store query per
:func:`reference_run`; :func:`comparable` is a filter of the rows it is given.
"""

from __future__ import annotations

from typing import NamedTuple

import pandas as pd

DENSE = "dense"  # the method name of an uncompressed run
# The run-store columns two runs must agree on to be compared: how their quality was measured (protocol: e.g.
# "windows of 2048 tokens (...)" or "per-document (...)", lowrank.evaluation.evaluation.measurement_protocol).
MEASURED_BY = ("split", "eval_limit", "protocol")
ANY = object()  # a setting :func:`reference_run` does not pin
HEALED = " healed"  # appended to the method of a run healed after factorization


class Metric(NamedTuple):
    higher_is_better: bool
    decimals: int  # shown with this many decimals
    log_axis: bool  # plotted on a log axis


METRICS = {
    "accuracy": Metric(higher_is_better=True, decimals=3, log_axis=False),
    "perplexity": Metric(higher_is_better=False, decimals=2, log_axis=True),
    # lm-eval-harness metrics where lower is better (its others, acc, acc_norm, exact_match..., read as OTHER_METRIC)
    "word_perplexity": Metric(higher_is_better=False, decimals=2, log_axis=True),
    "byte_perplexity": Metric(higher_is_better=False, decimals=3, log_axis=True),
    "bits_per_byte": Metric(higher_is_better=False, decimals=3, log_axis=False),
}
OTHER_METRIC = Metric(higher_is_better=True, decimals=3, log_axis=False)  # not in the table, or none (no runs yet)


def metric_info(name) -> Metric:
    """The :data:`METRICS` row of ``name`` (:data:`OTHER_METRIC` when it has none)."""
    return METRICS.get(name, OTHER_METRIC)


def reference_run(
    store,
    task: str,
    *,
    model: str | None = None,
    fingerprint: str | None = None,
    split=ANY,
    eval_limit=ANY,
    protocol=ANY,
) -> dict | None:
    """The dense run compressed runs of ``model`` (its stored name) or of the weights with ``fingerprint`` on ``task``
    are compared with: the newest finished dense run measured on ``split`` with ``eval_limit`` (``None``: the whole
    split) under ``protocol`` (:data:`ANY`: whichever the newest has). ``None`` when there is none. ``store``: a
    :class:`lowrank.experiments.store.RunStore`."""
    filters = {"method": DENSE, "task": task}
    for name, value in (("model", model), ("fingerprint", fingerprint)):
        if value is not None:
            filters[name] = value
    for name, value in zip(MEASURED_BY, (split, eval_limit, protocol)):
        if value is not ANY:
            filters[name] = value
    return store.find_run(**filters)


def sweep_reference(store, spec: dict, runs: pd.DataFrame) -> dict | None:
    """The dense run a sweep's finished ``runs`` are compared with: :func:`reference_run` for the weights they were
    measured on (their fingerprint, else the sweep's model), the sweep's split and evaluation limit, and the protocol
    its compressed runs were measured under (any when none has finished)."""
    weights = runs["fingerprint"].dropna() if "fingerprint" in runs else pd.Series(dtype=object)
    fingerprint = str(weights.iloc[0]) if len(weights) else None
    compressed = runs[runs["method"] != DENSE] if len(runs) else runs
    return reference_run(
        store,
        spec["task"],
        model=None if fingerprint else spec["model"],
        fingerprint=fingerprint,
        split=spec["split"],
        eval_limit=spec["eval_limit"],
        protocol=compressed["protocol"].iloc[0] if len(compressed) else ANY,
    )


def _same(column: pd.Series, value) -> pd.Series:
    return column.isna() if pd.isna(value) else column == value


def shown_methods(runs: pd.DataFrame) -> pd.DataFrame:
    """``runs`` with each healed run's method named ``<method> healed``."""
    if "healing" not in runs or runs.empty:
        return runs
    healed = runs["healing"].map(lambda record: isinstance(record, dict)).astype(bool)
    return runs.assign(method=runs["method"].where(~healed, runs["method"].astype(str) + HEALED))


def comparable(runs: pd.DataFrame, reference: dict | None) -> pd.DataFrame:
    """The rows of ``runs`` (newest first, as the store lists them) measured like ``reference`` (:func:`reference_run`;
    the same :data:`MEASURED_BY`: split, evaluation limit, protocol); with no reference, like the newest row. Healed
    runs under their own name (:func:`shown_methods`)."""
    if reference is None:
        if runs.empty:
            return runs
        reference = runs.iloc[0]
    keep = pd.Series(True, index=runs.index)
    for column in MEASURED_BY:
        keep &= _same(runs[column], reference.get(column))
    return shown_methods(runs[keep])
