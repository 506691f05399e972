"""Report command: ``report_command`` writes the result story of a model and task from the stored runs as a
self-contained HTML file (:func:`lowrank.report.write_report`).

python -m lowrank report --model minilm-rt --task rotten_tomatoes --out report.html
"""

from __future__ import annotations

from lowrank.cli.args import add_common, add_statistics_options, statistics_settings
from lowrank.compress import load_any
from lowrank.data import load_task
from lowrank.experiments.store import RunStore
from lowrank.generation import DEFAULT_PROMPTS, DEFAULT_TOKENS, MAX_TOKENS, compare_generations
from lowrank.models import compressible_weights
from lowrank.needs import needs_for
from lowrank.progress import TqdmProgress
from lowrank.report import drop_checks, saved_models, summary, with_drop_checks, with_generations, write_report
from lowrank.statistics import select, statistics_for
from lowrank.validate import Range, arg_type, path_arg


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
    p.add_argument(
        "--generate",
        action="store_true",
        help="also greedy generations of a causal LM and of the best runs' saved compressed models, side by side "
        "(loads them; runs of the Factorize page and of the decoder demo are saved)",
    )
    p.add_argument(
        "--tokens",
        type=arg_type(Range(1, MAX_TOKENS, integer=True), "--tokens"),
        default=DEFAULT_TOKENS,
        help=f"with --generate: new tokens per prompt (default {DEFAULT_TOKENS})",
    )
    add_statistics_options(p)
    p.set_defaults(handler=report_command)


def generations(args, result):
    """The dense model's and the best runs' saved compressed models' generations of the default prompts."""
    saved = saved_models(result)
    if not saved:
        raise ValueError(
            f"no saved compressed model among the best runs of {result.model} on {result.task}: --generate needs "
            "runs that saved their model (the Factorize page's, the decoder demo's, or a sweep with save)"
        )
    models = {"dense": load_any(args.model, args.device), **{k: load_any(v, args.device) for k, v in saved.items()}}
    return compare_generations(models, DEFAULT_PROMPTS, args.tokens)


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
    if args.generate:
        result = with_generations(result, generations(args, result))
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
    if result.generations is not None:
        data["generations"] = result.generations.to_dict("records")
        text += f"\n\nGenerations side by side (greedy, {args.tokens} new tokens):\n{result.generations.to_string(index=False)}"
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
