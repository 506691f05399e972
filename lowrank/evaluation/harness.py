"""lm-eval-harness scores of a dense or compressed causal LM, stored as runs beside :func:`lowrank.evaluate`'s.

:func:`harness_scores` runs lm-eval's Hugging Face model class (``lm_eval.models.huggingface.HFLM``) on the
model in memory (its ``nn.Module`` and tokenizer: nothing is loaded from a hub or a path by lm-eval) on the tasks
named, with a ``TaskManager`` that also reads the task YAML files of ``include`` (a local custom task: a YAML over a
local JSON file). Each (task, metric) score is one :class:`HarnessScore`; :func:`store_scores` writes each as a run
(task key ``harness:<task>:<metric>``, :func:`task_key`), so that Trade-offs and the Summary show it like any
other quality number and compare it only with a dense run measured the same way (its ``protocol``:
lm-eval's version, the task's version, shots and example limit). Datasets follow the hub rule of
:mod:`lowrank.data.hub_text`: the hub when reachable, else the local ``datasets`` cache only.

lm-eval is an optional extra (``pip install .[eval]``), imported when a score is asked for. Cost: lm-eval's
requests (about one forward pass per answer choice and example).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import logging
import math
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from lowrank.data.hub_text import offline
from lowrank.data.tasks import hub_reachable
from lowrank.evaluation.quality import check_task_fits
from lowrank.evaluation.size import parameter_counts, safetensors_size
from lowrank.experiments.compare import DENSE, comparable, reference_run
from lowrank.layers import LowRankLinear
from lowrank.models.architectures import compressible_linears
from lowrank.statistics.cache import weights_fingerprint

PREFIX = "harness:"  # the task key of a harness score: harness:<task>:<metric>
SAVED = "as saved"  # the strategy recorded for a compressed folder (its allocation is not recorded in it)
INSTALL = "pip install '.[eval]'"


@dataclass
class HarnessScore:
    """One metric of one lm-eval task: ``value`` (and ``stderr`` when lm-eval gives one) on ``examples`` examples
    of ``split``, with ``shots`` few-shot examples; ``protocol`` says how, in words."""

    task: str
    metric: str  # lm-eval's metric name, with its filter in parentheses unless the filter is "none"
    value: float
    stderr: float | None
    split: str | None
    examples: int | None
    shots: int | None
    protocol: str

    @property
    def key(self) -> str:
        return task_key(self.task, self.metric)


def task_key(task: str, metric: str) -> str:
    """The run-store task of a harness score: ``harness:<task>:<metric>``."""
    return f"{PREFIX}{task}:{metric}"


def lm_eval_modules():
    """``(lm_eval, HFLM, TaskManager)``; ``ValueError`` (one line) when lm-eval is not installed."""
    try:
        lm_eval = importlib.import_module("lm_eval")
        huggingface = importlib.import_module("lm_eval.models.huggingface")
        tasks = importlib.import_module("lm_eval.tasks")
    except ImportError as err:
        raise ValueError(f"--harness needs lm-eval, which is not installed ({err.name}): {INSTALL}") from err
    return lm_eval, huggingface.HFLM, tasks.TaskManager


def parse_tasks(text: str) -> list[str]:
    """``"a,b"`` -> ``["a", "b"]`` (each once, in order); ``ValueError`` for an empty list."""
    names = list(dict.fromkeys(t.strip() for t in str(text).split(",") if t.strip()))
    if not names:
        raise ValueError(f"--harness needs at least one lm-eval task name, got {text!r}")
    return names


def _number(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def _scores(results: dict, version: str, limit: int | None) -> list[HarnessScore]:
    """The :class:`HarnessScore` of every task and metric in lm-eval's ``simple_evaluate`` output."""
    scores = []
    for task, metrics in results["results"].items():
        config = results.get("configs", {}).get(task, {})
        split = config.get("test_split") or config.get("validation_split")
        shots = results.get("n-shot", {}).get(task)
        examples = (results.get("n-samples", {}).get(task) or {}).get("effective")
        protocol = (
            f"lm-eval-harness {version}, task {task} version {results.get('versions', {}).get(task, '?')}, "
            f"{shots if shots is not None else '?'}-shot, "
            + (f"the first {limit} examples" if limit else f"all {examples} examples" if examples else "all examples")
            + (f" of {split}" if split else "")
        )
        for name, value in metrics.items():
            metric, comma, where = name.partition(",")
            if not comma or metric.endswith("_stderr") or _number(value) is None:
                continue
            scores.append(
                HarnessScore(
                    task,
                    metric if where == "none" else f"{metric} ({where})",
                    float(value),
                    _number(metrics.get(f"{metric}_stderr,{where}")),
                    split,
                    examples,
                    shots,
                    protocol,
                )
            )
    return scores


