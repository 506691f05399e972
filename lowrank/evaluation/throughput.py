"""Throughput: tokens per second when reading a prompt (prefill) and when generating (decode), against dense.

* prefill: one forward of ``batch`` sequences of ``length`` tokens (a causal LM computes the logits of the last
  position only, as generation does); tokens/s = ``batch * length / seconds``.
* decode (causal LMs): greedy ``generate`` with the KV cache, ``new_tokens`` generated per sequence after a
  ``prompt``-token prompt (``min_new_tokens = max_new_tokens``, so no end-of-text stops it); tokens/s =
  ``batch * (new_tokens - 1) / (t(new_tokens) - t(1))``: the steps after the first token, prefill excluded.
* peak memory during the measurements: ``torch.cuda.max_memory_allocated`` on CUDA, else the process's resident
  set (RSS), sampled every few milliseconds.
* the FLOP bound (:func:`flops_per_token`): dense FLOPs / this model's FLOPs per token under the same conditions,
  counting every Linear that runs (LM head, tied or not, and every layer left dense) and the attention scores,
  ``4 d c`` per layer for a query at context ``c`` (``d`` = heads x head size). Measured speed-up / bound is the
  fraction of the bound reached.

Every figure comes with :func:`lowrank.evaluation.latency.measurement_conditions` and its repeats. Dense and
compressed are measured alternately in one process, figure by figure (:func:`compare_throughput`), so each ratio
is of one moment.
Cost: at most about ``budget_s`` seconds per figure and model (warm-up included).
"""

from __future__ import annotations

import inspect
import os
import threading
from dataclasses import asdict, dataclass, replace

import torch
from torch import nn

from lowrank.evaluation.latency import conditions_text, measurement_conditions
from lowrank.evaluation.timing import Timing, median_time
from lowrank.layers import LowRankLinear
from lowrank.loaded import unwrap
from lowrank.progress import Progress, report

# Seconds each throughput figure of one model may take (warm-up included).
THROUGHPUT_BUDGET_S = 5.0


@dataclass(frozen=True)
class ThroughputSettings:
    """``batches``: batch sizes measured; ``length``: prefill tokens per sequence; ``prompt`` and ``new_tokens``:
    the decode measurement's prompt and generated tokens per sequence; ``budget_s``: seconds per figure."""

    batches: tuple[int, ...] = (1, 8)
    length: int = 256
    prompt: int = 32
    new_tokens: int = 32
    budget_s: float = THROUGHPUT_BUDGET_S

    def __post_init__(self):
        for key in ("length", "prompt", "new_tokens"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{key} must be a positive whole number, got {value!r}")
        if self.new_tokens < 2:
            raise ValueError("new_tokens must be at least 2 (decode speed is timed after the first token)")
        if not self.batches or any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in self.batches):
            raise ValueError(f"batches must be positive whole numbers, got {self.batches!r}")


