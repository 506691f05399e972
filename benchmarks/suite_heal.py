"""Healed kfac_svd on every task of the suite: is a classifier at half its linear parameters back within a point?

For each suite task and its fine-tuned MiniLM (``lowrank.data.tasks.SUITE``; a task whose model is not built is
skipped, with the command that builds it): dense accuracy, then ``kfac_svd`` at ``--keep`` (default 50%) of the
compressible parameters, uniform ranks, no fine-tuning; then the same model healed by :func:`lowrank.heal`
(the classifier recipe, :func:`lowrank.healing.default_healing`; no labels, only the task's training texts, a
held-out part of them for early stopping). Accuracy on ``--split``, with
its standard error ``sqrt(a (1 - a) / n)``. Target (issue #25): the healed model within 1 point of dense on every
task.

    python benchmarks/suite_heal.py                         # every built suite model, 50% kept
    python benchmarks/suite_heal.py --tasks tweets --limit 2  # smoke
"""

from __future__ import annotations

import math
import time

from common import RESULTS, suite_models, suite_parser, write

import lowrank
from lowrank.cli.args import statistics_settings
from lowrank.healing import default_healing
from lowrank.needs import needs_for
from lowrank.statistics import statistics_for

METHOD = "kfac_svd"
TARGET_POINTS = 1.0  # healed accuracy at most this many points below dense
RECIPE = default_healing("classifier")


def standard_error(accuracy: float, examples: int) -> float:
    return math.sqrt(accuracy * (1 - accuracy) / max(1, examples))


def run_task(task_name: str, model: str, args, settings) -> dict:
    task = lowrank.load_task(task_name)
    loaded = lowrank.load_model(model, device=args.device)
    start = time.perf_counter()
    stats = statistics_for(loaded, task, needs_for([METHOD]), settings)
    statistics_s = time.perf_counter() - start
    dense = lowrank.evaluate(loaded, task, args.split, limit=args.limit, latency=False)
    start = time.perf_counter()
    small = lowrank.compress(loaded, args.keep, method=METHOD, stats=stats)
    compress_s = time.perf_counter() - start
    compressed = lowrank.evaluate(small, task, args.split, limit=args.limit, latency=False)
    start = time.perf_counter()
    healed = lowrank.heal(small, loaded, task, RECIPE)
    heal_s = time.perf_counter() - start
    after = lowrank.evaluate(healed, task, args.split, limit=args.limit, latency=False)
    record = healed.model.lowrank_info.healing
    drop = 100 * (dense.value - after.value)
    row = {
        "task": task_name,
        "model": model,
        "keep": args.keep,
        "method": METHOD,
        "examples": dense.examples,
        "dense": dense.value,
        "compressed": compressed.value,
        "healed": after.value,
        "healed_drop_points": drop,
        "standard_error_points": 100 * standard_error(dense.value, dense.examples),
        "target_met": drop <= TARGET_POINTS,
        "params_linear_kept": after.params_linear / dense.params_linear,
        "statistics_s": round(statistics_s, 1),
        "compress_s": round(compress_s, 1),
        "heal_s": round(heal_s, 1),
        "heal_level": record["level"],
        "heal_steps": record.get("end_to_end", {}).get("steps", 0),
        "heal_stopped": record.get("end_to_end", {}).get("stopped"),
        "blocks_kept": record.get("blocks", {}).get("block_kept"),
        "heldout_kl_before": record["heldout_before"],
        "heldout_kl_after": record["heldout_after"],
        "train_tokens": record["train_tokens"],
    }
    print(
        f"{task_name}: dense {dense.value:.4f}, {METHOD} {args.keep:.0%} {compressed.value:.4f}, healed "
        f"{after.value:.4f} ({-drop:+.1f} pts; {record['level']}, {row['heal_steps']} end-to-end steps, {heal_s:.0f} s)",
        flush=True,
    )
    return row


def main() -> None:
    p = suite_parser(__doc__)
    p.add_argument("--keep", type=float, default=0.5, help="fraction of the compressible parameters kept")
    args = p.parse_args()
    settings = statistics_settings(args)
    rows = [run_task(task, model, args, settings) for task, model in suite_models(args.tasks)]
    if not rows:
        raise SystemExit("no suite model is built: nothing to run")
    met = sum(r["target_met"] for r in rows)
    print(f"healed within {TARGET_POINTS:g} point of dense: {met} of {len(rows)} tasks")
    args.out = args.out or str(RESULTS / "suite_heal.json")
    write("suite_heal", args, rows, {"settings": settings.to_dict(), "healing": RECIPE.to_dict()})


if __name__ == "__main__":
    main()
