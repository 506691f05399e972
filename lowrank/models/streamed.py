"""A causal LM whose weights live on disk and are loaded one decoder block at a time.

The architecture is built from its config without weights (accelerate's ``init_empty_weights``: parameters on
the meta device, buffers such as the rotary frequencies real). The embedding, final norm and LM head are loaded
once; each block is loaded from the safetensors checkpoint when asked (its tensors only, memory-mapped, cast to
``dtype``) and sent back to the meta device when released, after which the C heap's free pages go back to the
system (glibc ``malloc_trim``). A tied LM head shares the embedding matrix. Memory: one block plus the
resident modules. Details: docs/methods.md#scale-layer-sequential-compression-and-data-parallel-statistics.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from pathlib import Path

import torch
from accelerate import init_empty_weights
from torch import nn
from transformers import AutoModelForCausalLM, PretrainedConfig

from lowrank.models.architectures import block_layout, supported_types
from lowrank.models.decoders import BlockContext, DecoderLayout
from lowrank.models.encoders import EncoderLayout
from lowrank.models.errors import ModelLoadError
from lowrank.models.loading import check_checkpoint_format, load_config, model_kind
from lowrank.models.pretrained import from_config
from lowrank.models.shards import Checkpoint

_LIBC = ctypes.CDLL(ctypes.util.find_library("c") or None)


def return_free_memory() -> None:
    """Give the C heap's free pages back to the system (glibc ``malloc_trim``; nothing elsewhere)."""
    trim = getattr(_LIBC, "malloc_trim", None)
    if trim is not None:
        trim(0)


def empty_model(config) -> nn.Module:
    """The causal LM of ``config`` with every parameter on the meta device (no memory), in eval mode."""
    with init_empty_weights():
        model = from_config(AutoModelForCausalLM, config)
    model.requires_grad_(False)
    return model.eval()


def stream_layout(config) -> DecoderLayout | None:
    """The decoder layout through which the model of ``config`` can be loaded one block at a time from disk: a causal
    LM's (:func:`~lowrank.models.architectures.block_layout`); None for any other model."""
    kind = model_kind(config)
    return block_layout(kind, config) if kind == "causal-lm" else None


def open_checkpoint(folder: Path, name: str, purpose: str) -> tuple[PretrainedConfig, DecoderLayout, Checkpoint]:
    """The config, decoder layout and safetensors checkpoint of the causal LM saved in ``folder``, checked before
    anything is built; :class:`ModelLoadError` (``"{purpose} causal LMs of type ..."``) for a pickle checkpoint
    or a model that does not stream (:func:`stream_layout`)."""
    check_checkpoint_format(str(folder), allow_pickle=False)
    config = load_config(str(folder), name, True)
    layout = stream_layout(config)
    if layout is None:
        raise ModelLoadError(
            f"{purpose} causal LMs of type {', '.join(supported_types())}; "
            f"{name} is a {model_kind(config)} of type {config.model_type!r}"
        )
    return config, layout, Checkpoint(folder)


