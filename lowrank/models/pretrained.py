"""The one way this package calls transformers' ``from_pretrained`` / ``from_config``: never a model's own code.

:func:`from_pretrained` and :func:`from_config` pass ``trust_remote_code=False`` (transformers then raises
instead of asking "run the custom code? [y/N]" on stdin); before that, a local folder that needs code of its
own (``auto_map`` with a ``model_type`` or ``tokenizer_class`` transformers does not have) is refused in one
line (:func:`refuse_own_code`). :func:`load_weights` loads a model and refuses weights that do not fill it
exactly: a missing, unexpected or mismatched tensor would otherwise be left random or dropped in silence.
Cost: two small JSON reads per call; the loading report comes with the load.
"""

from __future__ import annotations

import json
from pathlib import Path

import transformers
from torch import nn
from transformers import CONFIG_MAPPING

from lowrank.models.errors import ModelLoadError

SHOWN = 5  # tensors named in a message


def refuse_own_code(source: str | Path) -> None:
    """:class:`ModelLoadError` (one line) when the folder ``source`` needs code of its own to be loaded.

    That is: its ``config.json`` holds ``auto_map`` and a ``model_type`` that is not a transformers
    architecture, or its ``tokenizer_config.json`` holds ``auto_map`` and a ``tokenizer_class`` transformers
    does not have. Otherwise the built-in classes are used and ``auto_map`` is ignored. Hub ids and files are
    not read (``trust_remote_code=False`` covers them).
    """
    folder = Path(source)
    if not folder.is_dir():
        return
    for name, key, known in (
        ("config.json", "model_type", lambda value: value in CONFIG_MAPPING),
        ("tokenizer_config.json", "tokenizer_class", lambda value: hasattr(transformers, value)),
    ):
        data = _json_object(folder / name)
        value = data.get(key)
        if data.get("auto_map") and not (isinstance(value, str) and known(value)):
            names = data["auto_map"] if isinstance(data["auto_map"], dict) else {}
            listed = ", ".join(f"{k}: {v}" for k, v in list(names.items())[:3])
            raise ModelLoadError(
                f"{folder}: its {name} asks to run code of its own ({listed or 'auto_map'}) for {key} {value!r}, "
                "which transformers does not have; lowrank never runs a model's own code"
            )


def _json_object(path: Path) -> dict:
    """The JSON object in ``path``; empty when it is missing or not an object (transformers reports those)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def from_pretrained(factory, source: str | Path, **kwargs):
    """``factory.from_pretrained(source, trust_remote_code=False, **kwargs)`` after :func:`refuse_own_code`."""
    refuse_own_code(source)
    return factory.from_pretrained(source, trust_remote_code=False, **kwargs)


def from_config(factory, config, **kwargs):
    """``factory.from_config(config, trust_remote_code=False, **kwargs)``: the built-in class of ``config``."""
    return factory.from_config(config, trust_remote_code=False, **kwargs)


def load_weights(factory, source: str | Path, fresh_head: bool = False, **kwargs) -> nn.Module:
    """The model ``factory`` builds from ``source``, every tensor of it read from the checkpoint.

    Missing, unexpected and mismatched (shape) tensors raise :class:`ModelLoadError` naming them, with two
    exceptions that are no silent guess: ``fresh_head`` (an encoder given a new classification head, labelled
    untrained by :func:`lowrank.models.labels.head_untrained`) lets the tensors outside the base model be
    missing; a checkpoint saved from another class (its config's ``architectures``) may hold tensors outside
    the built model's modules, the head that class has and this one drops.
    """
    model, report = from_pretrained(factory, source, output_loading_info=True, ignore_mismatched_sizes=True, **kwargs)
    base = f"{model.base_model_prefix}."
    saved_as = (getattr(model.config, "architectures", None) or [type(model).__name__])[0]
    modules = {child for child, _ in model.named_children()}
    missing = sorted(k for k in report["missing_keys"] if not (fresh_head and not k.startswith(base)))
    unexpected = sorted(
        k for k in report["unexpected_keys"] if saved_as == type(model).__name__ or k.split(".")[0] in modules
    )
    mismatched = sorted(
        f"{k} ({tuple(saved)} in the file, {tuple(built)} in the model)"
        for k, saved, built in report["mismatched_keys"]
    )
    problems = [
        f"{label} {_names(keys)}"
        for label, keys in (
            ("missing (would be random)", missing),
            ("unexpected", unexpected),
            ("of another shape", mismatched),
            ("not loaded", [str(m).splitlines()[0] for m in report["error_msgs"]]),
        )
        if keys
    ]
    if problems:
        raise ModelLoadError(f"its weights do not fit its config: tensors {'; '.join(problems)}")
    return model


def _names(keys: list[str]) -> str:
    return ", ".join(keys[:SHOWN]) + (f" and {len(keys) - SHOWN} more" if len(keys) > SHOWN else "")
