"""Unstructured pruning during fine-tuning: movement and Taylor (first-order) and magnitude (zeroth-order).

A :class:`PruningHook` prunes the compressible Linear weights while :func:`lowrank.training.finetune.train`
fine-tunes the model. With ``D`` a dense copy of each weight (pruned entries keep their last value) and
``W' = D ⊙ M``, scores accumulate ``S <- S - D * dL/dW'`` (movement, Sanh et al. 2020) or
``S <- S + |D * dL/dW'|`` (Taylor, Molchanov et al. 2019; a reconstruction of Ren & Zhu's first-order
importance), or are ``|D ⊙ M|`` (magnitude, Zhu & Gupta 2017); the highest are kept. ``score_update="adam"``
normalizes each entry's update as Adam does. After every optimizer step the masks are recomputed at the cubic
schedule's sparsity (:func:`cubic_sparsity`) and applied in place, pruning exactly ``floor(s n)`` weights over
all layers (``scope="global"``) or per layer. Cost per step: O(n). Details: docs/methods.md#pruning-scores-in-full.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from lowrank.data.tasks import load_task
from lowrank.files.atomic import atomic_dir
from lowrank.models.architectures import compressible_linears
from lowrank.progress import Progress
from lowrank.training.finetune import TrainConfig, TrainingHook, train

PRUNE_METHODS = ("movement", "taylor", "magnitude")
FIRST_ORDER = ("movement", "taylor")
SCOPES = ("global", "layer")
SCORE_UPDATES = ("raw", "adam")
ADAM_BETAS, ADAM_EPS = (0.9, 0.999), 1e-12
MASKS_FILE = "masks.safetensors"
RECORD_FILE = "pruning.json"

# minilm-rt's fine-tuning recipe (lowrank.training.finetune.MINILM_RT_CONFIG): pruning is fine-tuning with masks.
PRUNE_CONFIG = TrainConfig(epochs=2.0, lr=8e-5, batch_size=32, max_length=64)


def cubic_sparsity(
    step: int, total: int, final: float, initial: float = 0.0, warmup: float = 0.1, cooldown: float = 0.1
) -> float:
    """Sparsity after ``step`` of ``total`` optimizer steps: the cubic schedule of Zhu & Gupta 2017.

    With ``k = step``, ``T = total``, ``t_w = round(warmup T)``, ``t_e = T - round(cooldown T)``::

        s(k) = initial                                                      k <= t_w
        s(k) = final + (initial - final) (1 - (k - t_w) / (t_e - t_w))^3    t_w < k < t_e
        s(k) = final                                                        k >= t_e
    """
    if not 0.0 <= initial <= final < 1.0:
        raise ValueError(f"need 0 <= initial <= final < 1, got initial={initial}, final={final}")
    if warmup < 0 or cooldown < 0 or warmup + cooldown >= 1:
        raise ValueError(f"warm-up and cool-down fractions must be >= 0 and sum to < 1, got {warmup} and {cooldown}")
    start, end = round(warmup * total), total - round(cooldown * total)
    if end <= start:
        raise ValueError(f"no pruning steps left: {total} steps with warm-up {warmup} and cool-down {cooldown}")
    if step <= start:
        return initial
    if step >= end:
        return final
    return final + (initial - final) * (1.0 - (step - start) / (end - start)) ** 3


def kth_smallest(values: torch.Tensor, k: int, sample: int = 1 << 16) -> torch.Tensor:
    """The exact ``k``-th smallest entry (1-based) of a flat tensor, in O(n).

    Large inputs: a random sample brackets the answer, and ``kthvalue`` runs only on the
    entries inside the bracket (falls back to the whole tensor if the bracket misses).
    """
    n = values.numel()
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, {n}], got {k}")
    if n <= 4 * sample:
        return values.kthvalue(k).values
    generator = torch.Generator().manual_seed(k)
    picked = values[torch.randint(n, (sample,), generator=generator).to(values.device)].float()
    q = k / n
    margin = 6.0 / math.sqrt(sample)  # ~12 standard errors of an empirical quantile
    lo, hi = torch.quantile(picked, torch.tensor([max(0.0, q - margin), min(1.0, q + margin)], device=values.device))
    below = int((values < lo).sum())
    band = values[(values >= lo) & (values <= hi)]
    if below < k <= below + band.numel():
        return band.kthvalue(k - below).values
    return values.kthvalue(k).values


def top_mask(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Boolean mask keeping all but the ``floor(sparsity * n)`` lowest ``scores`` (ties: first positions pruned)."""
    flat = scores.flatten()
    prune = int(sparsity * flat.numel())
    if prune <= 0:
        return torch.ones_like(scores, dtype=torch.bool)
    threshold = kth_smallest(flat, prune)
    keep = flat > threshold
    missing = flat.numel() - prune - int(keep.sum())
    if missing > 0:  # entries equal to the threshold: keep the last ones so exactly `prune` are dropped
        ties = torch.nonzero(flat == threshold).flatten()
        keep[ties[-missing:]] = True
    return keep.view_as(scores)


