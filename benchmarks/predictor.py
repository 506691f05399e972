"""Does the predictive metric rank layers by how much plain SVD hurts them?

For every compressible layer of minilm-rt alone: replace it by its plain-SVD
approximation keeping 30% of its parameters, measure the real increase of the
validation loss, and compare (Spearman rank correlation) with

* ``predicted_loss_increase``: 0.5 * sum_ij F_ij (W - W_svd)_ij^2 (second-order estimate);
* ``fisher_dispersion``: the coefficient of variation of the FWSVD-axis Fisher sums.

Target: >= 0.8 for the better of the two.
"""

from __future__ import annotations

from common import parser, write
from scipy.stats import spearmanr

import lowrank
from lowrank.compress import fraction_rank
from lowrank.fisher import estimate_fisher
from lowrank.metrics import fisher_dispersion, predicted_loss_increase, svd_risk


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--keep", type=float, default=0.3)
    p.add_argument("--fisher-batches", type=int, default=32)
    args = p.parse_args()
    loaded = lowrank.load_model(args.model, device=args.device)
    fisher = estimate_fisher(loaded, args.task, num_batches=args.fisher_batches, batch_size=16)
    dense = lowrank.evaluate(loaded, args.task, limit=args.limit, measure_latency=False)
    rows = []
    for name, module in lowrank.compressible_linears(loaded.model).items():
        W, F = module.weight.detach().float(), fisher[name].to(module.weight.device)
        rank = fraction_rank(*W.shape, args.keep)
        small = lowrank.compress(loaded, {name: rank}, method="svd")
        result = lowrank.evaluate(small, args.task, limit=args.limit, measure_latency=False)
        rows.append({"layer": name, "rank": rank, "measured_loss_increase": result.loss - dense.loss,
                     "accuracy_drop": dense.value - result.value,
                     "predicted_loss_increase": predicted_loss_increase(W, F, rank, "svd"),
                     "fisher_dispersion": fisher_dispersion(F), "svd_risk": svd_risk(W, F, rank)})
        print(rows[-1], flush=True)
    measured = [r["measured_loss_increase"] for r in rows]
    correlations = {key: float(spearmanr(measured, [r[key] for r in rows]).statistic)
                    for key in ("predicted_loss_increase", "fisher_dispersion", "svd_risk")}
    print("Spearman correlation with the measured loss increase:", correlations)
    write("predictor", args, rows, {"dense_loss": dense.loss, "dense_accuracy": dense.value, "spearman": correlations})


if __name__ == "__main__":
    main()
