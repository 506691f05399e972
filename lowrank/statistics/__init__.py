"""Per-layer statistics (Fisher information, masks, moments): the kinds' table, collectors, cache, the one resolver."""

from lowrank.statistics.kinds import STATISTIC_KINDS, StatisticKind, register_statistic, statistics_label
from lowrank.statistics.resolve import Stats, is_cached, needs_task, restrict, select, statistics_for
from lowrank.statistics.settings import DEFAULT, StatisticsSettings

__all__ = [
    "DEFAULT",
    "STATISTIC_KINDS",
    "StatisticKind",
    "Stats",
    "StatisticsSettings",
    "is_cached",
    "needs_task",
    "register_statistic",
    "restrict",
    "select",
    "statistics_for",
    "statistics_label",
]
