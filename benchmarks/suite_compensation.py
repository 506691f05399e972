"""Error-compensated factorization on the encoder suite: does a compensated form hold on every task?

For each suite task and its fine-tuned MiniLM (``lowrank.data.tasks.SUITE``; a task whose model is not built is
skipped, with the command that builds it): dense accuracy, then at each ``--keeps`` (default 30/50/70% of the
compressible parameters), uniform ranks, no fine-tuning, ``svd_llm`` and ``kfac_svd`` twice: plain
(:func:`lowrank.compress`) and error-compensated (:func:`lowrank.compress_in_memory` with the ``_compensated`` form
at the library's ``alpha``: the encoder blocks in order, each layer fitted toward the dense layer's outputs from the
inputs it gets inside the model compressed so far). One statistics pass per model (cached) serves both forms; the
compensated forms add their block sweep over the same calibration sample. Accuracy on ``--split`` with its standard
error ``sqrt(a (1 - a) / n)``.

Criterion (issue #25), per method: the compensated form's suite mean at least the plain form's, and no task x budget
below the plain form by more than one standard error. It decides ``lowrank.methods.COMPENSATE["classifier"]``.

    python benchmarks/suite_compensation.py
    python benchmarks/suite_compensation.py --tasks tweets --keeps 0.5 --limit 1     # smoke
"""

from __future__ import annotations

import math
import time

import pandas as pd
from common import RESULTS, suite_models, suite_parser, write

import lowrank
from lowrank.cli.args import statistics_settings
from lowrank.methods.compensated import ALPHA
from lowrank.needs import needs_for
from lowrank.statistics import restrict, statistics_for

METHODS = ("svd_llm", "kfac_svd")
COMPENSATED = "_compensated"


def standard_error(accuracy: float, examples: int) -> float:
    return math.sqrt(accuracy * (1 - accuracy) / max(1, examples))


def run_task(task_name: str, model: str, args, settings) -> list[dict]:
    task = lowrank.load_task(task_name)
    loaded = lowrank.load_model(model, device=args.device)
    stats = statistics_for(loaded, task, needs_for(METHODS), settings)
    dense = lowrank.evaluate(loaded, task, args.split, limit=args.limit, latency=False)
    rows = []
    for keep in args.keeps:
        for method in METHODS:
            for name in (method, method + COMPENSATED):
                start = time.perf_counter()
                spec = lowrank.get_method(name)
                given = restrict(stats, spec.dense_needs if spec.block_sweep else spec.needs)
                small = lowrank.compress_in_memory(loaded, keep, name, task, settings, stats=given)
                seconds = time.perf_counter() - start
                result = lowrank.evaluate(small, task, args.split, limit=args.limit, latency=False)
                rows.append(
                    {
                        "task": task_name,
                        "model": model,
                        "examples": dense.examples,
                        "dense": dense.value,
                        "keep": keep,
                        "method": method,
                        "compensated": name != method,
                        "alpha": ALPHA if name != method else None,
                        "accuracy": result.value,
                        "standard_error": standard_error(result.value, result.examples),
                        "compress_s": round(seconds, 1),
                    }
                )
                print(f"{task_name} keep {keep} {name:22s} accuracy {result.value:.4f} ({seconds:.0f} s)", flush=True)
    return rows


def verdict(rows: list[dict]) -> dict:
    """Per method: suite means of both forms, every case's difference (points) and its standard error, and whether
    the criterion of the module docstring holds."""
    frame = pd.DataFrame(rows)
    out = {}
    for method, part in frame.groupby("method", sort=False):
        wide = part.pivot_table(index=["task", "keep"], columns="compensated", values=["accuracy", "standard_error"])
        plain, comp = wide[("accuracy", False)], wide[("accuracy", True)]
        se = wide[("standard_error", False)]
        cases = [
            {
                "task": task,
                "keep": keep,
                "plain": float(plain[(task, keep)]),
                "compensated": float(comp[(task, keep)]),
                "difference_points": 100 * float(comp[(task, keep)] - plain[(task, keep)]),
                "standard_error_points": 100 * float(se[(task, keep)]),
            }
            for task, keep in wide.index
        ]
        worse = [c for c in cases if c["difference_points"] < -c["standard_error_points"]]
        out[method] = {
            "mean_plain": float(plain.mean()),
            "mean_compensated": float(comp.mean()),
            "wins": sum(c["difference_points"] > 0 for c in cases),
            "ties": sum(c["difference_points"] == 0 for c in cases),
            "losses": sum(c["difference_points"] < 0 for c in cases),
            "below_by_more_than_one_se": [f"{c['task']} {c['keep']:g}" for c in worse],
            "criterion_met": float(comp.mean()) >= float(plain.mean()) and not worse,
            "cases": cases,
        }
    return out


def print_verdict(summary: dict) -> None:
    for method, v in summary.items():
        print(
            f"\n{method}: suite mean plain {v['mean_plain']:.4f}, compensated {v['mean_compensated']:.4f}; "
            f"compensated wins {v['wins']}, ties {v['ties']}, loses {v['losses']}; below plain by more than one s.e.: "
            f"{', '.join(v['below_by_more_than_one_se']) or 'none'}; criterion {'met' if v['criterion_met'] else 'not met'}"
        )
        for c in v["cases"]:
            print(
                f"  {c['task']:16s} {c['keep']:.1f}: plain {c['plain']:.4f} compensated {c['compensated']:.4f} "
                f"({c['difference_points']:+.1f} pts, s.e. {c['standard_error_points']:.1f})"
            )


def main() -> None:
    p = suite_parser(__doc__)
    p.add_argument("--keeps", type=float, nargs="+", default=[0.3, 0.5, 0.7])
    args = p.parse_args()
    settings = statistics_settings(args)
    args.out = args.out or str(RESULTS / "suite_compensation.json")
    rows: list[dict] = []
    for task, model in suite_models(args.tasks):
        rows += run_task(task, model, args, settings)
    if not rows:
        raise SystemExit("no suite model is built: nothing to run")
    summary = verdict(rows)
    print_verdict(summary)
    write("suite_compensation", args, rows, {"settings": settings.to_dict(), "alpha": ALPHA, "summary": summary})


if __name__ == "__main__":
    main()
