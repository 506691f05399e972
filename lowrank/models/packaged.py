"""The packaged offline models: one table of names, what they are, and where their files come from."""

from __future__ import annotations

from pathlib import Path

from lowrank import assets
from lowrank.io import cache_dir, recover
from lowrank.models.errors import ModelLoadError

PACKAGED = {
    "minilm": "all-MiniLM-L6-v2 sentence encoder (BERT, 6 layers, 22.7M params), packaged offline",
    "minilm-rt": "MiniLM fine-tuned on Rotten Tomatoes sentiment (built once, cached)",
    "smollm2-135m": "SmolLM2-135M-Instruct (Llama, 30 layers), packaged as GGUF, converted to float once",
}

MINILM_RT_TASK = "rotten_tomatoes"


def minilm_rt_dir() -> Path:
    return cache_dir() / "models" / "minilm-rt"


def resolve_source(name_or_path: str) -> str:
    """Local folder for packaged names and paths; the id itself for hub models.

    A local folder left missing by a killed save is restored first (:func:`lowrank.io.recover`).
    """
    if name_or_path == "minilm":
        return str(assets.minilm_dir())
    if name_or_path == "smollm2-135m":
        return str(assets.smollm2_dir())
    if name_or_path == "minilm-rt":
        folder = minilm_rt_dir()
        recover(folder)
        if not (folder / "model.safetensors").exists():
            raise ModelLoadError(
                "minilm-rt is not built yet: run `python -m lowrank finetune --model minilm --task rotten_tomatoes` "
                "(or `make run`, which builds it once)"
            )
        return str(folder)
    recover(Path(name_or_path))
    return name_or_path
