"""Mistral: the Llama block (:mod:`.llama`) with sliding-window attention.

The projections and their shapes are Llama's (q/k/v/o, gate/up/down: seven ``nn.Linear`` per
block, no layout hook). The attention differs: with ``config.sliding_window = w`` set, and no
``layer_types`` in the config, every block's query at position t attends to keys t - w < s <= t::

    mask[t, s] = s <= t and t - s < w        # (T, T), the same for every block

so the block-at-a-time run builds the sliding-window causal mask for all blocks, as
``MistralModel.forward`` does; with ``sliding_window = None`` it is the plain causal mask.
"""

from lowrank.models.decoders import DecoderLayout
from lowrank.models.families.llama import LINEARS
from lowrank.models.families.registry import Family, register_family

MISTRAL = register_family(Family("mistral", ("mistral",), LINEARS, decoder=DecoderLayout(sliding_from_config=True)))