class Blocks:
    """A model run one block at a time through its layout (a causal LM's :class:`DecoderLayout`, a classifier's
    :class:`~lowrank.models.encoders.EncoderLayout`), all blocks in memory:
    what the block sweeps (:mod:`lowrank.statistics.blockwise`) drive; :class:`StreamedModel` loads each block
    from disk instead. Loading and releasing a block do nothing here."""

    def __init__(self, model: nn.Module, layout: DecoderLayout | EncoderLayout, device: str | torch.device = "cpu"):
        self.model, self.layout, self.device = model, layout, torch.device(device)
        self.num_blocks = layout.num_blocks(model)

    def load_block(self, index: int) -> nn.Module:
        return self.block(index)

    def release_block(self, index: int) -> None:
        """Nothing to free: the block stays in memory."""

    def block(self, index: int) -> nn.Module:
        return self.model.get_submodule(self.layout.block_name(index))

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.layout.embed_tokens(self.model, input_ids.to(self.device))

    def context(self, hidden: torch.Tensor, attention_mask) -> BlockContext | torch.Tensor | None:
        mask = None if attention_mask is None else attention_mask.to(self.device)
        return self.layout.context(self.model, hidden, mask)

    def run_block(self, index: int, hidden: torch.Tensor, context) -> torch.Tensor:
        return self.layout.run_block(self.model, index, hidden, context)

    def loss(self, hidden: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.layout.loss(self.model, hidden, labels.to(self.device))

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.layout.logits(self.model, hidden)


class StreamedModel(Blocks):
    """``model`` (a meta skeleton) filled from ``checkpoint`` one module at a time; see the module docstring."""

    def __init__(
        self,
        config,
        checkpoint: Checkpoint,
        layout: DecoderLayout,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
    ):
        super().__init__(empty_model(config), layout, device)
        self.checkpoint, self.dtype = checkpoint, dtype
        self.model.get_submodule(layout.rotary).to(self.device)

    @property
    def tied_head(self) -> bool:
        return bool(getattr(self.model.config, "tie_word_embeddings", False))

    def _load(self, name: str, skip: tuple[str, ...] = ()) -> nn.Module:
        module = self.model.get_submodule(name)
        tensors = self.checkpoint.read(f"{name}.", self.dtype, self.device)
        shapes = module.state_dict()
        expected = [k for k in shapes if k not in skip]
        missing = [k for k in expected if k not in tensors]
        if missing:
            raise ModelLoadError(f"{self.checkpoint.folder}: the checkpoint has no tensor {name}.{missing[0]}")
        for key in expected:
            if tensors[key].shape != shapes[key].shape:
                raise ModelLoadError(
                    f"{self.checkpoint.folder}: tensor {name}.{key} has shape {tuple(tensors[key].shape)} in the checkpoint, "
                    f"{tuple(shapes[key].shape)} in the model"
                )
        module.load_state_dict({k: tensors[k] for k in expected}, strict=False, assign=True)
        return module.requires_grad_(False)

    def load_resident(self) -> None:
        """Load the embedding, final norm and LM head (tied to the embedding when the config says so; a tied matrix
        stored once under the head's name, as ``lowrank.save_compressed`` may store it, is read from there)."""
        self._load(self.layout.norm)
        if self.tied_head and f"{self.layout.embed}.weight" not in self.checkpoint:
            head = self._load(self.layout.head)
            self.model.get_submodule(self.layout.embed).weight = head.weight
            self._load(self.layout.embed, skip=("weight",))
        elif self.tied_head:
            embed = self._load(self.layout.embed)
            self.model.get_submodule(self.layout.head).weight = embed.weight
            self._load(self.layout.head, skip=("weight",))
        else:
            self._load(self.layout.embed)
            self._load(self.layout.head)
        blocks = f"{self.layout.blocks}."
        left = [n for n, p in self.model.named_parameters() if p.is_meta and not n.startswith(blocks)]
        if left:
            raise ModelLoadError(f"{self.model.config.model_type}: parameter {left[0]} is outside the known layout")

    def resident_state(self) -> dict[str, torch.Tensor]:
        """The resident modules' tensors under their full names (a tied head is stored once, as the embedding)."""
        state = {}
        for name in self.layout.resident:
            for key, tensor in self.model.get_submodule(name).state_dict().items():
                if not (self.tied_head and name == self.layout.head and key == "weight"):
                    state[f"{name}.{key}"] = tensor
        return state

    def load_block(self, index: int) -> nn.Module:
        return self._load(self.layout.block_name(index))

    def release_block(self, index: int) -> None:
        """Free block ``index``'s memory (its parameters go back to the meta device)."""
        self.model.get_submodule(self.layout.block_name(index)).to("meta")
        return_free_memory()

    def block_state(self, index: int) -> dict[str, torch.Tensor]:
        prefix = self.layout.block_name(index)
        return {f"{prefix}.{k}": v for k, v in self.block(index).state_dict().items()}
