"""How statistics are sampled: the one place that holds the calibration defaults.

Every command, sweep, page and benchmark that needs Fisher information (or any other
per-layer statistic) takes a :class:`StatisticsSettings`; the CLI's flags for it are made
by :func:`lowrank.cli.args.add_statistics_options`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

LABELS = ("data", "sampled")


@dataclass(frozen=True)
class StatisticsSettings:
    """Sampling of the calibration pass: ``num_batches`` x ``batch_size`` examples of ``split``
    (shuffled with ``seed``, truncated to ``max_length`` tokens).

    ``labels``: ``"data"`` uses the task's labels (the empirical Fisher), ``"sampled"`` draws
    each example's label from the model's own prediction (the true Fisher; classifiers only,
    causal LMs always use the next tokens).
    """

    num_batches: int = 32
    batch_size: int = 16
    max_length: int = 128
    labels: str = "data"
    split: str = "train"
    seed: int = 0

    def __post_init__(self):
        if self.labels not in LABELS:
            raise ValueError(f"labels must be one of {', '.join(LABELS)}, got {self.labels!r}")
        for name in ("num_batches", "batch_size", "max_length"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    def with_(self, **changes) -> "StatisticsSettings":
        return replace(self, **changes)


DEFAULT = StatisticsSettings()
