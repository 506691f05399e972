"""Does the predictive metric rank layers by how much plain SVD hurts them?

For every compressible layer of minilm-rt alone: replace it by its plain-SVD
approximation keeping 30% of its parameters, measure the real increase of the
validation loss, and compare (Spearman rank correlation) with

* ``predicted_loss_increase``: 0.5 * sum_ij F_ij (W - W_svd)_ij^2 (second-order estimate);
* ``fisher_dispersion``: the coefficient of variation of the FWSVD-axis Fisher sums;
* ``fisher_quadratic``: 0.5 * mean_n <dl_n/dW, dW>^2, the same second-order estimate with the
  full (not diagonal) empirical Fisher, on the same training examples
  (``lowrank.statistics.taylor.svd_loss_change``), and ``taylor_total``: that plus the first-order
  term mean_n <dl_n/dW, dW> on the training examples.

Target: >= 0.8 for the better of the two.

The loss increase is measured on the validation split (the target) and, with
``--train-batches``, also on a slice of the training split, where the Fisher was
estimated and where the second-order expansion around a (near) minimum is valid: on
validation data the first-order term ``g_val . dW`` of the generalization gap is not zero,
and the second-order estimate cannot see it.

How far can any predictor get? ``--heldout-split test`` measures the same loss increases
on the test split, which nothing else here uses. The Spearman correlation ``R`` between the
validation and the test measurements is the *reliability* of the target: the rank
agreement of two equally valid measurements of "how much does compressing this layer
hurt". If each split measures the same true loss changes plus independent sampling noise,
a predictor that knew the true changes exactly would correlate with the validation
measurement at about ``sqrt(R)`` (the classical attenuation bound, exact for Pearson
correlation, approximate for Spearman): reported as ``ceiling``. ``heldout_taylor`` is
``taylor_total`` computed on the held-out split (first-order term + full Fisher form): what
a user with a labelled calibration set, disjoint from training and validation, could predict.

What does a second-order estimate predict? Its expansion ``dL ~= g . dW + 0.5 dW^T H dW`` is
around the *training* minimum; the quantity with no first-order term and the Fisher as its exact
Hessian is the change of the model's predictions, ``measured_kl``: the mean over validation
examples of ``KL(p_dense || p_compressed)`` (``lowrank.evaluation.quality.prediction_kl``, no labels used).
Its second-order expansion is ``0.5 dW^T F dW`` with the *true* Fisher ``F`` (labels drawn from the
model), so the correlations of the Fisher predictors with ``measured_kl`` say how well they rank
layers by how much compressing them changes the function, apart from whether that change
happens to help or hurt the validation loss.

Two variants of the diagonal estimate ``predicted_loss_increase`` test whether its Fisher is
the weak part: ``diagonal_true_fisher`` uses labels sampled from the model's own prediction
(the true Fisher, a Gauss-Newton curvature, instead of the empirical Fisher of the training
labels, which a fitted model makes small and dominated by its few mistakes), and
``diagonal_on_validation`` is a diagnostic, not a usable predictor: the Fisher estimated on
the validation split itself, the data the target is measured on. It bounds what a better
Fisher sample can do for the diagonal form.
"""

from __future__ import annotations

import math

from common import fisher_maps, parser, write
from scipy.stats import spearmanr

import lowrank
from lowrank.analysis.metrics import fisher_dispersion, predicted_loss_increase, svd_risk
from lowrank.evaluation.quality import class_log_probabilities, prediction_kl
from lowrank.statistics import StatisticsSettings
from lowrank.statistics.taylor import svd_loss_change

