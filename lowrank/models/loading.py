"""Loading models safely: packaged offline names, Hugging Face ids and local folders.

``load_model(name_or_path, task=None, device="cpu")`` returns a :class:`LoadedModel`
with ``.model``, ``.tokenizer``, ``.kind`` (``classifier``, ``causal-lm`` or
``encoder``) and ``.name``.

Safety: safetensors only (pickle checkpoints need ``allow_pickle=True``),
``trust_remote_code=False``, and the parameter count is estimated from the config
(on the meta device, no weights) before loading, refusing models that would not
fit in available RAM. Each model kind is built by one Auto class (:func:`auto_class`),
and every tokenizer is prepared once (:func:`prepare_tokenizer`: a padding token).
"""

from __future__ import annotations

from pathlib import Path

import psutil
import torch
import transformers
from huggingface_hub.errors import StrictDataclassError
from safetensors import SafetensorError
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from lowrank.data.tasks import Task, TaskError, hub_reachable, load_task
from lowrank.files.readers import read_whole
from lowrank.loaded import LoadedModel
from lowrank.models.errors import ModelLoadError
from lowrank.models.labels import head_untrained, label_mapping
from lowrank.models.packaged import resolve_source
from lowrank.models.pretrained import from_config, from_pretrained, load_weights
from lowrank.validate import Range

# What a broken checkpoint raises while it is read (truncated or corrupt safetensors, bad JSON, a config field
# of the wrong type...)
READ_ERRORS = (OSError, ValueError, KeyError, SafetensorError, StrictDataclassError)
# Sizes a config may set, each a whole number from 1 to its bound (a layer count beyond any real model's
# would take minutes to build even on the meta device)
CONFIG_SIZES = {
    "num_hidden_layers": 1024,
    "hidden_size": 2**20,
    "intermediate_size": 2**22,
    "num_attention_heads": 2**14,
    "num_key_value_heads": 2**14,
    "head_dim": 2**16,
    "vocab_size": 2**24,
    "max_position_embeddings": 2**24,
    "n_inner": 2**22,
    "num_labels": 2**20,
}
# The transformers class that builds a model of each kind with its head; an encoder is an AutoModel.
AUTO_CLASSES = {"causal-lm": AutoModelForCausalLM, "classifier": AutoModelForSequenceClassification}


def model_kind(config) -> str:
    archs = getattr(config, "architectures", None) or []
    if any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs):  # GPT-2 names its LM class *LMHeadModel
        return "causal-lm"
    if any(a.endswith("ForSequenceClassification") for a in archs):
        return "classifier"
    return "encoder"


def auto_class(kind: str):
    """The Auto class of :data:`AUTO_CLASSES` for a model ``kind`` (``AutoModel`` for an encoder)."""
    return AUTO_CLASSES.get(kind, AutoModel)


