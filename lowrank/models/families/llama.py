"""Llama, Qwen2, Qwen3: grouped-query attention with rotary positions and a SwiGLU MLP.

Per block, hidden width d, h query heads and g key/value heads of width d_h, MLP width m::

    q = self_attn.q_proj(norm(x))                                  # (h d_h, d)
    k, v = self_attn.{k,v}_proj(norm(x))                           # (g d_h, d) each
    h = x + self_attn.o_proj(attention(rope(q), rope(k), v))       # (d, h d_h)
    y = h + mlp.down_proj(silu(mlp.gate_proj(norm(h))) * mlp.up_proj(norm(h)))   # (m, d), (m, d), (d, m)

Seven compressible Linears per block, already ``nn.Linear`` (no layout hook). Run one block at a
time from ``model.embed_tokens``, ``model.layers.{i}``, ``model.norm``, ``lm_head`` and
``model.rotary_emb``; a block's attention type is ``config.layer_types[i]`` when set, else full.
"""

from lowrank.models.decoders import DecoderLayout
from lowrank.models.families.registry import Family, register_family

LINEARS = (
    ("self_attn.q_proj", "q_proj"),
    ("self_attn.k_proj", "k_proj"),
    ("self_attn.v_proj", "v_proj"),
    ("self_attn.o_proj", "o_proj"),
    ("mlp.gate_proj", "gate_proj"),
    ("mlp.up_proj", "up_proj"),
    ("mlp.down_proj", "down_proj"),
)

DECODER = DecoderLayout()

LLAMA = register_family(Family("llama", ("llama", "qwen2", "qwen3"), LINEARS, decoder=DECODER))
