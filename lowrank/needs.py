"""What statistics a job needs: the union of its methods' and its allocation strategy's declared kinds.

The one place that answers "does this combination need Fisher (or activations...)?"; the
answer goes to :func:`lowrank.statistics.statistics_for`.
"""

from __future__ import annotations

from collections.abc import Iterable

from lowrank.allocation import get_strategy
from lowrank.methods import get_method


def needs_for(methods: Iterable[str] = (), strategy: str | None = None, predict: bool = False) -> tuple[str, ...]:
    """Statistic kinds of the dense model needed by ``methods`` and ``strategy`` (``predict``: Fisher for predicted
    losses too); a method's sweep-only kinds (``compensation``) are computed by its block sweep, not asked for."""
    kinds: list[str] = []
    for method in methods:
        kinds += get_method(method).dense_needs
    if strategy is not None:
        kinds += get_strategy(strategy).needs
    if predict:
        kinds.append("fisher")
    return tuple(dict.fromkeys(kinds))
