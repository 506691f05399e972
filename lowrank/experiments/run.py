"""One recorded run: compress a model with one method at given ranks (then heal it, when asked), evaluate it, store
the row.

:func:`execute_run` writes the row ``running``, then ``done`` with the measurements, or ``failed`` / ``interrupted``
as every job ends (:func:`lowrank.experiments.jobs.ending`); nothing but the row is written, and a model that cannot
be measured on the task is refused before any row. A run's key is its weights, task, evaluation settings, method,
options, ranks, strategy, budget, healing settings and, for a method that needs statistics, their sampling settings:
:func:`find_same_run` finds a done run with the same key, so a repeated sweep does not run it again, and
:func:`dense_reference` reuses the stored dense run (:func:`lowrank.experiments.compare.reference_run`) (measuring its latencies again, with ``check_latency``, when the
conditions differ from now). :func:`output_folder`: where a run's compressed model is saved, next to the run store.
Cost: one compression (and healing) and one evaluation per run (for a causal LM, with tokens/s of it and of
dense, :data:`RUN_THROUGHPUT`).
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from pathlib import Path

from lowrank.data.tasks import load_task
from lowrank.evaluation import evaluate
from lowrank.evaluation.evaluation import measurement_protocol
from lowrank.evaluation.latency import conditions_differ, measure_latencies, measurement_conditions
from lowrank.evaluation.quality import check_task_fits, task_kind_for
from lowrank.evaluation.throughput import ThroughputSettings, is_causal_lm
from lowrank.experiments.compare import DENSE, reference_run
from lowrank.experiments.store import RunStore
from lowrank.healing import HealConfig, heal
from lowrank.methods import get_method
from lowrank.progress import Progress, report, scaled
from lowrank.ranks import linear_shapes
from lowrank.sequential import compress_in_memory
from lowrank.statistics import DEFAULT, StatisticsSettings, needs_task
from lowrank.statistics.cache import weights_fingerprint

# How a run of a causal LM measures tokens/s (prefill and decode at batch 1 and 8): a short budget per figure.
RUN_THROUGHPUT = ThroughputSettings(budget_s=2.0)


@dataclass
class RunResult:
    run_id: int
    model: object  # the compressed LoadedModel (the dense one for the dense reference)
    evaluation: object  # lowrank.Evaluation
    seconds: float


def run_fields(loaded, task_key: str, split: str, eval_limit: int | None) -> dict:
    """Row fields identifying a model, its weights and the evaluation settings (:func:`evaluate`'s protocol)."""
    return {
        "model": loaded.name,
        "fingerprint": weights_fingerprint(loaded.model),
        "task": task_key,
        "split": split,
        "eval_limit": eval_limit,
        "protocol": measurement_protocol(loaded, task_kind_for(loaded.kind)),
        "dense_params_linear": sum(o * i for o, i in linear_shapes(loaded).values()),
    }


def execute_run(
    store: RunStore,
    loaded,
    task,
    task_key: str,
    method: str,
    ranks: dict[str, int],
    *,
    stats=None,
    options: dict | None = None,
    split: str = "validation",
    eval_limit: int | None = None,
    fields: dict | None = None,
    progress: Progress | None = None,
    healing: HealConfig | None = None,
    settings: StatisticsSettings = DEFAULT,
) -> RunResult:
    """Compress ``loaded`` with ``method`` at ``ranks`` (``method="dense"``: no compression), evaluate, record.

    ``stats``: per-layer statistics of the dense model for the method (:func:`lowrank.statistics.statistics_for`),
    computed on the calibration sample of ``settings``, on which an error-compensated form's block sweep runs too
    (:func:`lowrank.compress_in_memory`). The row's ``options`` state the method's defaults too.

    ``healing``: :func:`lowrank.heal` the compressed model toward ``loaded`` on ``task``'s training split before it is
    evaluated (its record goes in the row's ``healing``). ``fields`` adds row fields (strategy, budget, align,
    sweep_id...). Raises what compression or
    evaluation raises, after marking the row failed / interrupted.
    """
    options = recorded_options(method, options)
    task = load_task(task)
    check_task_fits(loaded.name, loaded.kind, task.kind, task_key)
    row = {
        **run_fields(loaded, task_key, split, eval_limit),
        "method": method,
        "solver": options.get("solver"),
        "ranks": ranks,
        "options": options,
        **(fields or {}),
    }
    speed = RUN_THROUGHPUT if is_causal_lm(loaded) else None  # tokens/s of causal LMs, against dense
    start = time.perf_counter()
    with store.record(**row) as run:
        if method == DENSE:
            model, factorize_s = loaded, 0.0
            evaluation = evaluate(model, task, split, limit=eval_limit, progress=progress, throughput=speed)
        else:
            model = compress_in_memory(
                loaded, ranks, method, task, settings, stats, scaled(progress, 0.0, 0.3), **options
            )
            factorize_s = sum(model.model.lowrank_info.seconds.values())
            if healing is not None:
                model = heal(model, loaded, task, healing, progress=scaled(progress, 0.3, 0.8))
                run.update(healing=heal_summary(model.model.lowrank_info.healing))
            start_eval = 0.8 if healing is not None else 0.3
            evaluation = evaluate(
                model,
                task,
                split,
                limit=eval_limit,
                progress=scaled(progress, start_eval, 1.0),
                throughput=speed,
                reference=loaded,
            )
        seconds = time.perf_counter() - start
        run.finish(
            metric=evaluation.metric,
            value=evaluation.value,
            loss=evaluation.loss,
            examples=evaluation.examples,
            params_total=evaluation.params_total,
            params_linear=evaluation.params_linear,
            kept_fraction=evaluation.params_linear / row["dense_params_linear"],
            size_bytes=evaluation.size_bytes,
            latency_ms_b1=evaluation.latency_ms_b1,
            latency_ms_b32=evaluation.latency_ms_b32,
            latency_info=evaluation.latency,
            throughput=evaluation.throughput,
            factorize_s=factorize_s,
            wall_s=seconds,
            protocol=evaluation.protocol,
        )
    return RunResult(run.id, model, evaluation, seconds)


def recorded_options(method: str, options: dict | None) -> dict:
    """The options a run of ``method`` states: those given and the defaults of the others (so a stored run is not
    taken for one of a changed default)."""
    options = dict(options or {})
    return options if method == DENSE else get_method(method).with_defaults(options)


def heal_summary(record: dict) -> dict:
    """What a run row keeps of a healing record: the settings, the held-out KL before and after, steps, seconds."""
    keys = ("config", "level", "heldout_before", "heldout_after", "kept", "train_tokens", "seconds")
    return {k: record[k] for k in keys} | {"steps": record.get("end_to_end", {}).get("steps", 0)}


def _plain(value):
    """``value`` as it comes back from the store's JSON columns (tuples become lists...)."""
    return json.loads(json.dumps(value or {}, sort_keys=True))


def statistics_key(settings: dict | None) -> dict:
    """Statistics settings in one normal form (``DEFAULT`` filled in), for comparing runs."""
    return DEFAULT.with_(**(settings or {})).to_dict()


def _run_statistics(store: RunStore, row: dict) -> dict | None:
    """The statistics settings a stored run was computed with: its sweep's (``None`` when it has no sweep)."""
    if row.get("sweep_id") is None or row["sweep_id"] != row["sweep_id"]:  # None or NaN
        return None
    try:
        spec = store.get_sweep(int(row["sweep_id"]))["spec"]
    except KeyError:
        return None
    return statistics_key(spec.get("statistics"))


def find_same_run(
    store: RunStore,
    loaded,
    task_key: str,
    method: str,
    ranks: dict[str, int],
    *,
    options: dict | None = None,
    split: str = "validation",
    eval_limit: int | None = None,
    strategy: str | None = None,
    budget: float | None = None,
    statistics: dict | None = None,
    healing: HealConfig | None = None,
) -> dict | None:
    """The newest ``done`` run with this key (see the module docstring), or ``None``.

    ``statistics``: the sampling settings of the statistics the method is given; compared only for
    methods that need data statistics, against the settings of the stored run's sweep."""
    key = run_fields(loaded, task_key, split, eval_limit)
    frame = store.runs(
        status="done",
        fingerprint=key["fingerprint"],
        task=task_key,
        split=split,
        eval_limit=eval_limit,
        protocol=key["protocol"],
        method=method,
        strategy=strategy,
        budget=None if budget is None else float(budget),
    )
    wanted_ranks, wanted_options = _plain(ranks), _plain(recorded_options(method, options))
    compare_statistics = method != DENSE and needs_task(get_method(method).needs)
    for row in frame.to_dict("records"):
        if _plain(row["ranks"]) != wanted_ranks or _plain(row["options"]) != wanted_options:
            continue
        healed = row["healing"] if isinstance(row["healing"], dict) else {}
        if healed.get("config") != (None if healing is None else _plain(healing.to_dict())):
            continue
        if compare_statistics and _run_statistics(store, row) != statistics_key(statistics):
            continue
        return store.get_run(int(row["id"]))
    return None


def dense_reference(
    store: RunStore,
    loaded,
    task,
    task_key: str,
    split: str = "validation",
    eval_limit: int | None = None,
    fields: dict | None = None,
    progress: Progress | None = None,
    check_latency: bool = False,
) -> dict:
    """The stored dense run for these weights, task and settings; evaluated and recorded if there is none.

    ``check_latency`` (before measuring other runs beside it): when the stored latencies were measured
    under other conditions than now (:func:`lowrank.evaluation.latency.conditions_differ`), measure them again and
    update the row, so that the dense and the compressed latencies shown together are comparable."""
    key = run_fields(loaded, task_key, split, eval_limit)
    found = reference_run(
        store, task_key, fingerprint=key["fingerprint"], split=split, eval_limit=eval_limit, protocol=key["protocol"]
    )
    if found is not None:
        reason = (
            conditions_differ(
                (found.get("latency_info") or {}).get("conditions"), measurement_conditions(loaded.device)
            )
            if check_latency
            else None
        )
        if reason is None:
            report(progress, 1, 1, "dense reference from the run store")
            return found
        b1, b32, how = measure_latencies(loaded, task, split, progress=progress)
        store.update_run(found["id"], latency_ms_b1=b1, latency_ms_b32=b32, latency_info={**how, "remeasured": reason})
        return store.get_run(found["id"])
    result = execute_run(
        store,
        loaded,
        task,
        task_key,
        DENSE,
        {},
        split=split,
        eval_limit=eval_limit,
        fields={"budget": 1.0, **(fields or {})},
        progress=progress,
    )
    return store.get_run(result.run_id)


def output_folder(store: RunStore, model_name: str, method: str, run_id: int) -> Path:
    """``<store folder>/compressed/<model>-<method>-run<id>``: where a run's compressed model is saved."""
    label = Path(model_name).name or model_name
    return store.path.parent / "compressed" / f"{re.sub(r'[^A-Za-z0-9._-]+', '_', label)}-{method}-run{run_id}"
