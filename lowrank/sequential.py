"""Layer-sequential compression of a causal LM: one decoder block in memory at a time.

``compress_sequential(path_or_name, ranks, method, out, task, settings, progress)`` builds the model
without weights (:mod:`lowrank.models.streamed`), then for each decoder block: loads its tensors
from the safetensors checkpoint, collects its layers' statistics (:mod:`lowrank.statistics.blockwise`),
factorizes its layers with :func:`lowrank.compress`, writes the compressed block as one shard of
the output and frees it. Peak memory: one block and its factorization workspace, the calibration
hidden states, and the embedding, final norm and head; never the model.

Statistics, by what the method needs:

* nothing (``svd``): the blocks are only loaded, factorized and written;
* ``activations`` (``asvd``, ``svd_llm``): the forward sweep; block ``i``'s inputs are the outputs
  of the blocks already compressed (``inputs="compressed"``, the default, as SVD-LLM and GPTQ do),
  or of the dense blocks (``inputs="dense"``: the in-memory statistics exactly);
* ``fisher`` / ``gradients`` (``fwsvd``, ``tfwsvd``, ``kfac_svd``): the gradient sweep, a streaming
  forward/backward pass of the dense model (hidden states at block boundaries kept on disk, inside
  the output's temporary folder): the same Fisher and gradient moments as the in-memory pass;
* ``mask`` (``sparsity_aware``): refused (it needs a pruned model in memory).

Output: the folder of :func:`lowrank.save_compressed` (config, tokenizer, ``lowrank.json``) with
the weights as safetensors shards (the resident modules, then one shard per block) and
``model.safetensors.index.json``; :func:`lowrank.load_compressed` reads it. It is written
atomically (:func:`lowrank.io.atomic_dir`): an interrupted run leaves no folder at ``out``.

:func:`sequential_reason` is the one place that decides when ``lowrank compress`` streams on its
own: a causal LM of a known layout whose float32 size is above :data:`AUTO_FRACTION` of the
available RAM.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from huggingface_hub import snapshot_download
from torch import nn
from transformers import AutoTokenizer

from lowrank.compress import CompressionInfo, compress, set_module
from lowrank.data.tasks import hub_reachable, load_task
from lowrank.io import atomic_dir
from lowrank.methods import get_method
from lowrank.models.architectures import decoder_layout, supported_types
from lowrank.models.errors import ModelLoadError
from lowrank.models.loading import (
    available_ram_bytes,
    check_checkpoint_format,
    estimate_parameters,
    load_config,
    model_kind,
)
from lowrank.models.packaged import resolve_source
from lowrank.models.shards import Checkpoint, ShardWriter
from lowrank.models.streamed import StreamedModel
from lowrank.progress import Progress, report
from lowrank.ranks import Ranks, resolve_ranks
from lowrank.statistics.blockwise import (
    INPUTS,
    BlockStep,
    forward_sweep,
    gradient_sweep,
    needs_gradients,
    sample,
    unsupported,
)
from lowrank.statistics.resolve import needs_task
from lowrank.statistics.settings import DEFAULT, StatisticsSettings

AUTO_FRACTION = 0.5  # `lowrank compress` streams a causal LM whose float32 copy needs more than this share of free RAM
WORKDIR = ".hidden-states"  # the gradient sweep's block inputs, inside the output's temporary folder
HUB_FILES = ["*.json", "*.safetensors", "*.model", "*.txt", "*.tiktoken"]


def source_folder(name: str) -> Path:
    """The local folder of a packaged name, a folder, or a hub id (its cached or downloaded snapshot)."""
    source = resolve_source(name)
    if Path(source).is_dir():
        return Path(source)
    try:
        return Path(snapshot_download(source, local_files_only=not hub_reachable(), allow_patterns=HUB_FILES))
    except (OSError, ValueError) as err:
        raise ModelLoadError(
            f"cannot find model {name!r} as a folder or on the hub: {str(err).splitlines()[0]}"
        ) from err


def sequential_reason(name_or_path: str | Path, fraction: float = AUTO_FRACTION) -> str | None:
    """Why ``name_or_path`` should be compressed sequentially (a one-line notice), or None.

    True for a causal LM with a known decoder layout whose float32 size (estimated from the config
    on the meta device) is above ``fraction`` of the available RAM; never for a compressed folder
    or a model whose config cannot be read (the in-memory path reports that)."""
    name = str(name_or_path)
    if (Path(name) / "lowrank.json").exists():
        return None
    try:
        source = resolve_source(name)
        config = load_config(source, name, Path(source).exists() or not hub_reachable())
    except ModelLoadError:
        return None
    if model_kind(config) != "causal-lm" or decoder_layout(config) is None:
        return None
    need, have = 4 * estimate_parameters(config), available_ram_bytes()
    if need <= fraction * have:
        return None
    return (
        f"{name} takes {need / 2**30:.1f} GiB in float32, more than {fraction:.0%} of the {have / 2**30:.1f} GiB "
        "of available RAM: compressing it one decoder block at a time (--sequential)"
    )


def _tokenizer(folder: Path):
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=False, local_files_only=True)
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"cannot load the tokenizer of {folder}: {str(err).splitlines()[0]}") from err
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _compress_block(
    step: BlockStep, prefix: str, plan: dict[str, int], method: str, options: dict, info: CompressionInfo
) -> None:
    """Factorize the planned layers of the loaded block in place, one :func:`lowrank.compress` call per layer
    (a one-layer module, so only that layer is copied), and record their facts under their full names."""
    for name, rank in plan.items():
        if not name.startswith(prefix):
            continue
        local = name[len(prefix) :]
        stats = step.stats.get(name)
        small = compress(
            nn.ModuleDict({"layer": step.block.get_submodule(local)}),
            {"layer": rank},
            method,
            stats={"layer": stats} if stats else None,
            base_model=info.base_model,
            **options,
        )
        set_module(step.block, local, small["layer"])
        facts = small.lowrank_info
        info.options = facts.options
        info.seconds[name] = facts.seconds["layer"]
        info.details[name] = facts.details["layer"]
        if "layer" in facts.history:
            info.history[name] = facts.history["layer"]


def compress_sequential(
    path_or_name: str | Path,
    ranks: Ranks,
    method: str = "svd",
    out: str | Path | None = None,
    task=None,
    settings: StatisticsSettings = DEFAULT,
    progress: Progress | None = None,
    inputs: str = "compressed",
    device: str | torch.device = "cpu",
    **options,
) -> Path:
    """Compress a causal LM block by block into the folder ``out``; returns ``out`` (see the module docstring).

    ``ranks``, ``method`` and ``options`` as in :func:`lowrank.compress`; ``task`` and ``settings``:
    the calibration sample of :func:`lowrank.statistics_for` (needed by methods with statistics);
    ``inputs``: ``"compressed"`` or ``"dense"`` block inputs for activation statistics (gradient
    statistics always come from the dense model). Everything is checked before the first block.
    """
    if out is None:
        raise ValueError("compress_sequential writes the compressed model to a folder: pass out=")
    spec = get_method(method)
    spec.check_options(options)
    missing = unsupported(spec.needs)
    if missing:
        raise ValueError(
            f"sequential mode cannot compute {', '.join(missing)} statistics (method {method!r}); "
            "compress this model in memory"
        )
    if inputs not in INPUTS:
        raise ValueError(f"inputs must be one of {', '.join(INPUTS)}, got {inputs!r}")
    name = str(path_or_name)
    folder = source_folder(name)
    check_checkpoint_format(str(folder), allow_pickle=False)
    config = load_config(str(folder), name, True)
    layout = decoder_layout(config)
    if model_kind(config) != "causal-lm" or layout is None:
        raise ModelLoadError(
            f"sequential mode compresses causal LMs of type {', '.join(supported_types())}; "
            f"{name} is a {model_kind(config)} of type {config.model_type!r}"
        )
    checkpoint = Checkpoint(folder)
    tokenizer = _tokenizer(folder)
    config.pad_token_id = tokenizer.pad_token_id  # as load_model sets it
    stream = StreamedModel(config, checkpoint, layout, device)
    plan = resolve_ranks(stream.model, ranks)
    gradients = needs_gradients(spec.needs)
    batches: list[dict] = []
    if needs_task(spec.needs):
        if task is None:
            raise ValueError(f"method {method!r} needs statistics from calibration data: pass a task")
        task = load_task(task)
        if gradients and task.kind != "lm":
            raise ValueError(
                f"the gradients of a causal LM need a language-modelling task (e.g. lee); {task.name!r} "
                f"is a {task.kind} task"
            )
        batches = sample(task, tokenizer, settings)
    stream.load_resident()
    info = CompressionInfo(base_model=name, kind="causal-lm", method=method, ranks=plan)
    out = Path(out)
    with atomic_dir(out) as tmp:
        writer = ShardWriter(tmp, stream.num_blocks + 1)
        writer.write(0, stream.resident_state())
        layers = list(plan)
        sweep = (
            gradient_sweep(stream, batches, layers, spec.needs, tmp / WORKDIR)
            if gradients
            else forward_sweep(stream, batches, layers, spec.needs, inputs)
        )
        for done, step in enumerate(sweep):
            report(progress, done, stream.num_blocks, f"{method}: block {step.index}")
            _compress_block(step, layout.block_name(step.index) + ".", plan, method, options, info)
            writer.write(step.index + 1, stream.block_state(step.index))
        report(progress, stream.num_blocks, stream.num_blocks, f"{method}: done")
        writer.finish()
        stream.model.config.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        statistics = (
            "gradient sweep (dense model)" if gradients else (f"forward sweep ({inputs} inputs)" if batches else "none")
        )
        meta = info.to_json() | {
            "sequential": {
                "statistics": statistics,
                "examples": sum(len(b["input_ids"]) for b in batches),
                "blocks": stream.num_blocks,
            }
        }
        (tmp / "lowrank.json").write_text(json.dumps(meta, indent=2))
    return out
