"""Predictive SVD-drop metric: which matrices will plain SVD hurt? (reconstruction of Hua et al. 2022).

* ``fisher_dispersion(F)``: ``std(s) / mean(s)`` of the Fisher sums along the FWSVD axis (0: even importance);
* ``predicted_loss_increase(W, F, r)``: ``0.5 sum_ij F_ij (W - W_hat)_ij^2`` (nats), the Fisher as a diagonal
  Hessian, no first-order term; ``svd_risk``: that of plain SVD over that of the weighted method;
* ``kfac_loss_increase(W, W_hat, A, G)`` (ours): ``0.5 tr(G dW A dW^T)``, the K-FAC form;
* ``risk_summary``: flags layers and the model (heuristic thresholds).

Their paper's formula is not available here: these are reconstructions. Cost: one factorization per
matrix and method. Details: docs/methods.md#predictive-svd-drop-metric-lowrankanalysismetrics.
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