def fit_to(settings: ThroughputSettings, loaded) -> ThroughputSettings:
    """``settings`` with the prefill length and the prompt plus new tokens cut to the model's maximum positions."""
    config = getattr(loaded.model, "config", None)
    limit = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    if not limit:
        return settings
    new_tokens = min(settings.new_tokens, max(2, limit // 2))
    return replace(
        settings,
        length=min(settings.length, limit),
        prompt=min(settings.prompt, limit - new_tokens),
        new_tokens=new_tokens,
    )


def is_causal_lm(loaded) -> bool:
    return getattr(loaded, "kind", "") == "causal-lm"


def token_ids(loaded, count: int, texts: list[str] | None = None) -> torch.Tensor:
    """``count`` token ids: the tokens of ``texts`` repeated (a fixed sentence when none), never special tokens."""
    text = " ".join(texts or []) or "The quick brown fox jumps over the lazy dog while the band plays on."
    ids = loaded.tokenizer(text, add_special_tokens=False)["input_ids"] or [0]
    return torch.tensor((ids * (count // len(ids) + 1))[:count])


class PeakMemory:
    """Peak memory of a ``with`` block: CUDA's allocator peak on a CUDA device, else the process RSS sampled every
    ``interval`` seconds by a thread. ``bytes``: the peak; ``before``: the value when the block began."""

    def __init__(self, device, interval: float = 0.005):
        self.device, self.interval = torch.device(device), interval
        self.bytes = self.before = 0
        self._stop = threading.Event()

    @staticmethod
    def rss() -> int:
        with open(f"/proc/{os.getpid()}/statm") as file:
            return int(file.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.bytes = max(self.bytes, self.rss())
            self._stop.wait(self.interval)

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self.before = torch.cuda.memory_allocated(self.device)
        else:
            self.before = self.bytes = self.rss()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            self.bytes = torch.cuda.max_memory_allocated(self.device)
        else:
            self._stop.set()
            self._thread.join()
            self.bytes = max(self.bytes, self.rss())
        return False


def prefill_inputs(loaded, ids: torch.Tensor) -> dict:
    """Forward inputs reading the token rows ``ids`` (batch, length): a causal LM keeps no cache and computes the
    logits of the last position only (as ``generate`` does) when its forward takes ``logits_to_keep``."""
    inputs = {"input_ids": ids.to(loaded.device), "attention_mask": torch.ones_like(ids).to(loaded.device)}
    if is_causal_lm(loaded):
        inputs["use_cache"] = False
        if "logits_to_keep" in inspect.signature(loaded.model.forward).parameters:
            inputs["logits_to_keep"] = 1
    return inputs


def prefill_timing(loaded, batch: int, settings: ThroughputSettings, ids: torch.Tensor) -> Timing:
    """Median seconds of one forward of ``batch`` x ``settings.length`` tokens."""
    inputs = prefill_inputs(loaded, ids[: settings.length].repeat(batch, 1))
    with torch.inference_mode():
        return median_time(lambda: loaded.model(**inputs), loaded.device, 5, settings.budget_s)


def generate_timing(loaded, batch: int, new_tokens: int, settings: ThroughputSettings, ids: torch.Tensor) -> Timing:
    """Median seconds of greedy ``generate`` of exactly ``new_tokens`` per sequence after the prompt (KV cache)."""
    prompt = ids[: settings.prompt].repeat(batch, 1).to(loaded.device)
    pad = loaded.tokenizer.pad_token_id if loaded.tokenizer.pad_token_id is not None else 0
    kwargs = {
        "attention_mask": torch.ones_like(prompt),
        "max_new_tokens": new_tokens,
        "min_new_tokens": new_tokens,
        "do_sample": False,
        "use_cache": True,
        "pad_token_id": pad,
    }
    with torch.inference_mode():
        return median_time(lambda: loaded.model.generate(prompt, **kwargs), loaded.device, 3, settings.budget_s)


def figure_plan(loaded, settings: ThroughputSettings) -> list[tuple[str, int]]:
    """``(kind, batch)`` of every figure: prefill at each batch, then decode too for a causal LM."""
    kinds = ("prefill", "decode") if is_causal_lm(loaded) else ("prefill",)
    return [(kind, batch) for batch in settings.batches for kind in kinds]


def measure_figure(loaded, kind: str, batch: int, settings: ThroughputSettings, ids: torch.Tensor) -> tuple:
    """``(tokens/s, how, peak bytes, peak above start)`` of one figure (see the module docstring)."""
    with PeakMemory(loaded.device) as memory:
        if kind == "prefill":
            timing = prefill_timing(loaded, batch, settings, ids)
            value, repeats = batch * settings.length / timing.seconds, timing.repeats
        else:
            first = generate_timing(loaded, batch, 1, settings, ids)
            timing = generate_timing(loaded, batch, settings.new_tokens, settings, ids)
            value = batch * (settings.new_tokens - 1) / max(timing.seconds - first.seconds, 1e-9)
            repeats = min(first.repeats, timing.repeats)
    return value, {"repeats": repeats, "warm_up": timing.warm_up}, memory.bytes, memory.bytes - memory.before


def measure_models(models: list, settings: ThroughputSettings, texts=None, progress=None) -> list[dict]:
    """:func:`measure_throughput` of each of ``models`` (same kind and positions), one figure at a time for all of
    them in turn, so that each figure of each model is measured at nearly the same moment."""
    settings = fit_to(settings, models[0])
    plan = figure_plan(models[0], settings)
    results = [{"peak_bytes": 0, "peak_above_start_bytes": 0} for _ in models]
    hows: list[dict] = [{} for _ in models]
    ids = token_ids(models[0], max(settings.length, settings.prompt), texts)
    for loaded in models:
        loaded.model.eval()
    steps = len(plan) * len(models)
    for i, (kind, batch) in enumerate(plan):
        for j, (loaded, result) in enumerate(zip(models, results)):
            who = "dense: " if j == 0 and len(models) > 1 else ""
            report(progress, i * len(models) + j, steps, f"{who}{kind} tokens/s, batch {batch}")
            key = f"{kind}_b{batch}"
            result[key], hows[j][key], peak, above = measure_figure(loaded, kind, batch, settings, ids)
            result["peak_bytes"] = max(result["peak_bytes"], peak)
            result["peak_above_start_bytes"] = max(result["peak_above_start_bytes"], above)
    report(progress, steps, steps, "throughput measured")
    for loaded, result, how in zip(models, results, hows):
        result["flops"] = flops_per_token(loaded, settings)
        result["how"] = {
            "settings": asdict(settings),
            "memory": "CUDA max_memory_allocated" if loaded.device.type == "cuda" else "process RSS (sampled)",
            "conditions": measurement_conditions(loaded.device),
            **how,
        }
    return results


def measure_throughput(loaded, settings: ThroughputSettings | None = None, texts=None, progress=None) -> dict:
    """Tokens/s of ``loaded`` at each batch of ``settings`` (prefill; decode for a causal LM), peak memory (the
    largest of the figures'; ``peak_above_start_bytes``: above the value when that figure began), FLOPs per token
    and how it was measured. Keys: ``prefill_b<n>``, ``decode_b<n>`` (tokens/s), ``flops``, ``peak_bytes``, ``how``."""
    return measure_models([loaded], settings or ThroughputSettings(), texts, progress)[0]


def compare_throughput(
    loaded, dense, settings: ThroughputSettings | None = None, texts=None, progress: Progress | None = None
) -> dict:
    """:func:`measure_throughput` of ``loaded`` with ``dense`` measured alternately in this process (each figure of
    dense just before the same figure of ``loaded``: ``dense``), and per figure the ratio to dense (``ratio``), the
    FLOP bound (``bound``: dense FLOPs / this model's FLOPs per token) and the fraction of it reached
    (``of_bound`` = ratio / bound)."""
    reference, result = measure_models([dense, loaded], settings or ThroughputSettings(), texts, progress)
    result["dense"] = {k: v for k, v in reference.items() if k != "how"}
    result["ratio"], result["bound"], result["of_bound"] = {}, {}, {}
    for key in figures(result):
        kind = key.split("_")[0]
        result["ratio"][key] = result[key] / reference[key]
        result["bound"][key] = reference["flops"][kind] / result["flops"][kind]
        result["of_bound"][key] = result["ratio"][key] / result["bound"][key]
    return result


def figures(throughput: dict | None) -> list[str]:
    """The tokens/s figures of a throughput record, in order (``prefill_b1``, ``decode_b1``, ``prefill_b8``...)."""
    return [k for k in (throughput or {}) if k.startswith(("prefill_b", "decode_b"))]


def throughput_note(throughput: dict | None) -> str:
    """How a throughput record was measured, in one line ("" for none)."""
    how = (throughput or {}).get("how")
    if not isinstance(how, dict):
        return ""
    s = how.get("settings", {})
    repeats = max((v.get("repeats", 1) for v in how.values() if isinstance(v, dict) and "repeats" in v), default=1)
    where = conditions_text(how.get("conditions"))
    return (
        f"prefill of {s.get('length')} tokens per sequence; decode: greedy generation of {s.get('new_tokens')} tokens "
        f"after a {s.get('prompt')}-token prompt with the KV cache; median of up to {repeats} runs after a warm-up"
        + (f" ({where})" if where else "")
    )


def throughput_sentence(throughput: dict | None) -> str | None:
    """A compressed model's throughput against dense in words ("1.3x the dense model's tokens per second when
    generating at batch 1, 74% of the FLOP bound ..."), or ``None`` when it was not measured against dense."""
    ratio = (throughput or {}).get("ratio")
    if not ratio:
        return None

    def parts(kind: str) -> str:
        keys = [k for k in figures(throughput) if k.startswith(kind) and k in ratio]
        return " and ".join(
            f"{ratio[k]:.2g}x{' the dense model' + chr(39) + 's tokens per second' if not i else ''} at batch "
            f"{k.split('_b')[1]} ({throughput['of_bound'][k]:.0%} of the FLOP bound)"
            for i, k in enumerate(keys)
        )

    length = throughput.get("how", {}).get("settings", {}).get("length")
    sentences = []
    if parts("decode"):
        sentences.append(f"When generating it runs at {parts('decode')}")
    if parts("prefill"):
        sentences.append(f"reading {length}-token prompts, at {parts('prefill')}")
    note = throughput_note(throughput)
    text = "; ".join(sentences)
    return text[0].upper() + text[1:] + (f". Measured: {note}" if note else "") + "."


def attention_width(config) -> tuple[int, int]:
    """(layers, d = heads x head size) of a Transformer config (0, 0 when it names neither)."""
    layers = getattr(config, "num_hidden_layers", 0) or 0
    heads = getattr(config, "num_attention_heads", 0) or 0
    head = getattr(config, "head_dim", None) or (config.hidden_size // heads if heads else 0)
    return layers, heads * head


def linear_flops(module: nn.Module, inputs: dict) -> float:
    """FLOPs of every Linear (``2 out in`` per row) and ``LowRankLinear`` (``2 r (out + in)``) in one forward of
    ``inputs``, counted by hooks on the rows each layer actually receives."""
    total = 0.0

    def hook(layer, args, output):
        nonlocal total
        rows = args[0].numel() / args[0].shape[-1]
        if isinstance(layer, LowRankLinear):
            total += 2 * rows * layer.rank * (layer.in_features + layer.out_features)
        else:
            total += 2 * rows * layer.in_features * layer.out_features

    handles = [m.register_forward_hook(hook) for m in module.modules() if isinstance(m, (nn.Linear, LowRankLinear))]
    try:
        with torch.inference_mode():
            module(**inputs)
    finally:
        for handle in handles:
            handle.remove()
    return total


def flops_per_token(loaded, settings: ThroughputSettings) -> dict:
    """FLOPs per token of ``loaded``: ``prefill`` (one sequence of ``length`` tokens, attention over the causal
    context, the LM head on the last position) and, for a causal LM, ``decode`` (one new token at the mean context
    ``prompt + new_tokens / 2`` of the timed steps, the LM head included)."""
    module, _ = unwrap(loaded.model)
    layers, width = attention_width(module.config)
    ids = torch.ones(1, settings.length, dtype=torch.long)
    inputs = prefill_inputs(loaded, ids)
    causal = is_causal_lm(loaded)
    n = settings.length
    context = (n + 1) / 2 if causal else n  # mean keys per query
    flops = {"prefill": linear_flops(module, inputs) / n + 4 * layers * width * context}
    if causal:
        one = prefill_inputs(loaded, ids[:, :1])
        mean_context = settings.prompt + settings.new_tokens / 2  # the timed steps: contexts prompt+1 .. prompt+N-1
        flops["decode"] = linear_flops(module, one) + 4 * layers * width * mean_context
    return flops
