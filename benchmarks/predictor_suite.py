"""Does the predictive metric foresee plain SVD's damage across the suite, for whole models and single layers?

Every suite task with its fine-tuned MiniLM (``lowrank.data.tasks.SUITE``; unbuilt models are
skipped with their build command); Fisher and the Taylor passes sampled with the library's
statistics flags (``--labels``, ``--fisher-batches`` ...).

**Model level** (per task x ``--keeps``, every layer at the same kept fraction, no fine-tuning):
the measured accuracy drop of plain SVD, ``svd_drop = 100 (dense - svd)`` points, and the rescue
of the weighted method, ``rescue = 100 (tfwsvd - svd)`` points, against whole-model predictions,
the per-layer estimates summed over layers (each layer's loss change taken as independent of the
others; ``R = SVD_r(W) - W`` per layer, ``F`` the diagonal Fisher):

* ``predicted_svd_loss``: ``sum_l 0.5 sum_ij F_ij R_ij^2``, the metric's
  ``predicted_loss_increase(W, F, r, "svd")`` summed (``risk_table``'s ``loss_svd`` column);
* ``full_fisher_svd``: ``sum_l 0.5 mean_n <dl_n/dW, R>^2``, the full-Fisher quadratic form of
  ``lowrank.statistics.taylor.svd_loss_change(...)["second_order"]`` summed;
* ``kfac_svd_loss``: ``sum_l 0.5 tr(G R A R^T)``, the Kronecker-factored form
  (``lowrank.analysis.metrics.kfac_loss_increase``; moments from the same statistics settings);
* ``predicted_rescue_fwsvd``: ``sum_l (loss_svd - loss_fwsvd)``, the metric's own weighted
  comparison (``risk_table`` with fwsvd), the predicted loss the weighting saves;
* ``predicted_rescue_tfwsvd``: the same with the measured tfwsvd's own factors,
  ``sum_l 0.5 sum_ij F_ij (R_ij^2 - (U V - W)_ij^2)``.

Reported over all cases (>= 15 with the whole suite): the Spearman correlation of each loss
predictor with ``svd_drop`` (and with the measured KL of the SVD model to dense), of each rescue
predictor with ``rescue``; the accuracy of the library's verdict
``risk_summary(...)["svd_expected_to_drop"]`` on the event "plain SVD loses more than 2 points";
and each loss predictor's AUC for that event (threshold free: the probability that a case that
loses > 2 points is ranked above one that does not); the threshold on each loss predictor that
calibrates the verdict on the suite (the best accuracy of ``predicted > t``), with its accuracy
when each task is judged by a threshold calibrated on the other tasks.

**Layer level** (per task, ``--layer-keep`` 30%): each layer alone replaced by its plain SVD,
measured ``KL(p_dense || p)`` on the evaluation split (``lowrank.evaluation.quality.prediction_kl``,
no labels), against the full-Fisher form, the K-FAC form and the diagonal ``predicted_loss_increase``: Spearman
per task and the median of ``predicted / measured`` (1 = the right size; the quadratic forms
estimate the KL itself when the Fisher is the true one, ``--labels sampled``). ``--layers N``
takes N evenly spaced layers instead of all 36. A correlation or AUC that is undefined (fewer than
3 cases, a constant column, no case on one side of 2 points) is NaN.

    python benchmarks/predictor_suite.py --labels data
    python benchmarks/predictor_suite.py --labels sampled --layers 12
    python benchmarks/predictor_suite.py --tasks tweets --keeps 0.5 --layers 2 --limit 1   # smoke
"""

from __future__ import annotations

import numpy as np
import torch
from common import RESULTS, settings_tag, suite_models, suite_parser, write
from scipy.stats import spearmanr

import lowrank
from lowrank.analysis.metrics import kfac_loss_increase, predicted_loss_increase, risk_summary, risk_table
from lowrank.cli.args import statistics_settings
from lowrank.compress import low_rank_layers
from lowrank.evaluation.quality import class_log_probabilities, prediction_kl
from lowrank.methods import truncated_svd
from lowrank.statistics import select, statistics_for
from lowrank.statistics.taylor import svd_loss_change

DROP_POINTS = 2.0  # the verdict's event: plain SVD loses more than this many accuracy points
LOSS_PREDICTORS = ("predicted_svd_loss", "full_fisher_svd", "kfac_svd_loss")
RESCUE_PREDICTORS = ("predicted_rescue_fwsvd", "predicted_rescue_tfwsvd")
LAYER_PREDICTORS = ("full_fisher", "kfac", "diagonal")
STATISTICS = ("fisher", "activations", "gradients")


def scores(log_probs: torch.Tensor, labels: list[int]) -> tuple[float, float]:
    """Accuracy and mean cross-entropy of (n, classes) log-probabilities against the first n labels."""
    y = torch.tensor(labels[: log_probs.shape[0]])
    return float((log_probs.argmax(-1) == y).double().mean()), float(-log_probs[torch.arange(len(y)), y].mean())