PREDICTORS = ("predicted_loss_increase", "fisher_dispersion", "svd_risk", "fisher_quadratic", "taylor_total")
HELDOUT_PREDICTORS = ("heldout_taylor",)


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--keep", type=float, default=0.3)
    p.add_argument("--fisher-batches", type=int, default=32)
    p.add_argument(
        "--train-batches",
        type=int,
        default=20,
        help="batches of 64 training examples for the train-split measurement (0 = validation only)",
    )
    p.add_argument(
        "--heldout-split",
        default="test",
        help="a split used for nothing else: its measured loss increase "
        "gives the reliability of the validation target, its gradients the heldout_taylor predictor "
        "('' = skip)",
    )
    args = p.parse_args()
    loaded = lowrank.load_model(args.model, device=args.device)
    fisher = fisher_maps(loaded, args.task, args.fisher_batches)
    variants = {
        "diagonal_true_fisher": fisher_maps(loaded, args.task, args.fisher_batches, labels="sampled"),
        "diagonal_on_validation": fisher_maps(loaded, args.task, args.fisher_batches, split="validation"),
    }
    dense = lowrank.evaluate(loaded, args.task, limit=args.limit, latency=False)
    dense_predictions = class_log_probabilities(loaded, args.task, limit=args.limit)
    dense_train = (
        lowrank.evaluate(loaded, args.task, "train", limit=args.train_batches, latency=False)
        if args.train_batches
        else None
    )
    linears = lowrank.compressible_linears(loaded.model)
    ranks = lowrank.resolve_ranks(loaded.model, args.keep)
    taylor = svd_loss_change(
        loaded, args.task, ranks, StatisticsSettings(num_batches=args.fisher_batches, batch_size=16)
    )
    heldout = args.heldout_split
    if heldout:
        dense_heldout = lowrank.evaluate(loaded, args.task, heldout, limit=args.limit, latency=False)
        heldout_taylor = svd_loss_change(
            loaded, args.task, ranks, StatisticsSettings(num_batches=args.fisher_batches, batch_size=16, split=heldout)
        )
    rows = []
    for name, rank in ranks.items():
        weight = linears[name].weight
        W, F = weight.detach().float(), fisher[name].to(weight.device)
        small = lowrank.compress(loaded, {name: rank}, method="svd")
        result = lowrank.evaluate(small, args.task, limit=args.limit, latency=False)
        rows.append(
            {
                "layer": name,
                "rank": rank,
                "measured_loss_increase": result.loss - dense.loss,
                "measured_kl": prediction_kl(
                    dense_predictions, class_log_probabilities(small, args.task, limit=args.limit)
                ),
                "accuracy_drop": dense.value - result.value,
                "measured_train_loss_increase": (
                    lowrank.evaluate(small, args.task, "train", limit=args.train_batches, latency=False).loss
                    - dense_train.loss
                )
                if dense_train
                else None,
                "predicted_loss_increase": predicted_loss_increase(W, F, rank, "svd"),
                "fisher_quadratic": taylor[name]["second_order"],
                "taylor_total": taylor[name]["total"],
                "fisher_dispersion": fisher_dispersion(F),
                "svd_risk": svd_risk(W, F, rank),
                **{
                    key: predicted_loss_increase(W, other[name].to(weight.device), rank, "svd")
                    for key, other in variants.items()
                },
            }
        )
        if heldout:
            rows[-1].update(
                measured_heldout_loss_increase=lowrank.evaluate(
                    small, args.task, heldout, limit=args.limit, latency=False
                ).loss
                - dense_heldout.loss,
                heldout_taylor=heldout_taylor[name]["total"],
            )
        print(rows[-1], flush=True)
    targets = ["measured_loss_increase", "measured_kl"] + (["measured_train_loss_increase"] if dense_train else [])
    predictors = PREDICTORS + (HELDOUT_PREDICTORS if heldout else ()) + tuple(variants)
    correlations = {target: {key: rho(rows, target, key) for key in predictors} for target in targets}
    extra = {
        "dense_loss": dense.loss,
        "dense_accuracy": dense.value,
        "spearman": correlations,
        "spearman_loss_increase_vs_kl": rho(rows, "measured_loss_increase", "measured_kl"),
    }
    if heldout:
        reliability = rho(rows, "measured_loss_increase", "measured_heldout_loss_increase")
        extra["reliability"] = {
            "split": heldout,
            "spearman_validation_vs_heldout": reliability,
            "ceiling": math.sqrt(max(reliability, 0.0)),
        }
    print("Spearman correlations (measured -> predictor -> rho):", correlations)
    print("reliability of the validation target:", extra.get("reliability"))
    write("predictor", args, rows, extra)


def rho(rows: list[dict], a: str, b: str) -> float:
    return float(spearmanr([r[a] for r in rows], [r[b] for r in rows]).statistic)


if __name__ == "__main__":
    main()
