"""SmolLM3: the Llama block (:mod:`.llama`), with rotary positions left out on some blocks.

The projections and their shapes are Llama's (q/k/v/o, gate/up/down: seven ``nn.Linear`` per
block, no layout hook), so compression in memory treats it as Llama. Block i applies rotary
positions only where ``config.no_rope_layers[i]`` is 1::

    q, k = rope(q), rope(k)   if no_rope_layers[i]   else   q, k      # (B, heads, T, d_h)

No decoder layout is declared: layer-sequential mode does not take SmolLM3 (it is compressed in
memory).
"""

from lowrank.models.families.llama import LINEARS
from lowrank.models.families.registry import Family, register_family

SMOLLM3 = register_family(Family("smollm3", ("smollm3",), LINEARS))
