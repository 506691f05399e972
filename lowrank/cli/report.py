"""Report command: ``report_command`` writes the result story of a model and task from the stored runs as a
self-contained HTML file (:func:`lowrank.report.write_report`).

python -m lowrank report --model minilm-rt --task rotten_tomatoes --out report.html
"""

from __future__ import annotations

from lowrank.cli.args import add_common, add_statistics_options, statistics_settings
from lowrank.compress import load_any
from lowrank.data import load_task
from lowrank.experiments.store import RunStore
from lowrank.models import compressible_weights
from lowrank.needs import needs_for
from lowrank.progress import TqdmProgress
from lowrank.report import drop_checks, summary, with_drop_checks, write_report
from lowrank.statistics import select, statistics_for
from lowrank.validate import path_arg


def register(sub) -> None:
    p = sub.add_parser(
        "report",
        help="summarise the stored runs of a model and task (best method per budget), as HTML",
        description="Best method at each budget against dense and plain SVD: quality, size on disk and "
        "measured latency, from the run store only (nothing is run).",
    )
    add_common(p)
    p.add_argument("--model", default="minilm-rt", help="the model key the runs were stored under (default minilm-rt)")
    p.add_argument(
        "--task", help="the task key the runs were stored under (default: the task of the model's newest run)"
    )
    p.add_argument(
        "--store", type=path_arg("--store"), help="run store file (default: runs.sqlite in the cache, $LOWRANK_CACHE)"
    )
    p.add_argument(
        "--out",
        type=path_arg("--out"),
        help="write the HTML report here (atomic; replaces only a report this command wrote)",
    )
    p.add_argument(
        "--predict",
        action="store_true",
        help="also the SVD-drop metric's prediction for each plain-SVD run, next to what it measured "
        "(loads the model; its Fisher from the cache, or computed once with these settings)",
    )
    add_statistics_options(p)
    p.set_defaults(handler=report_command)


def report_command(args):
    store = RunStore(args.store)
    task = args.task
    if task is None:
        runs = store.runs(model=args.model, status="done")
        if runs.empty:
            raise ValueError(f"no finished runs of {args.model} in {store.path}: give --model as the runs were stored")
        task = str(runs["task"].iloc[0])
    result = summary(store, args.model, task)
    if result.empty:
        raise ValueError(f"no finished runs of {args.model} on {task} in {store.path}")
    if args.predict:
        result = with_drop_checks(result, predictions(args, result, task))
    data = {
        "model": result.model,
        "task": result.task,
        "metric": result.metric,
        "headlines": list(result.headlines),
        "rows": result.table().to_dict("records"),
    }
    text = "\n".join(result.headlines) or "no compressed runs yet (only the dense reference)"
    if len(result.rows):
        text = f"{result.table().to_string(index=False)}\n\n{text}"
    if result.drop_checks:
        data["drop_checks"] = result.drop_table().to_dict("records")
        text += f"\n\nSVD-drop metric, predicted and measured:\n{result.drop_table().to_string(index=False)}"
    if args.out:
        data["out"] = str(write_report(result, args.out))
        text += f"\nreport written to {data['out']}"
    return data, text


def predictions(args, result, task: str):
    """:func:`lowrank.report.drop_checks` of ``result``: the model loaded, its Fisher from :func:`statistics_for`."""
    task = load_task(task)
    loaded = load_any(args.model, args.device, task=task)
    fishers = select(
        statistics_for(loaded, task, needs_for(predict=True), statistics_settings(args), progress=TqdmProgress()),
        "fisher",
    )
    return drop_checks(result, compressible_weights(loaded.model), fishers)
