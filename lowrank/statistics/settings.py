"""How statistics are sampled: the one place that holds the calibration defaults.

Whatever computes Fisher information (or any other per-layer statistic) takes a
:class:`StatisticsSettings`; its command-line flags are made by :func:`lowrank.cli.args.add_statistics_options`.
The calibration sample is named by a corpus (``task``, or the task a command is given) and a size
(:meth:`StatisticsSettings.for_tokens`: a number of tokens, rounded up to whole batches);
:func:`calibration_notes` says when it is small or another corpus than the one evaluated.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

LABELS = ("data", "sampled")
ALL = 2**31 - 1  # num_batches meaning "every batch of the split" (the sample is capped by the split's size)
# Below this many calibration tokens the CLI and the dashboard warn. The whitening and K-FAC methods estimate
# (in, in) and (out, out) moments; a decoder's widest inputs have a few thousand features (1536 in smollm2-135m),
# and a moment estimated from T tokens has noise of relative size ~ sqrt(in / T): 32k tokens keep it near 0.2
# for such a model. Measured effect of the sample size: docs/results/decoder.md (calibration-size curve).
SMALL_CALIBRATION_TOKENS = 32_768


@dataclass(frozen=True)
class StatisticsSettings:
    """Sampling of the calibration pass: ``num_batches`` x ``batch_size`` examples of ``split`` of the
    calibration corpus ``task`` (``None``: the task the statistics are asked for), shuffled with ``seed``,
    truncated to ``max_length`` tokens (a language-modelling corpus is cut into blocks of exactly ``max_length``).

    ``labels``: ``"data"`` uses the task's labels (the empirical Fisher), ``"sampled"`` draws
    each example's label from the model's own prediction (the true Fisher; classifiers only,
    causal LMs always use the next tokens).

    ``labels_per_example``: with ``labels="sampled"``, ``k`` labels drawn per example (with
    replacement) and the squared gradients averaged over them,
    ``F_ij = 1/(N k) sum_n sum_s (d l(x_n, y_ns) / d W_ij)^2``, ``y_ns ~ p(y | x_n)``: the same
    expectation with less sampling noise, for one forward and ``k`` backward passes per batch.
    ``k > 1`` needs ``labels="sampled"`` (data labels would repeat the same gradient ``k`` times).

    Output-gradient moments (``grad_moment``) only: ``grad_edge`` in [0, 0.5) drops the gradients of the first and
    last ``floor(grad_edge T)`` tokens of each window of ``T`` tokens (their context is cut, or their target is
    the next window's); ``grad_clip > 0`` scales each token's gradient ``g_t`` to norm at most
    ``grad_clip * median_t ||g_t||`` (the median over the batch's tokens, per layer), so a few tokens do not set
    the metric. Both off (0) by default (docs/results/decoder.md, "KFAC-SVD's gradient habits").
    """

    num_batches: int = 32
    batch_size: int = 16
    max_length: int = 128
    labels: str = "data"
    split: str = "train"
    seed: int = 0
    labels_per_example: int = 1
    task: str | None = None
    grad_edge: float = 0.0
    grad_clip: float = 0.0

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
        if self.task is not None and (not isinstance(self.task, str) or not self.task.strip()):
            raise ValueError(f"the calibration task must be a task name or path, got {self.task!r}")
        for name, low, high in (("grad_edge", 0.0, 0.5), ("grad_clip", 0.0, math.inf)):
            value = getattr(self, name)
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            if not ok or not low <= value < high:
                raise ValueError(f"{name} must be a number in [{low:g}, {high:g}), got {value!r}")

    @property
    def tokens(self) -> int:
        """Tokens the sample holds at most: ``num_batches x batch_size x max_length`` (exact for a
        language-modelling corpus with that many blocks; padding capacity for sentences)."""
        return self.num_batches * self.batch_size * self.max_length

    def for_tokens(self, tokens: int | None) -> StatisticsSettings:
        """These settings with as many batches as hold ``tokens`` (rounded up to whole batches of ``batch_size x
        max_length``); ``None``: every batch of the split."""
        if tokens is None:
            return self.with_(num_batches=ALL)
        if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 1:
            raise ValueError(f"calibration tokens must be a positive integer, got {tokens!r}")
        return self.with_(num_batches=-(-tokens // (self.batch_size * self.max_length)))

    def to_dict(self) -> dict:
        """The fields as a dict (cache keys, records). A field added after the first release (``labels_per_example``,
        ``task``, ``grad_edge``, ``grad_clip``) is left out at its default, so a cache key or record without it
        means the default."""
        data = asdict(self)
        for name, default in (("labels_per_example", 1), ("task", None), ("grad_edge", 0.0), ("grad_clip", 0.0)):
            if data[name] == default:
                del data[name]
        return data

    def with_(self, **changes) -> StatisticsSettings:
        return replace(self, **changes)


DEFAULT = StatisticsSettings()


def calibration_notes(record: dict, evaluated: str | None) -> list[str]:
    """Warnings about a calibration sample ``record`` (:func:`lowrank.statistics.passes.calibration_record`:
    ``task``, ``tokens``): fewer than :data:`SMALL_CALIBRATION_TOKENS` tokens, or another corpus than the task
    ``evaluated`` (names compared as given; ``None``: nothing is evaluated)."""
    notes = []
    tokens, task = record.get("tokens", 0), record.get("task")
    if tokens < SMALL_CALIBRATION_TOKENS:
        notes.append(
            f"the calibration sample is small: {tokens:,} tokens of {task} (below {SMALL_CALIBRATION_TOKENS:,}); "
            "data-aware methods fit their moments to it: use more calibration tokens"
        )
    if evaluated is not None and task is not None and _corpus(task) != _corpus(evaluated):
        notes.append(
            f"calibrated on {task} but evaluated on {evaluated}: data-aware methods fit the calibration text, "
            "expect a larger loss than with a calibration sample of the evaluated corpus"
        )
    return notes


def _corpus(name: str) -> str:
    """A task name as a corpus: ``rotten_tomatoes:text`` and ``rotten_tomatoes`` hold the same texts."""
    return str(name).removesuffix(":text")
