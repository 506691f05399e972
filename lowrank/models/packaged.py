"""The packaged offline models: one table of names, what they are, and where their files come from.

Two kinds of rows in :data:`MODELS`: models shipped inside PyPI packages (``minilm``,
``smollm2-135m``), and models fine-tuned from ``minilm`` on one task of the multi-task suite
(:data:`lowrank.data.tasks.SUITE`), built once on demand by
:func:`lowrank.training.finetune.build_finetuned` and cached under ``<cache>/models/<name>``:
``minilm-rt`` for Rotten Tomatoes, ``minilm-<task>`` for every other suite task.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from lowrank import assets
from lowrank.data.tasks import NAMED_TASKS, SUITE
from lowrank.files.atomic import recover
from lowrank.files.cache import cache_dir
from lowrank.models.errors import ModelLoadError

FINETUNED_BASE = "minilm"  # every fine-tuned packaged model starts from this one
MINILM_HUB_ID = "sentence-transformers/all-MiniLM-L6-v2"


@dataclass(frozen=True)
class PackagedModel:
    """A packaged model: ``description``; ``task`` set when it is ``minilm`` fine-tuned on that task (built on demand);
    ``hub_id``: the Hugging Face model its weights come from (a model card's ``base_model``)."""

    description: str
    task: str | None = None
    hub_id: str | None = None


def _finetuned_name(task: str) -> str:
    return "minilm-rt" if task == "rotten_tomatoes" else f"minilm-{task}"


MODELS: dict[str, PackagedModel] = {
    "minilm": PackagedModel(
        "all-MiniLM-L6-v2 sentence encoder (BERT, 6 layers, 22.7M params), packaged offline", hub_id=MINILM_HUB_ID
    ),
    **{
        _finetuned_name(task): PackagedModel(
            f"MiniLM fine-tuned on {task}, built once and cached: {NAMED_TASKS[task].description}", task, MINILM_HUB_ID
        )
        for task in SUITE
    },
    "smollm2-135m": PackagedModel(
        "SmolLM2-135M-Instruct (Llama, 30 layers), packaged as GGUF, converted to float once",
        hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
    ),
}

PACKAGED = {name: m.description for name, m in MODELS.items()}  # name -> description, for listings
FINETUNED = {name: m.task for name, m in MODELS.items() if m.task is not None}  # fine-tuned name -> its task


def finetuned_model(task: str) -> str:
    """Name of the packaged model fine-tuned on ``task`` (e.g. ``minilm-sms_spam``)."""
    names = [name for name, t in FINETUNED.items() if t == task]
    if not names:
        raise ModelLoadError(
            f"no packaged model is fine-tuned on {task!r}; the suite's tasks are {', '.join(FINETUNED.values())}"
        )
    return names[0]


def finetuned_dir(name: str) -> Path:
    """Cache folder of a fine-tuned packaged model (built or not)."""
    if name not in FINETUNED:
        raise ModelLoadError(f"{name!r} is not a fine-tuned packaged model; those are {', '.join(FINETUNED)}")
    return cache_dir() / "models" / name


def has_weights(folder: Path) -> bool:
    """True when ``folder`` holds a saved model's weights (a build finished there)."""
    return (folder / "model.safetensors").exists()


def is_built(name: str) -> bool:
    return has_weights(finetuned_dir(name))


def build_command(name: str) -> str:
    """The one command that builds a fine-tuned packaged model."""
    return f"python -m lowrank prepare --build {name}"


def minilm_rt_dir() -> Path:
    return finetuned_dir("minilm-rt")


def resolve_source(name_or_path: str) -> str:
    """Local folder for packaged names and paths; the id itself for hub models.

    A local folder left missing by a killed save is restored first (:func:`lowrank.files.atomic.recover`).
    """
    if name_or_path == "minilm":
        return str(assets.minilm_dir())
    if name_or_path == "smollm2-135m":
        return str(assets.smollm2_dir())
    if name_or_path in FINETUNED:
        recover(finetuned_dir(name_or_path))
        if not is_built(name_or_path):
            raise ModelLoadError(
                f"{name_or_path} is not built yet: run `{build_command(name_or_path)}` (a one-time fine-tuning of "
                f"minilm on {FINETUNED[name_or_path]}; `python -m lowrank finetune --model minilm --task "
                f"{FINETUNED[name_or_path]}` does the same)"
            )
        return str(finetuned_dir(name_or_path))
    recover(Path(name_or_path))
    return name_or_path


def weights_key(model: str) -> str | None:
    """A fingerprint of a local model's weight files (folder, names, sizes, modification times), for keys of what is
    computed from them; ``None`` for a hub id or a model that does not resolve to a folder of safetensors files.
    Cost: a ``stat`` per file."""
    try:
        folder = Path(resolve_source(model))
    except (ValueError, OSError, RuntimeError):  # not built / not fetchable: the load reports it
        return None
    files = sorted(folder.glob("*.safetensors")) if folder.is_dir() else []
    if not files:
        return None
    identity = [str(folder.resolve())] + [[f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in files]
    return hashlib.sha1(json.dumps(identity).encode()).hexdigest()[:20]