def diagonal_form(W: torch.Tensor, F: torch.Tensor, W_hat: torch.Tensor) -> float:
    return 0.5 * float((F.to(W.device).double() * (W.double() - W_hat.double()) ** 2).sum())


def svd_residual_kfac(W: torch.Tensor, rank: int, moments: dict) -> float:
    """``0.5 tr(G R A R^T)`` of the plain rank-``rank`` truncation of ``W``."""
    U, V = truncated_svd(W.double(), rank)
    return kfac_loss_increase(W, U @ V, moments["input_moment"], moments["grad_moment"])


def model_cases(task_name, model, loaded, task, fisher, moments, settings, dense_lp, args) -> list[dict]:
    labels = task.labels[args.split]
    dense_acc, _ = scores(dense_lp, labels)
    linears = lowrank.compressible_linears(loaded.model)
    weights = {n: m.weight.detach().float() for n, m in linears.items()}
    cases = []
    for keep in args.keeps:
        ranks = lowrank.resolve_ranks(loaded.model, keep)
        table = risk_table({n: weights[n] for n in ranks}, fisher, ranks, method="fwsvd")
        verdict = risk_summary(table)
        taylor = svd_loss_change(loaded, task, ranks, settings)
        svd_lp = class_log_probabilities(
            lowrank.compress(loaded, ranks, method="svd"), task, args.split, limit=args.limit
        )
        tfwsvd = lowrank.compress(loaded, ranks, method="tfwsvd", stats={n: {"fisher": F} for n, F in fisher.items()})
        tf_lp = class_log_probabilities(tfwsvd, task, args.split, limit=args.limit)
        factors = low_rank_layers(tfwsvd.model)
        tf_loss = sum(diagonal_form(weights[n], fisher[n], (factors[n].U @ factors[n].V).detach()) for n in ranks)
        svd_acc, tf_acc = scores(svd_lp, labels)[0], scores(tf_lp, labels)[0]
        cases.append(
            {
                "task": task_name,
                "model": model,
                "keep": keep,
                "dense": dense_acc,
                "svd": svd_acc,
                "tfwsvd": tf_acc,
                "svd_drop": 100 * (dense_acc - svd_acc),
                "rescue": 100 * (tf_acc - svd_acc),
                "svd_kl": prediction_kl(dense_lp, svd_lp),
                "predicted_svd_loss": float(table["loss_svd"].sum()),
                "full_fisher_svd": sum(t["second_order"] for t in taylor.values()),
                "kfac_svd_loss": sum(svd_residual_kfac(weights[n], r, moments[n]) for n, r in ranks.items()),
                "predicted_rescue_fwsvd": float((table["loss_svd"] - table["loss_weighted"]).sum()),
                "predicted_rescue_tfwsvd": float(table["loss_svd"].sum()) - tf_loss,
                "svd_expected_to_drop": verdict["svd_expected_to_drop"],
            }
        )
        print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in cases[-1].items()}, flush=True)
    return cases


def evenly_spaced(names: list[str], count: int | None) -> list[str]:
    if not count or count >= len(names):
        return names
    return [names[round(i * (len(names) - 1) / max(count - 1, 1))] for i in range(count)]


def layer_rows(task_name, loaded, task, fisher, moments, settings, dense_lp, args) -> list[dict]:
    ranks = lowrank.resolve_ranks(loaded.model, args.layer_keep)
    chosen = {n: ranks[n] for n in evenly_spaced(list(ranks), args.layers)}
    taylor = svd_loss_change(loaded, task, chosen, settings)
    linears = lowrank.compressible_linears(loaded.model)
    rows = []
    for name, rank in chosen.items():
        W = linears[name].weight.detach().float()
        small = lowrank.compress(loaded, {name: rank}, method="svd")
        rows.append(
            {
                "task": task_name,
                "layer": name,
                "rank": rank,
                "measured_kl": prediction_kl(
                    dense_lp, class_log_probabilities(small, task, args.split, limit=args.limit)
                ),
                "full_fisher": taylor[name]["second_order"],
                "kfac": svd_residual_kfac(W, rank, moments[name]),
                "diagonal": predicted_loss_increase(W, fisher[name].to(W.device), rank, "svd"),
            }
        )
        print(
            f"{task_name} {name}: KL {rows[-1]['measured_kl']:.3g}, full {rows[-1]['full_fisher']:.3g}, "
            f"kfac {rows[-1]['kfac']:.3g}, diagonal {rows[-1]['diagonal']:.3g}",
            flush=True,
        )
    return rows


def rho(xs, ys) -> float:
    if len(xs) < 3:
        return float("nan")
    return float(spearmanr(xs, ys).statistic)


def auc(scores_: list[float], events: list[bool]) -> float:
    """P(score of an event case > score of a non-event case), ties counting one half; NaN without both kinds."""
    pos = [s for s, e in zip(scores_, events) if e]
    neg = [s for s, e in zip(scores_, events) if not e]
    if not pos or not neg:
        return float("nan")
    return float(np.mean([1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg]))


