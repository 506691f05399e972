"""Every factorization method on every task of the multi-task suite, each with its own fine-tuned MiniLM.

For each suite task (``lowrank.data.tasks.SUITE``: rotten_tomatoes, sms_spam, tweets, amazon, nyt)
and its packaged model (``minilm-rt``, ``minilm-<task>``; a task whose model is not built is
skipped, with the command that builds it), every compressible Linear keeps the same fraction of
its parameters (``--keeps``, default 30/50/70%), no fine-tuning, and each method is evaluated on
``--split``: dense, svd, fwsvd on both axes (reported as ``fwsvd``: the better axis *on the
evaluation split*, an oracle choice; both axes are in the JSON), tfwsvd, asvd, svd_llm and
kfac_svd. Every statistic the methods need (``lowrank.needs.needs_for``) is computed once per
model by ``lowrank.statistics.statistics_for``: one Fisher pass and one moments pass, cached; each
method then sees only the statistics it declares (``lowrank.statistics.restrict``), as it would on
its own (``lowrank compress --method tfwsvd`` starts tfwsvd from FWSVD; given the moments too it
could start from kfac_svd).

Printed: one accuracy table per task (rows: kept fraction, columns: method), then the summary of
wins: the best method per task x budget, how often each method wins, and whether
``tfwsvd >= svd`` and ``tfwsvd >= fwsvd`` (best axis) hold, case by case and in how many cases.
``--labels data|sampled``, ``--labels-per-example``, ``--fisher-batches`` ... (the library's
statistics flags) compare Fisher settings; the JSON goes to
``benchmarks/results/suite_<labels>[_<changed settings>].json``.

    python benchmarks/suite.py --labels data
    python benchmarks/suite.py --labels sampled
    python benchmarks/suite.py --labels sampled --labels-per-example 4 --fisher-batches 64
    python benchmarks/suite.py --tasks tweets --keeps 0.5 --limit 1     # smoke
"""

from __future__ import annotations

import time

import pandas as pd
from common import METHOD_CONFIGS as CONFIGS
from common import RESULTS, settings_tag, suite_models, suite_parser, write

import lowrank
from lowrank.cli.args import statistics_settings
from lowrank.needs import needs_for
from lowrank.statistics import restrict, statistics_for

SUMMARY_METHODS = ("svd", "fwsvd", "tfwsvd", "asvd", "svd_llm", "kfac_svd")  # fwsvd: the better axis


def label(method: str, options: dict) -> str:
    return method + "".join(f"[{v}]" for v in options.values())


def run_task(task_name: str, model: str, args, settings) -> list[dict]:
    task = lowrank.load_task(task_name)
    loaded = lowrank.load_model(model, device=args.device)
    start = time.perf_counter()
    stats = statistics_for(loaded, task, needs_for(m for m, _ in CONFIGS), settings)
    statistics_s = time.perf_counter() - start
    dense = lowrank.evaluate(loaded, task, args.split, limit=args.limit, latency=False)
    base = {"task": task_name, "model": model}
    rows = [
        {
            **base,
            "keep": 1.0,
            "method": "dense",
            "config": "dense",
            "accuracy": dense.value,
            "loss": dense.loss,
            "statistics_s": statistics_s,
        }
    ]
    for keep in args.keeps:
        for method, options in CONFIGS:
            start = time.perf_counter()
            small = lowrank.compress(loaded, keep, method=method, stats=restrict(stats, needs_for([method])), **options)
            seconds = time.perf_counter() - start
            result = lowrank.evaluate(small, task, args.split, limit=args.limit, latency=False)
            rows.append(
                {
                    **base,
                    "keep": keep,
                    "method": method,
                    "config": label(method, options),
                    "accuracy": result.value,
                    "loss": result.loss,
                    "factorize_s": seconds,
                }
            )
            print(f"{task_name} keep {keep} {rows[-1]['config']:12s} accuracy {result.value:.4f}", flush=True)
    return rows


