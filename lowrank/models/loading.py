"""Loading models safely: packaged offline names, Hugging Face ids and local folders.

``load_model(name_or_path, task=None, device="cpu")`` returns a :class:`LoadedModel`
with ``.model``, ``.tokenizer``, ``.kind`` (``classifier``, ``causal-lm`` or
``encoder``) and ``.name``.

Safety: safetensors only (pickle checkpoints need ``allow_pickle=True``),
``trust_remote_code=False``, and the parameter count is estimated from the config
(on the meta device, no weights) before loading, refusing models that would not
fit in available RAM.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import psutil
import torch
import transformers
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from lowrank.data.tasks import Task, hub_reachable, load_task
from lowrank.loaded import LoadedModel
from lowrank.models.errors import ModelLoadError
from lowrank.models.packaged import resolve_source


def model_kind(config) -> str:
    archs = getattr(config, "architectures", None) or []
    if any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs):  # GPT-2 names its LM class *LMHeadModel
        return "causal-lm"
    if any(a.endswith("ForSequenceClassification") for a in archs):
        return "classifier"
    return "encoder"


def available_ram_bytes() -> int:
    return psutil.virtual_memory().available


def estimate_parameters(config) -> int:
    """Parameter count of the architecture described by ``config``, built on the meta device (no memory)."""
    factory = AutoModelForCausalLM if model_kind(config) == "causal-lm" else AutoModel
    with torch.device("meta"):
        shell = factory.from_config(config)
    return sum(p.numel() for p in shell.parameters())


def check_fits_in_memory(config, name: str, bytes_per_param: int = 4, headroom: float = 0.8) -> int:
    """Raise :class:`ModelLoadError` if a float32 copy needs more than ``headroom`` x available RAM."""
    n = estimate_parameters(config)
    need, have = n * bytes_per_param, available_ram_bytes()
    if need > headroom * have:
        raise ModelLoadError(
            f"{name} has about {n / 1e6:.0f}M parameters ({need / 2**30:.1f} GiB in float32) "
            f"but only {have / 2**30:.1f} GiB of RAM is available; pick a smaller model"
        )
    return n


def check_checkpoint_format(source: str, allow_pickle: bool) -> None:
    """Refuse a local folder whose weights exist only as pickle files unless ``allow_pickle``."""
    folder = Path(source)
    if not folder.is_dir():
        return
    if not any(folder.glob("*.safetensors")) and any(folder.glob("*.bin")) and not allow_pickle:
        raise ModelLoadError(
            f"{source} holds only pickle (.bin) weights, which can run arbitrary code when loaded; "
            "convert them to safetensors or pass allow_pickle=True if you trust the source"
        )


def load_config(source: str, name: str, local_only: bool):
    folder = Path(source)
    if folder.exists() and not (folder / "config.json").exists():
        raise ModelLoadError(f"{source} is not a model folder (no config.json)")
    try:
        return AutoConfig.from_pretrained(source, trust_remote_code=False, local_files_only=local_only)
    except (OSError, ValueError, KeyError) as err:
        hint = " (the Hugging Face hub is not reachable and the model is not in the local cache)" if local_only else ""
        raise ModelLoadError(f"cannot load model {name!r}{hint}: {str(err).splitlines()[0]}") from err


def load_model(name_or_path: str, task: Optional[str | Task] = None, device: str | torch.device = "cpu",
               allow_pickle: bool = False, dtype: torch.dtype = torch.float32) -> LoadedModel:
    """Load a packaged name (``minilm``, ``minilm-rt``, ``smollm2-135m``), a hub id or a local folder.

    With a classification ``task`` an encoder gets a (freshly initialised) sequence
    classification head sized to the task's labels; a model that already is a
    classifier must have as many labels as the task.
    """
    name = str(name_or_path)
    source = resolve_source(name)
    check_checkpoint_format(source, allow_pickle)
    local_only = Path(source).exists() or not hub_reachable()
    config = load_config(source, name, local_only)
    check_fits_in_memory(config, name)
    kind = model_kind(config)
    task_obj = load_task(task) if task is not None else None
    kwargs = dict(trust_remote_code=False, local_files_only=local_only, use_safetensors=None if allow_pickle else True, dtype=dtype)
    if task_obj is not None and task_obj.kind == "classification" and kind in ("encoder", "classifier"):
        if kind == "classifier" and config.num_labels != task_obj.num_labels:
            raise ModelLoadError(f"{name} classifies {config.num_labels} labels but task {task_obj.name!r} has {task_obj.num_labels}")
        factory, kind = AutoModelForSequenceClassification, "classifier"
        kwargs.update(num_labels=task_obj.num_labels,
                      id2label=dict(enumerate(task_obj.label_names)),
                      label2id={n: i for i, n in enumerate(task_obj.label_names)})
    else:
        factory = {"causal-lm": AutoModelForCausalLM, "classifier": AutoModelForSequenceClassification}.get(kind, AutoModel)
    try:
        verbosity = transformers.logging.get_verbosity()
        transformers.logging.set_verbosity_error()  # the "newly initialized head" notice is expected
        try:
            model = factory.from_pretrained(source, **kwargs)
        finally:
            transformers.logging.set_verbosity(verbosity)
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=False, local_files_only=local_only)
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"cannot load model {name!r}: {str(err).splitlines()[0]}") from err
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.config.pad_token_id = tokenizer.pad_token_id
    model.to(device).eval()
    return LoadedModel(model, tokenizer, kind, name, source)
