"""The model card ``README.md`` of a compressed folder: hub metadata, what was done, what was measured, how to load it.

:func:`model_card` renders it from the folder's record (:class:`lowrank.info.CompressionInfo`), its config and,
when known, the measurements of the compressed model and of its dense reference (a :class:`lowrank.Evaluation`,
its ``to_dict()`` or a run-store row: ``metric``, ``value``, ``task``, ``split``, ``examples``, ``protocol``,
``params_total``, ``size_bytes``, ``latency_ms_b1`` / ``_b32`` and how latency was measured). Whatever is not
known reads "not measured" / "not recorded". The kept fraction is ``sum_l r_l (out_l + in_l) / sum_l out_l in_l``
over the compressible Linear layers (a layer left dense counts fully on both sides), from the config's shapes built
on the meta device. :func:`update_card` rewrites it in a folder this tool wrote, once measurements come. Cost: building the model on meta.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from transformers import AutoConfig

from lowrank.evaluation.latency import latency_note
from lowrank.files.atomic import atomic_write_bytes
from lowrank.files.outputs import OutputError, read_marker
from lowrank.info import CompressionInfo, load_info
from lowrank.models.architectures import adapt_layout, compressible_linears
from lowrank.models.loading import auto_class, looks_like_path, model_kind
from lowrank.models.packaged import MODELS
from lowrank.models.pretrained import from_config, from_pretrained
from lowrank.models.quantizer import TAGS

CARD_FILE = "README.md"
LIBRARY = "lowrank-studio"
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
NOT_MEASURED = "not measured"


def hub_base_model(name: str) -> str | None:
    """The hub id ``base_model`` metadata may name: a packaged model's source, a hub id; None for a local folder."""
    if name in MODELS:
        return MODELS[name].hub_id
    if not name or looks_like_path(name) or Path(name).exists() or not HUB_ID.match(name):
        return None
    return name


def layer_shapes(config) -> dict[str, tuple[int, int]]:
    """``{layer: (out, in)}`` of every compressible Linear of ``config``'s model, built on the meta device."""
    with torch.device("meta"):
        shell = adapt_layout(from_config(auto_class(model_kind(config)), config))
    return {name: (m.out_features, m.in_features) for name, m in compressible_linears(shell).items()}


def _measurement(record) -> dict:
    """A flat dict of a measurement (``Evaluation``, its ``to_dict()`` or a run-store row); ``{}`` for None."""
    if record is None:
        return {}
    data = dict(record.to_dict() if hasattr(record, "to_dict") else record)
    if not data.get("latency_note") and isinstance(data.get("latency_info"), dict):
        data["latency_note"] = latency_note(data["latency_info"])
    return data


def _number(value, unit: str = "", digits: int = 4) -> str:
    return NOT_MEASURED if value is None else f"{value:.{digits}g}{unit}"


def _measured_rows(evaluation: dict, reference: dict) -> list[str]:
    rows = ["| | compressed | dense |", "|---|---|---|"]
    metric = evaluation.get("metric") or reference.get("metric") or "quality"
    for label, key, unit, digits in (
        (metric, "value", "", 4),
        ("parameters", "params_total", "", 6),
        ("safetensors size (MB)", "size_bytes", "", 4),
        ("latency, batch 1 (ms)", "latency_ms_b1", "", 3),
        ("latency, batch 32 (ms)", "latency_ms_b32", "", 3),
    ):
        scale = 1e-6 if key == "size_bytes" else 1
        cells = [
            _number(None if data.get(key) is None else data[key] * scale, unit, digits)
            for data in (evaluation, reference)
        ]
        rows.append(f"| {label} | {cells[0]} | {cells[1]} |")
    return rows


def _conditions(evaluation: dict, reference: dict) -> list[str]:
    lines = []
    for label, data in (("compressed", evaluation), ("dense", reference)):
        if not data:
            continue
        where = (
            f"task `{data.get('task', '?')}`, split `{data.get('split', '?')}`, {data.get('examples', '?')} examples"
        )
        protocol = f"; {data['protocol']}" if data.get("protocol") else ""
        latency = f"; latency: {data['latency_note']}" if data.get("latency_note") else ""
        lines.append(f"- {label}: {where}{protocol}{latency}")
    return lines


