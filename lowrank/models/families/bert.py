"""BERT-style encoders (BERT, RoBERTa, XLM-RoBERTa, ELECTRA, CamemBERT): attention and a GELU MLP.

Per block, hidden width d and intermediate width m, every projection an ``nn.Linear`` (out, in)::

    q, k, v = attention.self.{query,key,value}(x)                           # (d, d) each
    h = norm(x + attention.output.dense(softmax(q k^T / sqrt(d_head)) v))   # (d, d)
    y = norm(h + output.dense(gelu(intermediate.dense(h))))                 # (m, d), then (d, m)

Six compressible Linears per block, 4 d^2 + 2 d m weights; embeddings, pooler and classifier stay
dense. ``output.dense`` also ends ``attention.output.dense``, so the attention row comes first.
No layout hook; no decoder layout; a sequence classifier runs one block at a time from ``<base>.embeddings``,
``<base>.encoder.layer.{i}``, ``<base>.pooler`` (when the model has one) and ``classifier``.
"""

from lowrank.models.encoders import EncoderLayout
from lowrank.models.families.registry import Family, register_family

BERT = register_family(
    Family(
        "bert",
        ("bert", "roberta", "xlm-roberta", "electra", "camembert"),
        (
            ("attention.self.query", "query"),
            ("attention.self.key", "key"),
            ("attention.self.value", "value"),
            ("attention.output.dense", "attn_out"),
            ("intermediate.dense", "ffn_up"),
            ("output.dense", "ffn_down"),
        ),
        encoder=EncoderLayout(),
    )
)