def calibrated_threshold(scores_: list[float], events: list[bool]) -> tuple[float, float]:
    """The threshold ``t`` on a predictor maximizing the accuracy of the verdict ``score > t`` on these cases (the
    midpoint between neighbouring scores; ties broken towards the larger ``t``), and that accuracy."""
    values = sorted(set(scores_))
    candidates = [values[0] - 1.0] + [(a + b) / 2 for a, b in zip(values, values[1:])] + [values[-1]]
    best = max(candidates, key=lambda t: (np.mean([(x > t) == e for x, e in zip(scores_, events)]), t))
    return float(best), float(np.mean([(x > best) == e for x, e in zip(scores_, events)]))


def held_out_accuracy(cases: list[dict], key: str) -> float:
    """Leave one task out: the threshold calibrated on the other tasks, judged on the left-out task's cases."""
    right = []
    for task in dict.fromkeys(c["task"] for c in cases):
        train = [c for c in cases if c["task"] != task]
        if not train:
            return float("nan")
        t, _ = calibrated_threshold([c[key] for c in train], [c["svd_drop"] > DROP_POINTS for c in train])
        right += [(c[key] > t) == (c["svd_drop"] > DROP_POINTS) for c in cases if c["task"] == task]
    return float(np.mean(right))


def model_summary(cases: list[dict]) -> dict:
    events = [c["svd_drop"] > DROP_POINTS for c in cases]

    def col(key: str) -> list:
        return [c[key] for c in cases]

    return {
        "cases": len(cases),
        "events_svd_loses_more_than_2_points": sum(events),
        "spearman_vs_svd_drop": {k: rho(col(k), col("svd_drop")) for k in LOSS_PREDICTORS},
        "spearman_vs_svd_kl": {k: rho(col(k), col("svd_kl")) for k in LOSS_PREDICTORS},
        "auc_svd_loses_more_than_2_points": {k: auc(col(k), events) for k in LOSS_PREDICTORS},
        "verdict_accuracy": float(np.mean([c["svd_expected_to_drop"] == e for c, e in zip(cases, events)]))
        if cases
        else float("nan"),
        "spearman_vs_rescue": {k: rho(col(k), col("rescue")) for k in RESCUE_PREDICTORS},
        "calibrated_threshold": {
            k: dict(
                zip(("nats", "accuracy"), calibrated_threshold(col(k), events)),
                held_out_task_accuracy=held_out_accuracy(cases, k),
            )
            for k in LOSS_PREDICTORS
        }
        if cases
        else {},
    }


def layer_summary(rows: list[dict]) -> dict:
    out = {}
    for task in dict.fromkeys(r["task"] for r in rows):
        part = [r for r in rows if r["task"] == task]
        kl = [r["measured_kl"] for r in part]
        out[task] = {
            "layers": len(part),
            "spearman": {k: rho([r[k] for r in part], kl) for k in LAYER_PREDICTORS},
            "median_ratio": {
                k: float(np.median([r[k] / r["measured_kl"] for r in part if r["measured_kl"] > 0]))
                if any(r["measured_kl"] > 0 for r in part)
                else float("nan")
                for k in LAYER_PREDICTORS
            },
        }
    return out


def main() -> None:
    p = suite_parser(__doc__)
    p.add_argument("--keeps", type=float, nargs="+", default=[0.3, 0.5, 0.7], help="model level: kept fractions")
    p.add_argument(
        "--layer-keep", type=float, default=0.3, help="layer level: kept fraction of the one compressed layer"
    )
    p.add_argument("--layers", type=int, help="layer level: this many evenly spaced layers per task (default all)")
    args = p.parse_args()
    settings = statistics_settings(args)
    cases, rows = [], []
    for task_name, model in suite_models(args.tasks):
        task = lowrank.load_task(task_name)
        loaded = lowrank.load_model(model, device=args.device)
        stats = statistics_for(loaded, task, STATISTICS, settings)
        fisher = select(stats, "fisher")
        dense_lp = class_log_probabilities(loaded, task, args.split, limit=args.limit)
        cases += model_cases(task_name, model, loaded, task, fisher, stats, settings, dense_lp, args)
        rows += layer_rows(task_name, loaded, task, fisher, stats, settings, dense_lp, args)
    if not cases:
        raise SystemExit("no suite model is built: nothing to run")
    summary = {"model_level": model_summary(cases), "layer_level": layer_summary(rows)}
    print("\nmodel level:", summary["model_level"])
    print("layer level (Spearman with measured KL, median predicted/measured):")
    for task, s in summary["layer_level"].items():
        print(
            f"  {task:16s} {s['layers']} layers: "
            + ", ".join(f"{k} rho {s['spearman'][k]:.3f} ratio {s['median_ratio'][k]:.3g}" for k in LAYER_PREDICTORS)
        )
    args.out = args.out or str(RESULTS / f"predictor_suite_{settings_tag(settings)}.json")
    write(
        "predictor_suite",
        args,
        cases,
        {"settings": settings.to_dict(), "layers": rows, "summary": summary, "drop_points": DROP_POINTS},
    )


if __name__ == "__main__":
    main()