def model_card(info: CompressionInfo, config, evaluation=None, reference=None) -> str:
    """The ``README.md`` text of a compressed folder (see the module docstring)."""
    shapes = layer_shapes(config)
    kind = info.kind or model_kind(config)
    dense = sum(o * i for o, i in shapes.values())
    kept = sum(r * sum(shapes[n]) if n in shapes else 0 for n, r in info.ranks.items())
    kept += sum(o * i for n, (o, i) in shapes.items() if n not in info.ranks)
    ranks = sorted(info.ranks.values())
    base = hub_base_model(info.base_model)
    tags = [*TAGS, info.method] if info.method else list(TAGS)
    meta = ["---", *([f"base_model: {base}"] if base else []), f"library_name: {LIBRARY}", "tags:"]
    meta += [f"- {t}" for t in dict.fromkeys(tags)] + ["---", ""]
    auto = auto_class(kind).__name__
    rank_summary = (
        f"ranks from {ranks[0]} to {ranks[-1]} (median {ranks[len(ranks) // 2]})" if ranks else "no layer factorized"
    )
    options = ", ".join(f"{k}={v}" for k, v in sorted(info.options.items())) or "defaults"
    calibration = _calibration(info)
    evaluation, reference = _measurement(evaluation), _measurement(reference)
    body = [
        f"# {Path(info.base_model).name or 'A model'} compressed by low-rank factorization ({info.method})",
        "",
        "## What was done",
        "",
        f"- base model: `{info.base_model or 'not recorded'}` ({kind})",
        f"- method: `{info.method}` (options: {options}); each listed Linear `W` (out, in) became `U` (out, r) `V` (r, in)",
        f"- layers factorized: {len(info.ranks)} of {len(shapes)} compressible Linear layers; {rank_summary}",
        f"- kept fraction of the compressible Linear parameters: {kept / dense:.3f} ({kept:,} of {dense:,})"
        if dense
        else "- kept fraction: not known (no compressible Linear layer in the config)",
        f"- calibration data: {calibration}",
        f"- healing (training toward the dense model on calibration text only): {_healing(info.healing)}",
        "",
        "## What was measured",
        "",
    ]
    if evaluation or reference:
        body += _measured_rows(evaluation, reference) + ["", "Conditions:", *_conditions(evaluation, reference)]
    else:
        body += [f"Quality, size and latency: {NOT_MEASURED} when this folder was written."]
    body += [
        "",
        "## Loading",
        "",
        "```python",
        "import lowrank, transformers  # lowrank registers its quantization method with transformers; no remote code",
        f'model = transformers.{auto}.from_pretrained("<this folder or its hub id>")',
        "```",
        "",
        "Without `import lowrank`, transformers warns `Unknown quantization type, got lowrank` and builds the dense",
        "model with the factorized layers newly initialised (random weights): always import lowrank first.",
        "",
    ]
    return "\n".join(meta + body)


def update_card(folder: str | Path, evaluation=None, reference=None) -> Path:
    """Rewrite ``folder/README.md`` with measurements taken after the folder was saved, from the folder's own
    record and config. Only a card this tool wrote (the folder's marker lists it) is replaced; else
    ``OutputError`` (one line) and nothing is written."""
    folder = Path(folder)
    path = folder / CARD_FILE
    if CARD_FILE not in (read_marker(folder) or []):
        raise OutputError(f"{path} was not written by lowrank; refusing to replace it")
    info = load_info(folder)
    config = from_pretrained(AutoConfig, folder)
    atomic_write_bytes(path, model_card(info, config, evaluation, reference).encode())
    return path


def _calibration(info) -> str:
    """The calibration sample in words: the recorded sample, else the block sweep's record, else "none recorded"."""
    sample, sweep = info.calibration, info.sequential
    if sample:
        return (
            f"{sample.get('tokens', 0):,} tokens ({sample.get('examples', '?')} examples) of the "
            f"{sample.get('split', '?')} split of `{sample.get('task', '?')}`, seed {sample.get('seed', '?')}"
        )
    if sweep:
        return f"{sweep.get('statistics', '?')}, {sweep.get('examples', '?')} examples"
    return "none recorded in lowrank.json (a data-free method, or statistics given by the caller)"


def _healing(record: dict) -> str:
    """``lowrank.heal``'s record in words: level, data, steps and the held-out KL before and after; or "none"."""
    if not record:
        return "none"
    config = record.get("config", {})
    steps = record.get("end_to_end", {}).get("steps")
    after = record.get("heldout_after")
    shown_after = f"{after:.4g}" if isinstance(after, (int, float)) else "?"
    return (
        f"{record.get('level', '?')}, {record.get('train_tokens', 0):,} tokens of the {record.get('split', '?')} "
        f"split of `{record.get('task', '?')}`, learning rate {config.get('lr', '?')}"
        + (f", {steps} steps" if steps is not None else "")
        + f"; held-out KL to dense {record.get('heldout_before', float('nan')):.4g} -> {shown_after} "
        f"({record.get('kept', '?')} kept)"
    )