def compute_masks(scores: dict[str, torch.Tensor], sparsity: float, scope: str = "global") -> dict[str, torch.Tensor]:
    """Masks for ``{name: scores}`` pruning a ``sparsity`` fraction globally or per layer."""
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")
    if scope == "layer":
        return {name: top_mask(s, sparsity) for name, s in scores.items()}
    names = list(scores)
    flat = torch.cat([scores[n].flatten().float() for n in names])
    keep = top_mask(flat, sparsity)
    masks, offset = {}, 0
    for name in names:
        n = scores[name].numel()
        masks[name] = keep[offset : offset + n].view_as(scores[name])
        offset += n
    return masks


def mask_sparsity(masks: dict[str, torch.Tensor]) -> float:
    """Fraction of pruned (False) entries over all masks together."""
    total = sum(m.numel() for m in masks.values())
    return 1.0 - sum(int(m.sum()) for m in masks.values()) / total if total else 0.0


class PruningHook(TrainingHook):
    """Accumulates scores, follows the cubic schedule and keeps the weights masked (see module docstring).

    ``layers``: names of the Linear modules to prune (default: every compressible Linear).
    After training: ``masks`` and ``scores`` ``{name: tensor}``, ``history`` (realized sparsity
    after each step) and ``schedule`` (the scheduled sparsity after each step); movement
    and taylor pruning also keep ``dense`` (the weights' dense copies ``D``, see module docstring).
    """

    def __init__(
        self,
        method: str = "movement",
        sparsity: float = 0.7,
        scope: str = "global",
        warmup: float = 0.1,
        cooldown: float = 0.1,
        initial: float = 0.0,
        layers: list[str] | None = None,
        score_update: str = "raw",
    ):
        if method not in PRUNE_METHODS:
            raise ValueError(f"pruning method must be one of {PRUNE_METHODS}, got {method!r}")
        if scope not in SCOPES:
            raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")
        if score_update not in SCORE_UPDATES:
            raise ValueError(f"score_update must be one of {SCORE_UPDATES}, got {score_update!r}")
        if not 0.0 < sparsity < 1.0:
            raise ValueError(f"sparsity must be in (0, 1), got {sparsity}")
        cubic_sparsity(0, 1000, sparsity, initial, warmup, cooldown)  # validates the schedule's arguments
        self.method, self.target, self.scope = method, sparsity, scope
        self.warmup, self.cooldown, self.initial = warmup, cooldown, initial
        self.layer_names = layers
        self.score_update = score_update
        self.moments: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.updates = 0
        self.linears: dict[str, nn.Linear] = {}
        self.scores: dict[str, torch.Tensor] = {}
        self.masks: dict[str, torch.Tensor] = {}
        self.dense: dict[str, torch.Tensor] = {}
        self.history: list[float] = []
        self.schedule: list[float] = []
        self.total = 0

    def on_start(self, model: nn.Module, total_steps: int) -> None:
        linears = compressible_linears(model)
        names = self.layer_names if self.layer_names is not None else list(linears)
        unknown = sorted(set(names) - set(linears))
        if unknown or not names:
            raise ValueError(f"cannot prune {unknown[:3] or 'no layers'}: not compressible Linear layers of this model")
        self.linears = {n: linears[n] for n in names}
        self.total = total_steps
        cubic_sparsity(0, total_steps, self.target, self.initial, self.warmup, self.cooldown)
        self.scores = {n: torch.zeros_like(m.weight, dtype=torch.float32) for n, m in self.linears.items()}
        self.masks = {n: torch.ones_like(m.weight, dtype=torch.bool) for n, m in self.linears.items()}
        if self.method in FIRST_ORDER:
            self.dense = {n: m.weight.detach().clone() for n, m in self.linears.items()}
        if self.method == "movement" and self.score_update == "adam":
            self.moments = {n: (torch.zeros_like(s), torch.zeros_like(s)) for n, s in self.scores.items()}
        self.updates = 0
        self.history, self.schedule = [], []

    @torch.no_grad()
    def after_backward(self, model: nn.Module, step: int) -> None:
        if self.method not in FIRST_ORDER:
            return
        self.updates += 1
        for name, module in self.linears.items():
            if module.weight.grad is None:
                continue
            update = self.dense[name].float() * module.weight.grad.float()
            if self.method == "taylor":
                self.scores[name].add_(update.abs_())
            else:
                self.scores[name].sub_(self._normalized(name, update) if self.score_update == "adam" else update)

    def _normalized(self, name: str, update: torch.Tensor) -> torch.Tensor:
        """Adam-normalized movement update ``m_hat / (sqrt(v_hat) + eps)``, ``m, v`` the exponential averages
        (:data:`ADAM_BETAS`) of ``update`` and ``update^2``: every entry's evidence weighs alike."""
        (b1, b2), (m, v) = ADAM_BETAS, self.moments[name]
        m.mul_(b1).add_(update, alpha=1 - b1)
        v.mul_(b2).addcmul_(update, update, value=1 - b2)
        return (m / (1 - b1**self.updates)) / ((v / (1 - b2**self.updates)).sqrt() + ADAM_EPS)

    @torch.no_grad()
    def after_step(self, model: nn.Module, step: int) -> None:
        sparsity = cubic_sparsity(step + 1, self.total, self.target, self.initial, self.warmup, self.cooldown)
        if self.method == "magnitude":
            for name, module in self.linears.items():
                self.scores[name] = (module.weight.detach().abs() * self.masks[name]).float()
        else:  # kept entries follow the optimizer, pruned ones keep their value
            for name, module in self.linears.items():
                self.dense[name] = torch.where(self.masks[name], module.weight.detach(), self.dense[name])
        if sparsity > 0:
            self.masks = compute_masks(self.scores, sparsity, self.scope)
        for name, module in self.linears.items():
            if self.method in FIRST_ORDER:
                module.weight.copy_(self.dense[name] * self.masks[name])
            else:
                module.weight.mul_(self.masks[name])
        self.schedule.append(sparsity)
        self.history.append(mask_sparsity(self.masks))


