"""The registry of factorization methods and the contract every method follows.

A method is a function ``fn(W, rank, stats, **options) -> Factorization`` registered with :func:`register_method`:
for one weight ``W`` (out, in) it returns ``U`` (out, r) and ``V`` (r, in) with ``U V ~ W``, solving (exactly or
approximately) a weighted low-rank problem. It declares ``needs``, statistic kinds of
:data:`lowrank.statistics.kinds.STATISTIC_KINDS` that :func:`lowrank.statistics.statistics_for` turns into
per-layer tensors, and ``options``, its keyword options with defaults and allowed values, from which option
checks and widgets are generated; a new file in this package that registers a method needs no other edit.
``factorize`` returns a :class:`Factorization`, which unpacks like a pair::

    U, V = factorize(W, rank=16)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from lowrank.statistics.kinds import STATISTIC_KINDS, check_kinds, swept_kinds


@dataclass
class Factorization:
    """Factors ``U`` (out, r) and ``V`` (r, in) with ``U @ V`` approximating ``W``.

    ``history`` holds the weighted error ``E`` per iteration for iterative
    methods (first entry: the starting point), empty for closed forms.
    ``info`` holds method-specific facts (e.g. the FWSVD orientation used).
    """

    U: torch.Tensor
    V: torch.Tensor
    history: list[float] = field(default_factory=list)
    info: dict = field(default_factory=dict)

    def __iter__(self) -> Iterator[torch.Tensor]:
        return iter((self.U, self.V))

    @property
    def rank(self) -> int:
        return self.U.shape[1]

    def matrix(self) -> torch.Tensor:
        return self.U @ self.V


@dataclass(frozen=True)
class Option:
    """A keyword option of a method: its default and, for a choice, the allowed values."""

    default: Any
    choices: tuple | None = None
    help: str = ""

    def check(self, method: str, name: str, value) -> None:
        """A choice must be one of ``choices``; otherwise the value must have the default's type
        (an int is a float too, NaN and infinities are none); a ``None`` default takes anything (the method checks it)."""
        if self.choices is not None:
            if value not in self.choices:
                raise ValueError(
                    f"unknown {name} {value!r} for method {method!r}; choose one of {', '.join(map(str, self.choices))}"
                )
            return
        default = self.default
        if isinstance(default, bool):
            ok, kind = isinstance(value, bool), "true or false"
        elif isinstance(default, int):
            ok, kind = isinstance(value, int) and not isinstance(value, bool), "an integer"
        elif isinstance(default, float):
            ok, kind = isinstance(value, (int, float)) and not isinstance(value, bool), "a finite number"
            ok = ok and math.isfinite(value)
        elif isinstance(default, str):
            ok, kind = isinstance(value, str), "text"
        else:
            return
        if not ok:
            raise ValueError(f"option {name} of method {method!r} must be {kind}, got {value!r}")


@dataclass(frozen=True)
class Method:
    """A registered factorization method: ``fn(W, rank, stats, **options)``."""

    name: str
    fn: Callable[..., Factorization]
    description: str
    needs: tuple[str, ...] = ()
    options: Mapping[str, Option] = field(default_factory=dict)
    # extra option names passed through to a solver (e.g. tfwsvd's per-solver options), checked by ``validate``
    open_options: bool = False
    # checks the whole option set before any work (e.g. a solver's own options); raises ValueError
    validate: Callable[[Mapping], None] | None = None
    # target(W, stats, **options): the matrix whose truncated SVD gives the factors (closed forms); its singular
    # values price each rank under the method's metric (error of rank r = sum_{i>r} s_i^2). None: iterative
    target: Callable[..., torch.Tensor] | None = None

    def target_singular_values(self, W: torch.Tensor, stats: Mapping[str, torch.Tensor], **options) -> torch.Tensor:
        """The singular values (descending, float64) of ``target(W, stats, **options)``, from its Gram on the
        smaller side (:func:`gram_singular_values`)."""
        return gram_singular_values(self.target(W, stats, **options))

    @property
    def block_sweep(self) -> bool:
        """True when its statistics only a block sweep computes: it runs through ``compress_in_blocks`` or
        ``compress_sequential``, not ``compress``."""
        return bool(swept_kinds(self.needs))

    @property
    def dense_needs(self) -> tuple[str, ...]:
        """The kinds of ``needs`` one calibration pass of the dense model computes (:func:`lowrank.statistics_for`);
        the others only the block sweep does."""
        swept = swept_kinds(self.needs)
        return tuple(k for k in self.needs if k not in swept)

    @property
    def needs_importance(self) -> bool:
        """True when the method takes an element-wise weight tensor (``fisher`` or ``mask``)."""
        return self.importance_key is not None

    @property
    def importance_key(self) -> str | None:
        """The per-layer statistic that the ``importance=`` shorthand (one tensor per layer) stands for."""
        return next((k for k in self.needs if k in ("fisher", "mask")), None)

    def with_defaults(self, options: Mapping) -> dict:
        """``options`` completed by the defaults of the method's declared options: what a record of a run states,
        so it still says what ran when a default changes."""
        return {**{name: option.default for name, option in self.options.items()}, **options}

    def check_options(self, options: Mapping) -> None:
        """Raise ``ValueError`` for unknown options (unless the method passes them on, to its ``validate``),
        a bad choice or a value of the wrong type: before any work, so a misspelt option costs nothing."""
        unknown = sorted(set(options) - set(self.options))
        if unknown and not self.open_options:
            known = ", ".join(self.options) or "none"
            raise ValueError(f"unknown option(s) {', '.join(unknown)} for method {self.name!r}; known: {known}")
        for name, value in options.items():
            if name in self.options:
                self.options[name].check(self.name, name, value)
        if self.validate is not None:
            self.validate(options)

    def check_stats(self, stats: Mapping[str, torch.Tensor], layer: str = "") -> None:
        missing = [k for k in self.needs if not _provides(stats, k)]
        if missing:
            where = f" for layer {layer}" if layer else ""
            raise ValueError(
                f"method {self.name!r} needs {', '.join(missing)} statistics{where} (stats=, or importance= "
                "for its element-wise weights; lowrank.statistics.statistics_for computes them)"
            )


def _provides(stats: Mapping, kind: str) -> bool:
    return all(k in stats for k in STATISTIC_KINDS[kind].keys)


METHODS: dict[str, Method] = {}
# What a person is shown first: plain SVD (the baseline every method is compared with) beside the method that holds
# on every task of the suite (docs/results/suite.md: kfac_svd >= svd in 15 of 15 task x budget cases).
BASELINE = "svd"
RECOMMENDED = "kfac_svd"
COMPARISON = (BASELINE, RECOMMENDED)
# Per kind of model: whether a data-aware method with an error-compensated form (``<name>_compensated``) runs in
# that form wherever a block sweep can run (a causal LM or classifier of a family with a block layout; elsewhere
# the plain method runs). Decided by measurement (docs/results/decoder.md, "partial compensation"; encoders:
# docs/results/suite.md, "Error compensation"), here only.
COMPENSATE = {"causal-lm": True, "classifier": False}
COMPENSATED_SUFFIX = "_compensated"


def register_method(
    name: str,
    description: str,
    needs: tuple[str, ...] = (),
    options: dict | None = None,
    open_options: bool = False,
    validate: Callable[[Mapping], None] | None = None,
    target: Callable[..., torch.Tensor] | None = None,
):
    """Decorator registering ``fn(W, rank, stats, **options) -> Factorization``.

    ``needs``: statistic kinds (keys of :data:`~lowrank.statistics.kinds.STATISTIC_KINDS`); ``options``: ``{name: Option}``;
    ``validate(options)``: a check of the whole option set run by :meth:`Method.check_options`; ``target(W, stats,
    **options)``: for a closed form ``U V = left^-1 SVD_r(left W right) right^-1``, the matrix ``left W right``.
    """
    check_kinds(needs)

    def decorate(fn):
        METHODS[name] = Method(name, fn, description, tuple(needs), dict(options or {}), open_options, validate, target)
        return fn

    return decorate


def gram_singular_values(T: torch.Tensor) -> torch.Tensor:
    """The singular values of ``T`` (out, in), descending, float64: ``s_i = sqrt(lambda_i)`` of its Gram on the
    smaller side (``T^T T`` or ``T T^T``, n = min(out, in)); rounding below ``~1e-8 s_1`` (the square root of
    float64's precision) reads as 0. Cost: ``out in n`` for the Gram and one symmetric eigenvalue solve O(n^3),
    against an SVD's ``~4 out in n``."""
    T = T.double()
    gram = T.T @ T if T.shape[1] <= T.shape[0] else T @ T.T
    return torch.linalg.eigvalsh(gram).flip(0).clamp(min=0).sqrt()


def available_methods() -> list[str]:
    return sorted(METHODS)


def run_methods(sweepable: bool = False) -> list[str]:
    """The methods a run or sweep can use on a model: all of them where a block sweep can run (``sweepable``: a
    causal LM or classifier of a family with a block layout), else those ``compress`` takes."""
    return [name for name in available_methods() if sweepable or not METHODS[name].block_sweep]


def with_compensation(
    name: str, compensate: bool | None = None, sweepable: bool = True, kind: str = "causal-lm"
) -> str:
    """The method to run for ``name`` on a model of ``kind``: its compensated form when ``compensate`` (``None``:
    :data:`COMPENSATE` of ``kind``), it has one and a block sweep can run (``sweepable``); ``name`` otherwise.
    ``ValueError`` when compensation is asked for explicitly (``True``) and ``name`` has no compensated form or the
    model no block sweep."""
    want = COMPENSATE.get(kind, False) if compensate is None else compensate
    variant = name if name.endswith(COMPENSATED_SUFFIX) else name + COMPENSATED_SUFFIX
    if not want or name == variant:
        return name
    if compensate and (variant not in METHODS or not sweepable):
        why = f"{name!r} has no compensated form" if variant not in METHODS else "this model has no block sweep"
        with_forms = ", ".join(
            sorted(n.removesuffix(COMPENSATED_SUFFIX) for n in METHODS if n.endswith(COMPENSATED_SUFFIX))
        )
        raise ValueError(
            f"cannot compensate: {why} (compensated forms exist for {with_forms}, on models with a block sweep)"
        )
    return variant if variant in METHODS and sweepable else name


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise ValueError(f"unknown factorization method {name!r}; available: {', '.join(sorted(METHODS))}")
    return METHODS[name]


def check_weight(W: torch.Tensor, rank: int) -> None:
    """Raise ``ValueError`` for a non-matrix, non-finite weight or a rank outside [1, min(out, in)]."""
    if W.ndim != 2:
        raise ValueError(f"expected a 2-D weight (out, in), got shape {tuple(W.shape)}")
    if not torch.isfinite(W).all():
        bad = (~torch.isfinite(W)).sum().item()
        raise ValueError(f"weight has {bad} non-finite entries (NaN/inf); refusing to factorize")
    if isinstance(rank, bool) or not isinstance(rank, int):
        raise ValueError(f"rank must be an integer, got {rank!r}")
    limit = min(W.shape)
    if not 1 <= rank <= limit:
        raise ValueError(f"rank {rank} out of range for a {W.shape[0]}x{W.shape[1]} matrix (1..{limit})")


def check_elementwise(name: str, tensor: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
    """An element-wise statistic (Fisher, mask) must have ``W``'s shape, be finite and non-negative."""
    tensor = torch.as_tensor(tensor)
    if tensor.shape != W.shape:
        raise ValueError(f"{name} shape {tuple(tensor.shape)} does not match weight shape {tuple(W.shape)}")
    if not torch.isfinite(tensor).all() or (tensor < 0).any():
        raise ValueError(f"{name} must be finite and non-negative")
    return tensor.to(device=W.device, dtype=W.dtype)


def layer_stats(
    method: Method,
    W: torch.Tensor,
    importance: torch.Tensor | None = None,
    stats: Mapping[str, torch.Tensor] | None = None,
    layer: str = "",
) -> dict[str, torch.Tensor]:
    """The statistics ``method`` gets for one layer: ``stats``, plus ``importance`` under the method's
    element-wise key; element-wise tensors are checked against ``W`` and moved to its device/dtype."""
    merged = dict(stats or {})
    if importance is not None:
        if method.importance_key is None:
            raise ValueError(f"method {method.name!r} takes no importance tensor")
        merged[method.importance_key] = importance
    method.check_stats(merged, layer)
    for key in ("fisher", "mask"):
        if key in merged:
            merged[key] = check_elementwise(key, merged[key], W)
    return merged


def factorize(
    W: torch.Tensor,
    rank: int,
    method: str = "svd",
    importance: torch.Tensor | None = None,
    stats: Mapping[str, torch.Tensor] | None = None,
    **options,
) -> Factorization:
    """Rank-``rank`` factorization of ``W`` (out, in) with a registered ``method``.

    ``stats``: the layer's statistics (``{key: tensor}``, keys from the kinds it needs); ``importance`` is shorthand
    for the method's element-wise statistic (``fisher`` for fwsvd/tfwsvd, ``mask`` for
    sparsity_aware). ``options`` go to the method (e.g. ``solver="als"`` for ``tfwsvd``).
    The factors have ``W``'s dtype and device.
    """
    spec = get_method(method)
    W = torch.as_tensor(W)
    check_weight(W, rank)
    spec.check_options(options)
    return spec.fn(W, rank, layer_stats(spec, W, importance, stats), **options)


def weighted_error(W: torch.Tensor, U: torch.Tensor, V: torch.Tensor, importance: torch.Tensor | None = None) -> float:
    """``E = sum_ij F_ij (W - U V)_ij^2`` (``F = 1`` when ``importance`` is None)."""
    residual = (W - U @ V) ** 2
    if importance is not None:
        residual = residual * importance
    return float(residual.sum())
