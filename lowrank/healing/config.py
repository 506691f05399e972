"""How a compressed model is healed: one :class:`HealConfig`, checked when made.

Levels: ``"block"`` (each block's factors fitted to the dense block's outputs, :mod:`lowrank.healing.blocks`),
``"end-to-end"`` (the whole model distilled toward the dense model's output distribution,
:mod:`lowrank.healing.distill`) or ``"both"`` (block level, then end to end). Data: the task's ``train`` split only,
cut into token blocks (causal LM) or text batches (classifier) of ``batch_size`` x ``max_length``; the last
``heldout_batches`` of its seeded order are held out for early stopping, the rest (at most ``tokens``) trained on.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from lowrank.healing.precision import check_precision
from lowrank.validate import COUNT, POSITIVE, Range

LEVELS = ("block", "end-to-end", "both")
SPLIT = "train"  # healing sees the calibration (training) text only; the validation split stays for reporting
NON_NEGATIVE = Range(0)
BACKOFF = Range(0, 1, low_open=True)  # a factor of the learning rate: smaller, or the same


@dataclass(frozen=True)
class HealConfig:
    """Settings of :func:`lowrank.heal`.

    End to end: at most ``steps`` AdamW steps of learning rate ``lr`` (linear warm-up over ``warmup_steps``) and
    ``time_budget_s`` seconds for the whole call (data, training and the held-out checks, the last one included);
    the held-out loss is measured every ``eval_every`` steps and training stops after ``patience`` measurements
    without a new best; with ``backoff``, each of those measurements also sends the parameters back to the best
    checkpoint and multiplies the learning rate by ``backoff`` (the optimizer restarts, warm-up included; ``None``:
    training goes on from where it is); ``temperature`` ``T``: the loss is ``T^2 KL`` of the output distributions
    softened by ``T`` (:mod:`lowrank.healing.loss`), held-out measurements included. Block level: ``block_steps``
    steps of ``block_lr`` per block. ``norms``: the norm weights train too (else only the factors ``U``, ``V``).
    ``tokens``: training tokens at most (``None``: the whole training part of the split). ``precision``: the
    arithmetic of the training steps of both levels, ``float32`` or ``bfloat16`` mixed precision
    (:mod:`lowrank.healing.precision`)."""

    level: str = "end-to-end"
    steps: int = 200
    time_budget_s: float = 900.0
    lr: float = 5e-5
    batch_size: int = 8
    max_length: int = 128
    tokens: int | None = None
    heldout_batches: int = 4
    eval_every: int = 10
    patience: int = 3
    warmup_steps: int = 5
    backoff: float | None = None
    temperature: float = 1.0
    weight_decay: float = 0.0
    norms: bool = False
    precision: str = "float32"
    block_steps: int = 50
    block_lr: float = 1e-4
    seed: int = 0

    def __post_init__(self):
        if self.level not in LEVELS:
            raise ValueError(f"healing level must be one of {', '.join(LEVELS)}, got {self.level!r}")
        for name in ("steps", "batch_size", "max_length", "heldout_batches", "eval_every", "patience", "block_steps"):
            COUNT.check(getattr(self, name), f"healing {name}")
        for name in ("time_budget_s", "lr", "block_lr", "temperature"):
            POSITIVE.check(getattr(self, name), f"healing {name}")
        NON_NEGATIVE.check(self.weight_decay, "healing weight_decay")
        Range(0, integer=True).check(self.warmup_steps, "healing warmup_steps")
        Range(0, integer=True).check(self.seed, "healing seed")
        if self.tokens is not None:
            COUNT.check(self.tokens, "healing tokens")
        if self.backoff is not None:
            BACKOFF.check(self.backoff, "healing backoff")
        check_precision(self.precision)
        if not isinstance(self.norms, bool):
            raise ValueError(f"healing norms must be true or false, got {self.norms!r}")

    @property
    def blocks(self) -> bool:
        return self.level in ("block", "both")

    @property
    def end_to_end(self) -> bool:
        return self.level in ("end-to-end", "both")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict, base: HealConfig | None = None) -> HealConfig:
        """``base`` (default: the class defaults) with the fields of ``data`` (a sweep's JSON); unknown fields
        refused in one line."""
        if not isinstance(data, dict):
            raise ValueError(f"healing settings must be an object, got {data!r}")
        unknown = sorted(set(data) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"unknown healing setting(s) {unknown}; known: {', '.join(cls.__dataclass_fields__)}")
        return (base or cls()).with_(**data)

    def with_(self, **changes) -> HealConfig:
        return replace(self, **changes)


# The recipe each kind of model is healed with unless told otherwise, decided here only. A causal LM: end to end at
# the class defaults (docs/results/decoder.md, "Healing"). A classifier: block level, 100 steps of lr 1e-4 per block
# on batches of 32 texts, 8 of them held out; its few-class output gives end-to-end distillation little to fit, each
# block's hidden states much more (docs/results/suite.md, "Healed kfac_svd").
DEFAULT_HEALING = {
    "causal-lm": HealConfig(),
    "classifier": HealConfig(level="block", batch_size=32, heldout_batches=8, block_steps=100),
}


def default_healing(kind: str, blocks: bool = True) -> HealConfig:
    """The healing recipe of a model of ``kind`` (``causal-lm`` or ``classifier``): :data:`DEFAULT_HEALING`, at end to
    end when the model has no block layout (``blocks`` False: block level cannot run on it)."""
    if kind not in DEFAULT_HEALING:
        raise ValueError(f"healing distils a causal LM or a classifier toward its dense model; this model is a {kind}")
    recipe = DEFAULT_HEALING[kind]
    return recipe if blocks or not recipe.blocks else recipe.with_(level="end-to-end")