def prepare_tokenizer(tokenizer, config) -> None:
    """Batches need a padding token: a tokenizer without one pads with its end-of-sequence token, and
    ``config`` records the padding id (the model masks those positions)."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    config.pad_token_id = tokenizer.pad_token_id


def available_ram_bytes() -> int:
    return psutil.virtual_memory().available


def check_config_sizes(config, name: str) -> None:
    """Refuse a config whose sizes (:data:`CONFIG_SIZES`, where set) are not whole numbers in ``[1, bound]``,
    with :class:`ModelLoadError` naming the field: before anything is built from it. Cost: a few lookups."""
    for field, bound in CONFIG_SIZES.items():
        value = getattr(config, field, None)
        if value is None:
            continue
        try:
            Range(1, bound, integer=True).check(value, field)
        except ValueError as err:
            raise ModelLoadError(f"{name}: config.json {err}") from err


def least_parameters(config) -> int:
    """A lower bound on the parameters of ``config``'s model, by arithmetic: the token embedding and, per
    layer, one hidden x hidden projection. Sizes must have passed :func:`check_config_sizes`."""
    hidden = getattr(config, "hidden_size", None) or 0
    layers = getattr(config, "num_hidden_layers", None) or 0
    return layers * hidden * hidden + (getattr(config, "vocab_size", None) or 0) * hidden


def estimate_parameters(config, name: str = "the model") -> int:
    """Parameter count of the architecture described by ``config``, built on the meta device (no memory).

    Its sizes are checked first (:func:`check_config_sizes`); a config transformers cannot build raises
    :class:`ModelLoadError`. Cost: building the modules (milliseconds per layer), no tensor memory.
    """
    check_config_sizes(config, name)
    factory = AutoModelForCausalLM if model_kind(config) == "causal-lm" else AutoModel
    try:
        with torch.device("meta"):
            shell = from_config(factory, config)
    except (ValueError, TypeError, AttributeError, ArithmeticError, RuntimeError) as err:
        raise ModelLoadError(
            f"{name}: config.json describes no model transformers can build: {read_error(err, '')}"
        ) from err
    return sum(p.numel() for p in shell.parameters())


def check_fits_in_memory(config, name: str, bytes_per_param: int = 4, headroom: float = 0.8) -> int:
    """Raise :class:`ModelLoadError` if a float32 copy needs more than ``headroom`` x available RAM.

    The sizes are checked and an arithmetic lower bound (:func:`least_parameters`) compared first, so a
    config of absurd sizes is refused without building anything."""
    check_config_sizes(config, name)
    have = available_ram_bytes()
    least = least_parameters(config) * bytes_per_param
    n = least // bytes_per_param if least > headroom * have else estimate_parameters(config, name)
    need = n * bytes_per_param
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


def looks_like_path(name: str) -> bool:
    """True for names that can only mean a folder (absolute, ``./``, ``../``, ``~``), never a hub id."""
    return name.startswith(("/", "./", "../", "~")) or name in (".", "..") or Path(name).is_absolute()


def load_config(source: str, name: str, local_only: bool):
    folder = Path(source)
    if folder.is_file():
        raise ModelLoadError(f"{source} is a file, not a model folder")
    if folder.exists() and not (folder / "config.json").exists():
        raise ModelLoadError(f"{source} is not a model folder (no config.json)")
    if not folder.exists() and looks_like_path(source):
        raise ModelLoadError(f"cannot load model {name!r}: no such folder")
    try:
        return from_pretrained(AutoConfig, source, local_files_only=local_only)
    except (*READ_ERRORS, TypeError) as err:
        hub_hint = local_only and not folder.exists()  # a local folder's problem is never the hub's
        hint = " (the Hugging Face hub is not reachable and the model is not in the local cache)" if hub_hint else ""
        raise ModelLoadError(f"cannot load model {name!r}{hint}: {str(err).splitlines()[0]}") from err


def read_error(err: BaseException, folder) -> str:
    """One line about a checkpoint that could not be read; a broken safetensors file is named."""
    lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()] or [type(err).__name__]
    first = next((line for line in lines if line.startswith("size mismatch")), lines[0])  # torch's load_state_dict
    if "ignore_mismatched_sizes" in first:  # transformers' from_pretrained: the names are only in its log
        first = "size mismatch: a weight's shape disagrees with the sizes config.json gives"
    if isinstance(err, SafetensorError):
        files = sorted(Path(folder).glob("*.safetensors")) if Path(folder).is_dir() else []
        where = str(files[0]) if len(files) == 1 else f"a .safetensors file in {folder}"
        return f"{where} is truncated or corrupt ({first})"
    return first


def check_finite(model: torch.nn.Module, name: str) -> None:
    """Raise :class:`ModelLoadError` naming (up to 5 of) the tensors holding NaN or infinite values."""
    bad = [
        key
        for key, tensor in model.state_dict().items()
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())
    ]
    if bad:
        listed = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise ModelLoadError(f"{name}: {len(bad)} weight tensor(s) hold NaN or infinite values: {listed}")


def load_model(
    name_or_path: str,
    task: str | Task | None = None,
    device: str | torch.device = "cpu",
    allow_pickle: bool = False,
    dtype: torch.dtype = torch.float32,
) -> LoadedModel:
    """Load a packaged name (``minilm``, ``minilm-rt``, ``smollm2-135m``), a hub id or a local folder.

    With a classification ``task`` an encoder gets a (freshly initialised) sequence
    classification head sized to the task's labels; a model that already is a
    classifier keeps its own labels, which must fit the task's
    (:func:`lowrank.models.labels.check_labels`). Weights that do not fill the model (missing, unexpected or of
    another shape: :func:`lowrank.models.pretrained.load_weights`) or hold NaN or infinite values are refused.
    A local folder another process replaces meanwhile is read whole from one version of it
    (:func:`lowrank.files.readers.read_whole`).
    """
    name = str(name_or_path)
    source = resolve_source(name)
    return read_whole(Path(source), lambda: read_model(name, source, task, device, allow_pickle, dtype))


def read_model(
    name: str,
    source: str,
    task: str | Task | None = None,
    device: str | torch.device = "cpu",
    allow_pickle: bool = False,
    dtype: torch.dtype = torch.float32,
) -> LoadedModel:
    """:func:`load_model` of ``source`` (``name`` resolved) without the check for a concurrent replacement."""
    check_checkpoint_format(source, allow_pickle)
    local_only = Path(source).exists() or not hub_reachable()
    config = load_config(source, name, local_only)
    check_fits_in_memory(config, name)
    kind = model_kind(config)
    task_obj = load_task(task) if task is not None else None
    fresh_head = task_obj is not None and head_untrained(kind, task_obj.kind)
    kwargs = dict(
        local_files_only=local_only,
        use_safetensors=None if allow_pickle else True,
        dtype=dtype,
    )
    if task_obj is not None and task_obj.kind == "classification" and kind == "classifier":
        try:
            label_mapping(config, task_obj, name)  # before the weights: its labels must fit the task's
        except TaskError as err:
            raise ModelLoadError(str(err)) from err
        factory = AutoModelForSequenceClassification
    elif fresh_head:
        factory, kind = AutoModelForSequenceClassification, "classifier"
        kwargs.update(
            num_labels=task_obj.num_labels,
            id2label=dict(enumerate(task_obj.label_names)),
            label2id={n: i for i, n in enumerate(task_obj.label_names)},
        )
    else:
        factory = auto_class(kind)
    try:
        verbosity = transformers.logging.get_verbosity()
        transformers.logging.set_verbosity_error()  # the "newly initialized head" notice is expected
        try:
            model = load_weights(factory, source, fresh_head, **kwargs)
        finally:
            transformers.logging.set_verbosity(verbosity)
        tokenizer = from_pretrained(AutoTokenizer, source, local_files_only=local_only)
    except (*READ_ERRORS, RuntimeError) as err:  # RuntimeError: a weight of the wrong shape
        raise ModelLoadError(f"cannot load model {name!r}: {read_error(err, source)}") from err
    check_finite(model, name)
    prepare_tokenizer(tokenizer, model.config)
    model.to(device).eval()
    return LoadedModel(model, tokenizer, kind, name, source)