@dataclass
class PruneResult:
    """Outcome of :func:`prune`: masks (True = kept) and final scores per layer, sparsity per step."""

    method: str
    scope: str
    target: float
    masks: dict[str, torch.Tensor]
    scores: dict[str, torch.Tensor]
    history: list[float]
    schedule: list[float]
    losses: list[float]
    warmup: float
    cooldown: float
    config: dict = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def sparsity(self) -> float:
        return mask_sparsity(self.masks)

    def layer_sparsity(self) -> dict[str, float]:
        return {n: 1.0 - float(m.float().mean()) for n, m in self.masks.items()}

    def record(self) -> dict:
        """JSON-able summary (no tensors)."""
        return {
            "method": self.method,
            "scope": self.scope,
            "target": self.target,
            "sparsity": self.sparsity,
            "warmup": self.warmup,
            "cooldown": self.cooldown,
            "config": self.config,
            "seconds": self.seconds,
            "final_loss": sum(self.losses[-20:]) / max(1, len(self.losses[-20:])),
            "layer_sparsity": self.layer_sparsity(),
            "history": self.history,
        }


def prune(
    loaded,
    task,
    method: str = "movement",
    sparsity: float = 0.7,
    scope: str = "global",
    config: TrainConfig | None = None,
    progress: Progress | None = None,
    warmup: float = 0.1,
    cooldown: float = 0.1,
    layers: list[str] | None = None,
    score_update: str = "raw",
) -> PruneResult:
    """Fine-tune ``loaded`` (a ``LoadedModel``) on ``task`` while pruning it to ``sparsity``.

    The model's compressible weights end multiplied by their masks, in place. ``config``
    defaults to :data:`PRUNE_CONFIG`. Cost: one fine-tuning run plus, per step, one
    threshold selection over the pruned weights (O(n)).
    """
    hook = PruningHook(method, sparsity, scope, warmup, cooldown, layers=layers, score_update=score_update)
    config = config or PRUNE_CONFIG
    start = time.perf_counter()
    losses = train(loaded.model, loaded.tokenizer, load_task(task), config, hooks=[hook], progress=progress)
    return PruneResult(
        method,
        scope,
        sparsity,
        hook.masks,
        hook.scores,
        hook.history,
        hook.schedule,
        losses,
        warmup,
        cooldown,
        asdict(config),
        time.perf_counter() - start,
    )


def apply_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    """Multiply each named Linear weight by its mask, in place."""
    with torch.no_grad():
        for name, mask in masks.items():
            weight = model.get_submodule(name).weight
            if weight.shape != mask.shape:
                raise ValueError(f"{name}: mask shape {tuple(mask.shape)} does not match weight {tuple(weight.shape)}")
            weight.mul_(mask.to(weight.device))


def save_pruned(loaded, result: PruneResult, directory: str | Path, force: bool = False) -> Path:
    """Write the masked model (safetensors), tokenizer, ``masks.safetensors`` and ``pruning.json`` atomically.

    The folder loads with ``lowrank.load_model(directory)``; masks with :func:`load_masks`. An existing
    ``directory`` is replaced only if :func:`lowrank.files.outputs.writable_output` allows it (``force`` included).
    """
    from safetensors.torch import save_file

    directory = Path(directory)
    with atomic_dir(directory, force=force) as tmp:
        loaded.model.save_pretrained(tmp, safe_serialization=True)
        if loaded.tokenizer is not None:
            loaded.tokenizer.save_pretrained(tmp)
        save_file({n: m.contiguous().cpu() for n, m in result.masks.items()}, str(tmp / MASKS_FILE))
        (tmp / RECORD_FILE).write_text(json.dumps({"base_model": loaded.name, **result.record()}, indent=2))
    return directory


def load_masks(directory: str | Path) -> dict[str, torch.Tensor]:
    """``{name: bool mask}`` saved next to a pruned model by :func:`save_pruned`."""
    from safetensors.torch import load_file

    path = Path(directory) / MASKS_FILE
    if not path.exists():
        raise FileNotFoundError(
            f"{directory} holds no pruning masks ({MASKS_FILE}); prune it first with `python -m lowrank prune`"
        )
    return {n: m.bool() for n, m in load_file(str(path)).items()}
