"""How statistics are sampled: the one place that holds the calibration defaults.

Whatever computes Fisher information (or any other per-layer statistic) takes a
:class:`StatisticsSettings`; its command-line flags are made by :func:`lowrank.cli.args.add_statistics_options`.
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

    ``labels_per_example``: with ``labels="sampled"``, ``k`` labels drawn per example (with
    replacement) and the squared gradients averaged over them,
    ``F_ij = 1/(N k) sum_n sum_s (d l(x_n, y_ns) / d W_ij)^2``, ``y_ns ~ p(y | x_n)``: the same
    expectation with less sampling noise, for one forward and ``k`` backward passes per batch.
    ``k > 1`` needs ``labels="sampled"`` (data labels would repeat the same gradient ``k`` times).
    """

    num_batches: int = 32
    batch_size: int = 16
    max_length: int = 128
    labels: str = "data"
    split: str = "train"
    seed: int = 0
    labels_per_example: int = 1

    def __post_init__(self):
        if self.labels not in LABELS:
            raise ValueError(f"labels must be one of {', '.join(LABELS)}, got {self.labels!r}")
        for name in ("num_batches", "batch_size", "max_length", "labels_per_example"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.labels_per_example > 1 and self.labels != "sampled":
            raise ValueError(
                f"labels_per_example={self.labels_per_example} needs labels='sampled' "
                "(the data labels give the same gradient every time)"
            )

    def to_dict(self) -> dict:
        """The fields as a dict (cache keys, records). ``labels_per_example`` is left out at 1, its
        default, so a cache key or record without the field means 1."""
        data = asdict(self)
        if data["labels_per_example"] == 1:
            del data["labels_per_example"]
        return data

    def with_(self, **changes) -> StatisticsSettings:
        return replace(self, **changes)


DEFAULT = StatisticsSettings()