def best_per_method(rows: list[dict]) -> pd.DataFrame:
    """Accuracy per task x keep x method, fwsvd as the better of its two axes."""
    frame = pd.DataFrame([r for r in rows if r["method"] != "dense"])
    return frame.groupby(["task", "keep", "method"], as_index=False)["accuracy"].max()


def summarize(rows: list[dict]) -> dict:
    table = best_per_method(rows).pivot_table(index=["task", "keep"], columns="method", values="accuracy")
    dense = {r["task"]: r["accuracy"] for r in rows if r["method"] == "dense"}
    methods = [m for m in SUMMARY_METHODS if m in table.columns]
    cases = []
    for (task, keep), accuracy in table[methods].iterrows():
        best = accuracy.max()
        cases.append(
            {
                "task": task,
                "keep": keep,
                "dense": dense[task],
                "best": [m for m in methods if accuracy[m] == best],
                "best_accuracy": best,
                "tfwsvd_ge_svd": bool(accuracy["tfwsvd"] >= accuracy["svd"]),
                "tfwsvd_ge_fwsvd": bool(accuracy["tfwsvd"] >= accuracy["fwsvd"]),
                "svd_drop_points": 100 * (dense[task] - accuracy["svd"]),
                "tfwsvd_rescue_points": 100 * (accuracy["tfwsvd"] - accuracy["svd"]),
            }
        )
    wins = {m: sum(m in c["best"] for c in cases) for m in methods}
    return {
        "cases": cases,
        "wins": wins,
        "n_cases": len(cases),
        "tfwsvd_ge_svd": sum(c["tfwsvd_ge_svd"] for c in cases),
        "tfwsvd_ge_fwsvd": sum(c["tfwsvd_ge_fwsvd"] for c in cases),
        "mean_accuracy": {m: float(table[m].mean()) for m in methods},
    }


def print_tables(rows: list[dict], summary: dict) -> None:
    frame = pd.DataFrame(rows)
    for task, part in frame.groupby("task", sort=False):
        dense = part.loc[part["method"] == "dense", "accuracy"].iloc[0]
        print(f"\n{task} ({part['model'].iloc[0]}), dense accuracy {dense:.4f}; compressed, no fine-tuning:")
        print(
            part[part["method"] != "dense"]
            .pivot_table(index="keep", columns="config", values="accuracy", sort=False)
            .to_string(float_format=lambda v: f"{v:.4f}")
        )
    print("\nbest method per task x kept fraction:")
    for c in summary["cases"]:
        print(
            f"  {c['task']:16s} {c['keep']:.2f}: {', '.join(c['best']):24s} {c['best_accuracy']:.4f} "
            f"(dense {c['dense']:.4f}; svd drop {c['svd_drop_points']:+.1f} pts, tfwsvd rescue "
            f"{c['tfwsvd_rescue_points']:+.1f}; tfwsvd>=svd {c['tfwsvd_ge_svd']}, tfwsvd>=fwsvd {c['tfwsvd_ge_fwsvd']})"
        )
    n = summary["n_cases"]
    print(f"wins (ties count for each): {summary['wins']}")
    print(
        f"tfwsvd >= svd in {summary['tfwsvd_ge_svd']}/{n} cases, tfwsvd >= fwsvd (best axis) in "
        f"{summary['tfwsvd_ge_fwsvd']}/{n}"
    )
    print("mean accuracy over cases:", {m: round(v, 4) for m, v in summary["mean_accuracy"].items()})


def main() -> None:
    p = suite_parser(__doc__)
    p.add_argument("--keeps", type=float, nargs="+", default=[0.3, 0.5, 0.7])
    args = p.parse_args()
    settings = statistics_settings(args)
    rows = []
    for task, model in suite_models(args.tasks):
        rows += run_task(task, model, args, settings)
    if not rows:
        raise SystemExit("no suite model is built: nothing to run")
    summary = summarize(rows)
    print_tables(rows, summary)
    args.out = args.out or str(RESULTS / f"suite_{settings_tag(settings)}.json")
    write("suite", args, rows, {"settings": settings.to_dict(), "summary": summary})


if __name__ == "__main__":
    main()