def harness_scores(
    loaded,
    tasks: list[str],
    include: str | Path | None = None,
    limit: int | None = None,
    shots: int | None = None,
    batch_size: int = 8,
) -> list[HarnessScore]:
    """lm-eval's scores of the causal LM ``loaded`` on ``tasks`` (see the module docstring); ``include``: a folder
    of task YAML files; ``limit``: at most this many examples per task; ``shots``: few-shot examples (default: each
    task's own)."""
    check_task_fits(loaded.name, loaded.kind, "lm", "an lm-eval-harness task")
    lm_eval, HFLM, TaskManager = lm_eval_modules()
    if include is not None and not Path(include).is_dir():
        raise ValueError(f"--harness-include {include}: not a folder of lm-eval task YAML files")
    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    manager = TaskManager(include_path=str(include) if include else None)
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        where = f" or in {include}" if include else ""
        raise ValueError(f"unknown lm-eval task(s) {', '.join(unknown)}: not among lm-eval's tasks{where}")
    model = HFLM(
        pretrained=loaded.model,
        tokenizer=loaded.tokenizer,
        batch_size=batch_size,
        add_bos_token=_add_bos_token(loaded.tokenizer),
    )
    reachable = hub_reachable()
    try:
        with nullcontext() if reachable else offline():
            results = lm_eval.simple_evaluate(
                model=model,
                tasks=tasks,
                task_manager=manager,
                limit=limit,
                num_fewshot=shots,
                log_samples=False,
                verbosity="ERROR",
            )
    except OSError as err:  # a task's dataset: not cached (offline), unreachable or missing
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if reachable:
            raise ValueError(f"lm-eval could not load the data of {', '.join(tasks)}: {reason}") from err
        raise ValueError(
            f"lm-eval task(s) {', '.join(tasks)} need the hub for their data (huggingface.co is unreachable or "
            f"offline mode is set) and it is not in the local datasets cache ({reason})"
        ) from err
    return _scores(results, importlib.metadata.version("lm_eval"), limit)


def _add_bos_token(tokenizer) -> bool | None:
    """lm-eval's ``add_bos_token``: ``None`` (its default: the tokenizer's own special tokens) when these are at most a
    leading BOS; ``False`` when the tokenizer also appends tokens (a BERT-style ``[SEP]``), which would end every
    context and break lm-eval's split of ``tokens(context + continuation)`` into context and continuation."""
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a")["input_ids"]
    return None if full[len(full) - len(plain) :] == plain else False


def dense_linear_params(model) -> int:
    """``out * in`` summed over the compressible Linears, a factorized layer counted at its dense shape."""
    dense = sum(m.weight.numel() for m in compressible_linears(model).values())
    return dense + sum(m.out_features * m.in_features for m in model.modules() if isinstance(m, LowRankLinear))


def store_scores(
    store, loaded, scores: list[HarnessScore], limit: int | None = None, seconds: float | None = None
) -> list[int]:
    """Write each score as a finished run of ``loaded`` (dense, or the compressed model its ``lowrank_info`` says);
    returns the run ids. The model column is the dense model's name, so compressed and dense rows meet;
    ``seconds``: the harness's wall time (``wall_s``)."""
    info = getattr(loaded.model, "lowrank_info", None)
    total, linear = parameter_counts(loaded.model)
    dense_linear = dense_linear_params(loaded.model)
    kept = linear / dense_linear if dense_linear else None
    common = {
        "model": loaded.name,
        "fingerprint": weights_fingerprint(loaded.model),
        "eval_limit": limit,
        "method": DENSE if info is None else info.method,
        "strategy": None if info is None else SAVED,
        "budget": 1.0 if info is None else round(kept, 2),
        "ranks": {} if info is None else info.ranks,
        "options": {} if info is None else info.options,
        "params_total": total,
        "params_linear": linear,
        "dense_params_linear": dense_linear,
        "kept_fraction": kept,
        "size_bytes": safetensors_size(loaded.model),
        "output_dir": loaded.path if info is not None else None,
    }
    ids = []
    for score in scores:
        run = store.start_run(**common, task=score.key, split=score.split, protocol=score.protocol)
        store.finish_run(run, metric=score.metric, value=score.value, examples=score.examples, wall_s=seconds)
        ids.append(run)
    return ids


def scores_table(scores: list[HarnessScore]) -> list[dict]:
    """One printable row per score."""
    return [
        {
            "task": s.task,
            "metric": s.metric,
            "value": s.value,
            "stderr": s.stderr,
            "examples": s.examples,
            "shots": s.shots,
            "protocol": s.protocol,
        }
        for s in scores
    ]


def stored_scores(store, model: str) -> pd.DataFrame:
    """The stored harness scores of ``model`` (its dense name), one row per run (the dense run first, then the
    compressed ones by kept fraction) beside the dense run it compares with (:func:`lowrank.experiments.compare.reference_run`, measured the same way): task, metric, method,
    kept fraction, value, dense value, how it was measured. Empty when there are none."""
    runs = store.runs(model=model, status="done")
    runs = runs[runs["task"].astype(str).str.startswith(PREFIX)]
    rows = []
    for key in dict.fromkeys(runs["task"]):
        dense = reference_run(store, key, model=model)
        for row in comparable(runs[runs["task"] == key], dense).to_dict("records"):
            task, _, _ = key.removeprefix(PREFIX).rpartition(":")
            rows.append(
                {
                    "task": task,
                    "metric": row["metric"],
                    "method": row["method"],
                    "kept": row["kept_fraction"],
                    "value": row["value"],
                    "dense": None if dense is None else dense["value"],
                    "protocol": row["protocol"],
                    "run": row["id"],
                }
            )
    columns = ["task", "metric", "method", "kept", "value", "dense", "protocol", "run"]
    frame = pd.DataFrame(rows, columns=columns)
    return frame.sort_values(["task", "metric", "kept", "run"], ascending=[True, True, False, False], ignore_index=True)
