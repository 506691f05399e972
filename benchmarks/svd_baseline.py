"""Plain-SVD baseline: validation accuracy of minilm-rt vs the fraction of parameters kept.

Every compressible Linear keeps the same fraction f of its parameters
(rank = floor(f * out * in / (out + in))); no fine-tuning after factorization.
"""

from __future__ import annotations

import time

from common import parser, write

import lowrank


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--fractions", type=float, nargs="+", default=[1.0, 0.7, 0.5, 0.3])
    args = p.parse_args()
    loaded = lowrank.load_model(args.model, device=args.device)
    rows = []
    for fraction in args.fractions:
        start = time.perf_counter()
        model = lowrank.compress(loaded, fraction, method="svd")
        seconds = time.perf_counter() - start
        result = lowrank.evaluate(model, args.task, limit=args.limit)
        rows.append(
            {
                "kept_fraction": fraction,
                "layers_factorized": len(model.model.lowrank_info.ranks),
                "params_linear": result.params_linear,
                "params_total": result.params_total,
                result.metric: result.value,
                "loss": result.loss,
                "size_mb": result.size_bytes / 2**20,
                "latency_ms_b1": result.latency_ms_b1,
                "latency_ms_b32": result.latency_ms_b32,
                "svd_seconds": seconds,
            }
        )
    write("svd_baseline", args, rows)


if __name__ == "__main__":
    main()
