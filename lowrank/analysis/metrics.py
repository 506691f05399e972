"""Predictive SVD-drop metric: which matrices will plain SVD hurt?

Hua et al. (2022) designed a per-matrix metric, driven by how unevenly Fisher
information is spread, that predicts when plain SVD causes a large accuracy drop. Their
exact formula is not available here; these are reconstructions.

* ``fisher_dispersion(F)``: coefficient of variation ``std(s) / mean(s)`` of the importance
  summed along the FWSVD axis (``s_j = sum_i F_ij`` per input feature for ``axis="in"``).
  0 for uniform importance; large when a few features carry most of the information,
  which is where an unweighted SVD spends its rank on the wrong directions.
* ``predicted_loss_increase(W, F, r)``: the second-order estimate of the task-loss
  increase from replacing ``W`` by its rank-r approximation ``W_hat``, with the empirical
  Fisher as a diagonal Hessian and no first-order term (a trained model sits near a
  minimum)::

      dL ~= 0.5 * sum_ij F_ij (W - W_hat)_ij^2        (original Fisher units, nats)

* ``svd_risk(W, F, r)``: ``dL(svd) / dL(weighted)``, how much worse plain SVD is expected
  to be than the weighted solution. Large risk: use a weighted method for that layer.
* ``kfac_loss_increase(W, W_hat, A, G)`` (ours): the same second-order estimate with the
  Kronecker-factored Fisher ``G (x) A`` instead of the diagonal (input and gradient correlations
  kept), ``0.5 tr(G dW A dW^T)`` with ``dW = W - W_hat``; the K-FAC estimate of the KL between the
  dense and the changed model's predictions.

``risk_summary`` flags the model (heuristic, documented there).
"""

from __future__ import annotations

import pandas as pd
import torch

from lowrank.methods import factorize, get_method

# risk_summary thresholds (heuristics): a layer is flagged when SVD is expected to be 1.5x worse
# than the weighted method; the model when plain SVD's total predicted increase exceeds 0.05 nats
# (about 5% relative loss increase for a classifier at loss ~1) or is 1.5x the weighted total.
RISK_THRESHOLD = 1.5
LOSS_THRESHOLD = 0.05


def fisher_dispersion(F: torch.Tensor, axis: str = "in") -> float:
    """Coefficient of variation of the Fisher sums along the FWSVD axis (0 = perfectly even)."""
    if axis not in ("in", "out"):
        raise ValueError(f"axis must be 'in' or 'out', got {axis!r}")
    sums = F.double().sum(dim=0 if axis == "in" else 1)
    mean = sums.mean()
    return float(sums.std(unbiased=False) / mean) if mean > 0 else 0.0


def predicted_loss_increase(W: torch.Tensor, F: torch.Tensor, rank: int, method: str = "svd", **options) -> float:
    """``0.5 * sum_ij F_ij (W - W_hat)_ij^2`` with ``W_hat`` the rank-``rank`` ``method`` approximation.

    ``F`` in original (unnormalized) Fisher units, so the result is in nats; plain ``svd`` ignores ``F``
    when factorizing. Cost: one factorization plus O(out * in)."""
    importance = F if get_method(method).needs_importance else None
    U, V = factorize(W, rank, method, importance=importance, **options)
    return 0.5 * float((F.double() * (W.double() - (U @ V).double()) ** 2).sum())


def kfac_loss_increase(W: torch.Tensor, W_hat: torch.Tensor, A: torch.Tensor, G: torch.Tensor) -> float:
    """``0.5 tr(G dW A dW^T)``, ``dW = W - W_hat`` (out, in), ``A = E[x x^T]`` (in, in), ``G`` (out, out) the
    gradient moment (:mod:`lowrank.statistics.moments`); nats. Cost: O(out in (out + in)) in float64."""
    if tuple(A.shape) != (W.shape[1],) * 2 or tuple(G.shape) != (W.shape[0],) * 2 or W_hat.shape != W.shape:
        raise ValueError(
            f"moments {tuple(G.shape)}, {tuple(A.shape)} and approximation {tuple(W_hat.shape)} do not "
            f"fit a weight {tuple(W.shape)}"
        )
    dW = W.double() - W_hat.to(W.device).double()
    return 0.5 * float(((G.to(W.device).double() @ dW) * (dW @ A.to(W.device).double())).sum())


def _losses(W: torch.Tensor, F: torch.Tensor, rank: int, method: str, **options) -> tuple[float, float, float]:
    """Predicted loss increase of plain SVD and of ``method``, and their ratio (the risk).

    Losses below ``1e-12`` of ``0.5 * sum F W^2`` (the increase from deleting the matrix) are
    floating-point noise and count as that floor, so an exactly rank-``rank`` ``W`` has risk 1
    rather than a ratio of two rounding errors."""
    plain = predicted_loss_increase(W, F, rank, "svd")
    weighted = predicted_loss_increase(W, F, rank, method, **options)
    noise = 1e-12 * 0.5 * float((F.double() * W.double() ** 2).sum())
    risk = max(plain, noise) / max(weighted, noise) if max(weighted, noise) > 0 else 1.0
    return plain, weighted, risk


def svd_risk(W: torch.Tensor, F: torch.Tensor, rank: int, method: str = "fwsvd", **options) -> float:
    """Predicted loss increase of plain SVD divided by that of ``method`` (>= 1 when weighting helps)."""
    return _losses(W, F, rank, method, **options)[2]


def risk_table(
    weights: dict[str, torch.Tensor],
    fishers: dict[str, torch.Tensor],
    ranks: dict[str, int],
    method: str = "fwsvd",
    **options,
) -> pd.DataFrame:
    """One row per layer in ``ranks``: name, shape, rank, dispersion, loss_svd, loss_weighted, risk."""
    rows = []
    for name, rank in ranks.items():
        W, F = weights[name].detach().float(), fishers[name].to(weights[name].device).float()
        plain, weighted, risk = _losses(W, F, rank, method, **options)
        rows.append(
            {
                "name": name,
                "shape": f"{W.shape[0]}x{W.shape[1]}",
                "rank": rank,
                "dispersion": fisher_dispersion(F),
                "loss_svd": plain,
                "loss_weighted": weighted,
                "risk": risk,
            }
        )
    return pd.DataFrame(rows, columns=["name", "shape", "rank", "dispersion", "loss_svd", "loss_weighted", "risk"])


def risk_summary(
    table: pd.DataFrame, risk_threshold: float = RISK_THRESHOLD, loss_threshold: float = LOSS_THRESHOLD
) -> dict:
    """Whole-model verdict: totals, max/median risk, flagged layers and ``svd_expected_to_drop``.

    Heuristic: plain SVD is expected to drop accuracy significantly when its total
    predicted loss increase exceeds ``loss_threshold`` nats, or exceeds the weighted
    method's total by ``risk_threshold`` times.
    """
    total_svd, total_weighted = float(table["loss_svd"].sum()), float(table["loss_weighted"].sum())
    ratio = total_svd / max(total_weighted, 1e-30)
    flagged = table.loc[table["risk"] >= risk_threshold, "name"].tolist()
    return {
        "total_loss_svd": total_svd,
        "total_loss_weighted": total_weighted,
        "total_risk": ratio,
        "max_risk": float(table["risk"].max()),
        "median_risk": float(table["risk"].median()),
        "flagged": flagged,
        "svd_expected_to_drop": bool(total_svd > loss_threshold or ratio >= risk_threshold),
    }
