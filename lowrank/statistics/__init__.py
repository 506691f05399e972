"""Per-layer statistics (Fisher information, masks...): collectors, cache, and the one resolver."""

from lowrank.statistics.resolve import PROVIDERS, Stats, is_cached, needs_task, restrict, select, statistics_for
from lowrank.statistics.settings import DEFAULT, StatisticsSettings

__all__ = [
    "DEFAULT",
    "PROVIDERS",
    "Stats",
    "StatisticsSettings",
    "is_cached",
    "needs_task",
    "restrict",
    "select",
    "statistics_for",
]
