"""The fastest form of each factorized layer, measured on the target device at the user's batch.

A ``LowRankLinear`` ``U`` (out, r) ``V`` (r, in) can run as

* ``factorized``: ``(x V^T) U^T``, two thin matmuls, ``r (out + in)`` multiply-adds per token;
* ``compiled``: the same product through ``torch.compile`` (one fused graph; on the CPU it needs a C
  compiler, and any failure to compile drops this form);
* ``dense``: the merged weight ``W = U V`` in an ``nn.Linear``, ``out * in`` multiply-adds per token, but
  one larger matmul, which kernels run closer to peak.

:func:`optimize_speed` times each form on an input of ``batch x length`` tokens (:class:`SpeedSettings`) and
keeps the fastest, so no layer is slower than dense at that batch. Layers of one shape share one measurement
(the weights' values do not change the time). A merged layer becomes an ``nn.Linear`` again: it leaves
``lowrank_info.ranks`` and is recorded with its rank in ``lowrank_info.speed``; :func:`apply_speed`
re-applies the compiled forms of a loaded folder. On CUDA the factors are timed in bfloat16.
Cost: ``3 x budget_s`` seconds at most per distinct layer shape, plus one compile per shape.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

import torch
from torch import nn

from lowrank.evaluation.latency import measurement_conditions
from lowrank.evaluation.timing import median_time
from lowrank.layers import LowRankLinear, product
from lowrank.loaded import unwrap
from lowrank.progress import Progress, notice, report

# Seconds each form of one layer shape may take to time (warm-up included).
FORM_BUDGET_S = 1.0

# timer(form, layer name, run) -> seconds of one run(); injectable (tests stub it)
Timer = Callable[[str, str, Callable[[], object]], float]


@dataclass(frozen=True)
class SpeedSettings:
    """What the forms are timed on: ``batch`` texts of ``length`` tokens (``length=1``: one generated token per
    text, i.e. decoding), on ``device`` (default: the model's); ``compile``: whether to try ``torch.compile``."""

    batch: int = 1
    length: int = 1
    device: str | None = None
    compile: bool = True
    budget_s: float = FORM_BUDGET_S

    def __post_init__(self):
        for key in ("batch", "length"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{key} must be a positive whole number, got {value!r}")


def speed_dtype(device: torch.device, dtype: torch.dtype) -> torch.dtype:
    """The dtype layers are timed (and should run) in: bfloat16 on CUDA, the model's own elsewhere."""
    return torch.bfloat16 if device.type == "cuda" else dtype


@cache
def compiled_product():
    """``torch.compile`` of :func:`lowrank.layers.product` (one per process; graphs reused across layers of one
    shape, since the factors are its inputs), or ``None`` when compiling fails here (probed once)."""
    try:
        fn = torch.compile(product)  # shapes that vary become dynamic after their first recompile
        with torch.inference_mode():
            fn(torch.ones(2, 8), torch.ones(4, 8), torch.ones(8, 4), None)
        return fn
    except Exception as err:  # torch.compile raises many kinds (no C compiler, unsupported backend...)
        notice(f"torch.compile is not usable here, layers run uncompiled: {str(err).splitlines()[0][:120]}")
        return None


def measured_timer(budget_s: float = FORM_BUDGET_S, device=None) -> Timer:
    """The real timer: median wall time within ``budget_s`` (:func:`lowrank.evaluation.timing.median_time`)."""

    def timer(form: str, name: str, run: Callable[[], object]) -> float:
        return median_time(run, device or "cpu", repeats=50, budget_s=budget_s).seconds

    return timer


def merged(layer: LowRankLinear) -> nn.Linear:
    """``layer`` as an ``nn.Linear`` holding ``W = U V`` (same dtype, device and bias)."""
    U, V = layer.U.detach(), layer.V.detach()
    dense = nn.Linear(
        layer.in_features, layer.out_features, bias=layer.bias is not None, device=U.device, dtype=U.dtype
    )
    with torch.no_grad():
        dense.weight.copy_((U.float() @ V.float()).to(U.dtype))
        if layer.bias is not None:
            dense.bias.copy_(layer.bias.detach())
    return dense


def time_forms(
    layer: LowRankLinear, name: str, settings: SpeedSettings, device: torch.device, timer: Timer
) -> dict[str, float]:
    """Seconds of one forward of each available form of ``layer`` on ``batch x length x in`` random inputs."""
    dtype = speed_dtype(device, layer.U.dtype)
    U = torch.randn(layer.out_features, layer.rank, device=device, dtype=dtype)
    V = torch.randn(layer.rank, layer.in_features, device=device, dtype=dtype)
    bias = None if layer.bias is None else torch.randn(layer.out_features, device=device, dtype=dtype)
    W = U @ V
    x = torch.randn(settings.batch, settings.length, layer.in_features, device=device, dtype=dtype)
    runs = {
        "factorized": lambda: product(x, V, U, bias),
        "dense": lambda: torch.nn.functional.linear(x, W, bias),
    }
    compiled = compiled_product() if settings.compile else None
    if compiled is not None:
        try:
            with torch.inference_mode():
                compiled(x, V, U, bias)
            runs["compiled"] = lambda: compiled(x, V, U, bias)
        except Exception as err:  # a shape or device the compiler refuses: this form is not available
            notice(f"{name}: torch.compile failed, timing without it: {str(err).splitlines()[0][:120]}")
    with torch.inference_mode():
        return {form: float(timer(form, name, run)) for form, run in runs.items()}


def optimize_speed(
    model,
    settings: SpeedSettings | None = None,
    timer: Timer | None = None,
    progress: Progress | None = None,
) -> dict:
    """Give each ``LowRankLinear`` of ``model`` (in place) its fastest form at ``settings``; returns the record
    stored as ``lowrank_info.speed``: the settings, the measurement conditions and per layer its form, rank and
    the seconds of each form. Merged layers leave ``lowrank_info.ranks``. ``timer``: see :data:`Timer`."""
    settings = settings or SpeedSettings()
    module, _ = unwrap(model)
    layers = {n: m for n, m in module.named_modules() if isinstance(m, LowRankLinear)}
    if not layers:
        raise ValueError("this model has no factorized layer: nothing to choose a fast form for")
    device = torch.device(settings.device or next(module.parameters()).device)
    timer = timer or measured_timer(settings.budget_s, device)
    by_shape: dict[tuple, dict[str, float]] = {}
    record = {}
    for step, (name, layer) in enumerate(layers.items()):
        report(progress, step, len(layers), f"timing {name}")
        shape = (layer.out_features, layer.in_features, layer.rank, layer.bias is not None, layer.U.dtype)
        if shape not in by_shape:
            by_shape[shape] = time_forms(layer, name, settings, device, timer)
        seconds = by_shape[shape]
        form = min(seconds, key=seconds.get)
        record[name] = {"form": form, "rank": layer.rank, "seconds": seconds}
    report(progress, len(layers), len(layers), "forms chosen")
    speed = {
        "batch": settings.batch,
        "length": settings.length,
        "device": str(device),
        "dtype": str(speed_dtype(device, next(iter(layers.values())).U.dtype)).removeprefix("torch."),
        "conditions": measurement_conditions(device),
        "layers": record,
    }
    apply_speed(module, speed)
    info = getattr(module, "lowrank_info", None)
    if info is not None:
        info.speed = speed
        info.ranks = {n: r for n, r in info.ranks.items() if record.get(n, {}).get("form") != "dense"}
    return speed


def apply_speed(module: nn.Module, speed: dict) -> None:
    """Put each layer of a ``speed`` record in its form: merge the ``dense`` ones still factorized, give the
    ``compiled`` ones the compiled product (their plain product where compiling fails)."""
    for name, entry in (speed.get("layers") or {}).items():
        layer = module.get_submodule(name)
        if not isinstance(layer, LowRankLinear):
            continue  # already merged (a loaded folder holds the dense weight)
        if entry.get("form") == "dense":
            parent, _, child = name.rpartition(".")
            setattr(module.get_submodule(parent) if parent else module, child, merged(layer))
        elif entry.get("form") == "compiled" and compiled_product() is not None:
            layer.product = compiled_product()
