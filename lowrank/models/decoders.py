"""How to run a causal LM one decoder block at a time: the layout a causal-LM family declares.

A :class:`DecoderLayout` names the embedding, the blocks, the final norm, the LM head and the rotary embedding,
and calls each block as the model's own ``forward`` does (transformers 5.x)::

    h_{i+1} = block_i(h_i, attention_mask=mask_{type(i)}, position_ids, position_embeddings=rotary(h_0, position_ids))
    logits = head(norm(h_L))

so running the blocks one after the other is the model's forward. A block's attention type comes from
``config.layer_types``, else ``sliding_window`` (Mistral), else full attention.
Protocol: docs/methods.md#scale-layer-sequential-compression-and-data-parallel-statistics.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask

MASKS = {"full_attention": create_causal_mask, "sliding_attention": create_sliding_window_causal_mask}


@dataclass
class BlockContext:
    """What every block of one batch is called with besides its hidden states."""

    position_ids: torch.Tensor
    position_embeddings: tuple[torch.Tensor, torch.Tensor]
    masks: dict[str, torch.Tensor | None]


@dataclass(frozen=True)
class DecoderLayout:
    embed: str = "model.embed_tokens"
    blocks: str = "model.layers"
    norm: str = "model.norm"
    head: str = "lm_head"
    rotary: str = "model.rotary_emb"
    # every block uses sliding-window attention when the config sets ``sliding_window`` (Mistral)
    sliding_from_config: bool = False

    @property
    def resident(self) -> tuple[str, ...]:
        """Modules with weights outside the blocks (kept in memory for the whole run)."""
        return (self.embed, self.norm, self.head)

    def num_blocks(self, model: nn.Module) -> int:
        return len(model.get_submodule(self.blocks))

    def block_name(self, index: int) -> str:
        return f"{self.blocks}.{index}"

    def attention_type(self, config, index: int) -> str:
        types = getattr(config, "layer_types", None)
        if types:
            return types[index]
        if self.sliding_from_config and getattr(config, "sliding_window", None) is not None:
            return "sliding_attention"
        return "full_attention"

    def embed_tokens(self, model: nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
        return model.get_submodule(self.embed)(input_ids)

    def context(self, model: nn.Module, hidden: torch.Tensor, attention_mask: torch.Tensor | None) -> BlockContext:
        """Positions, rotary embeddings and the causal mask of each attention type for a batch whose
        embeddings are ``hidden`` (batch, T, hidden) and padding mask ``attention_mask`` (batch, T) or None."""
        position_ids = torch.arange(hidden.shape[1], device=hidden.device).unsqueeze(0)
        cos_sin = model.get_submodule(self.rotary)(hidden, position_ids=position_ids)
        types = {self.attention_type(model.config, i) for i in range(self.num_blocks(model))}
        masks = {
            kind: MASKS[kind](
                config=model.config,
                inputs_embeds=hidden,
                attention_mask=attention_mask,
                past_key_values=None,
                position_ids=position_ids,
            )
            for kind in types
        }
        return BlockContext(position_ids, cos_sin, masks)

    def run_block(self, model: nn.Module, index: int, hidden: torch.Tensor, context: BlockContext) -> torch.Tensor:
        block = model.get_submodule(self.block_name(index))
        out = block(
            hidden,
            attention_mask=context.masks[self.attention_type(model.config, index)],
            position_ids=context.position_ids,
            position_embeddings=context.position_embeddings,
            past_key_values=None,
            use_cache=False,
        )
        return out[0] if isinstance(out, tuple) else out

    def logits(self, model: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        return model.get_submodule(self.head)(model.get_submodule(self.norm)(hidden))

    def loss(self, model: nn.Module, hidden: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The model's own next-token loss (mean over the batch's predicted tokens) from the last block's output."""
        return model.loss_function(logits=self.logits(model, hidden), labels=labels, vocab_size=model.config.vocab_size)
