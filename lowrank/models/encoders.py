"""How to run a BERT-style sequence classifier one encoder block at a time: the layout an encoder family declares.

An :class:`EncoderLayout` names the base model (``base``: ``bert``, ``roberta``, ``electra``...: the
``base_model_prefix`` of the family's ``*ForSequenceClassification``), its embeddings, blocks and pooler, and the
classification head, and calls each block as the model's own ``forward`` does in eval mode (transformers 5.x)::

    h_0 = embeddings(input_ids)                         # word + position + token type 0, LayerNorm: (batch, T, d)
    mask = bidirectional_mask(attention_mask)           # padding only, no causal part
    h_{i+1} = block_i(h_i, mask)                        # base.encoder.layer.{i}
    logits = classifier(pooler(h_L))                    # BERT: pooler tanh(W h_L[:, 0] + b)
    logits = classifier(h_L)                            # a family without a pooler (RoBERTa, ELECTRA heads)

so running the blocks one after the other is the classifier's forward (dropout is off: eval mode). Single-segment
inputs only: the token types are the model's default zeros.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers.masking_utils import create_bidirectional_mask


@dataclass(frozen=True)
class EncoderLayout:
    base: str = "bert"
    embed: str = "embeddings"
    blocks: str = "encoder.layer"
    pooler: str = "pooler"
    head: str = "classifier"

    def num_blocks(self, model: nn.Module) -> int:
        return len(model.get_submodule(f"{self.base}.{self.blocks}"))

    def block_name(self, index: int) -> str:
        return f"{self.base}.{self.blocks}.{index}"

    def embed_tokens(self, model: nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
        return model.get_submodule(f"{self.base}.{self.embed}")(input_ids=input_ids)

    def context(
        self, model: nn.Module, hidden: torch.Tensor, attention_mask: torch.Tensor | None
    ) -> torch.Tensor | None:
        """The attention mask every block of a batch takes: padding of ``attention_mask`` (batch, T) as the model
        builds it from embeddings ``hidden`` (batch, T, d); None when nothing is masked."""
        return create_bidirectional_mask(config=model.config, inputs_embeds=hidden, attention_mask=attention_mask)

    def run_block(
        self, model: nn.Module, index: int, hidden: torch.Tensor, context: torch.Tensor | None
    ) -> torch.Tensor:
        out = model.get_submodule(self.block_name(index))(hidden, context)
        return out[0] if isinstance(out, tuple) else out

    def logits(self, model: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        """Class logits (batch, classes) from the last block's output ``hidden`` (batch, T, d)."""
        pooler = getattr(model.get_submodule(self.base), self.pooler, None)
        return model.get_submodule(self.head)(hidden if pooler is None else pooler(hidden))

    def loss(self, model: nn.Module, hidden: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The classifier's own loss (cross-entropy of the labels, mean over the batch) from the last block's output."""
        return model.loss_function(labels=labels, pooled_logits=self.logits(model, hidden), config=model.config)
