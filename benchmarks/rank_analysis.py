"""Rank analysis (LPAF's key observation): are pruned weights low rank?

For the dense fine-tuned model (--model, minilm-rt) and for models fine-tuned *with*
pruning (movement pruning with raw or Adam-normalized score updates, first-order Taylor
pruning, and magnitude pruning as the baseline) at several sparsities,
every compressible matrix's numerical rank (relative tolerance --tol), effective rank and
90/95/99%-energy ranks are measured (``lowrank.training.lpaf.rank_analysis``) and averaged over
the model, absolute and relative to min(out, in). Validation accuracy of each model is
reported too.

Pruning runs start from --start (default: the pre-trained ``minilm`` with a fresh head)
and use minilm-rt's own recipe (AdamW lr 8e-5, batch 32, max length 64, --epochs 2), so
the only difference from the dense fine-tuned model is the pruning: global threshold
(--scope), cubic schedule with 10% warm-up and 10% cool-down. On an H100 each 2-epoch
pruning run takes 20-50 s; on 2 CPU cores the nine runs take well over an hour, so the
reported results were computed on the GPU (docs/results/lpaf.md: movement pruning collapsed to
the majority class in every setting tried). A CPU run with ``--start minilm-rt --methods taylor
magnitude --sparsities 0.7 --epochs 1`` (results/rank_analysis_taylor_cpu.json) shows Taylor
pruning lowering the average ranks while magnitude pruning does not.

Writes benchmarks/results/rank_analysis.json and, where plotly is installed, the figure
benchmarks/results/rank_analysis.html (plotly is imported only for that; --replot redraws
the figure from an existing JSON file, e.g. one computed on a machine without plotly).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from common import RESULTS, parser, write

# run name -> (pruning method, movement score update); see lowrank.training.prune
PRUNERS = {
    "movement": ("movement", "raw"),
    "movement-adam": ("movement", "adam"),
    "taylor": ("taylor", "raw"),
    "magnitude": ("magnitude", "raw"),
}
FIGURE_METRICS = (
    ("rel_rank90", "90% energy rank / min(out, in)"),
    ("rel_rank99", "99% energy rank / min(out, in)"),
    ("rel_effective_rank", "effective rank / min(out, in)"),
    ("rel_numerical_rank", "numerical rank / min(out, in)"),
)


def figure(payload: dict, path: Path) -> Path:
    """Average relative ranks vs sparsity, one line per pruning method, dense as a dashed line."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    rows = payload["rows"]
    dense = next(r for r in rows if r["method"] == "dense")
    fig = make_subplots(rows=1, cols=len(FIGURE_METRICS), subplot_titles=[t for _, t in FIGURE_METRICS])
    colors = {"movement": "#d62728", "movement-adam": "#ff7f0e", "taylor": "#2ca02c", "magnitude": "#1f77b4"}
    for col, (metric, _) in enumerate(FIGURE_METRICS, start=1):
        for method, color in colors.items():
            runs = sorted((r for r in rows if r["method"] == method), key=lambda r: r["target_sparsity"])
            if not runs:
                continue
            fig.add_trace(
                go.Scatter(
                    x=[r["target_sparsity"] for r in runs],
                    y=[r[metric] for r in runs],
                    mode="lines+markers",
                    name=method,
                    legendgroup=method,
                    showlegend=col == 1,
                    line=dict(color=color),
                ),
                row=1,
                col=col,
            )
        fig.add_hline(
            y=dense[metric],
            line_dash="dash",
            line_color="gray",
            row=1,
            col=col,
            annotation_text="dense" if col == 1 else None,
        )
        fig.update_xaxes(title_text="sparsity", row=1, col=col)
        fig.update_yaxes(range=[0, 1.05], row=1, col=col)
    model = payload["args"]["model"]
    fig.update_layout(
        title=f"Average relative rank: fine-tuned with pruning (from {payload['args'].get('start', model)}) vs dense {model}",
        height=420,
        width=1500,
    )
    fig.write_html(str(path), include_plotlyjs="cdn")
    print(f"wrote {path}")
    return path


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--sparsities", type=float, nargs="+", default=[0.5, 0.7, 0.9])
    p.add_argument("--methods", nargs="+", choices=list(PRUNERS), default=list(PRUNERS))
    p.add_argument("--start", default="minilm", help="model the pruning runs fine-tune (default: pre-trained minilm)")
    p.add_argument("--epochs", type=float, default=2.0, help="epochs of fine-tuning with pruning per run (default 2)")
    p.add_argument("--max-steps", type=int, help="cap on pruning steps per run (smoke runs)")
    p.add_argument("--lr", type=float, default=8e-5)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--scope", choices=["global", "layer"], default="global")
    p.add_argument("--tol", type=float, default=1e-3, help="relative tolerance of the numerical rank")
    p.add_argument("--figure", help="HTML figure path (default benchmarks/results/rank_analysis.html)")
    p.add_argument("--replot", metavar="JSON", help="only redraw the figure from this results file")
    args = p.parse_args()
    figure_path = Path(args.figure) if args.figure else RESULTS / "rank_analysis.html"
    if args.replot:
        figure(json.loads(Path(args.replot).read_text()), figure_path)
        return

    import lowrank
    from lowrank.training.finetune import TrainConfig
    from lowrank.training.lpaf import average_ranks, rank_analysis
    from lowrank.training.prune import prune

    config = TrainConfig(
        epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, max_length=args.max_length, max_steps=args.max_steps
    )
    dense = lowrank.load_model(args.model, task=args.task, device=args.device)
    accuracy = lowrank.evaluate(dense, args.task, limit=args.limit, latency=False).value
    frame = rank_analysis(dense, tol=args.tol)
    rows = [{"method": "dense", "target_sparsity": 0.0, "accuracy": accuracy, **average_ranks(frame), "seconds": 0.0}]
    by_type = {"dense": frame.groupby("type")[["rel_rank90", "rel_effective_rank"]].mean().to_dict()}
    print(rows[-1], flush=True)
    for sparsity in args.sparsities:
        for method in args.methods:
            loaded = lowrank.load_model(args.start, task=args.task, device=args.device)
            start = time.perf_counter()
            kind, update = PRUNERS[method]
            result = prune(loaded, args.task, kind, sparsity, args.scope, config, score_update=update)
            seconds = time.perf_counter() - start
            accuracy = lowrank.evaluate(loaded, args.task, limit=args.limit, latency=False).value
            frame = rank_analysis(loaded, tol=args.tol)
            rows.append(
                {
                    "method": method,
                    "target_sparsity": sparsity,
                    "accuracy": accuracy,
                    **average_ranks(frame),
                    "seconds": seconds,
                    "final_loss": result.record()["final_loss"],
                }
            )
            by_type[f"{method}@{sparsity}"] = (
                frame.groupby("type")[["rel_rank90", "rel_effective_rank"]].mean().to_dict()
            )
            print(rows[-1], flush=True)
    path = write("rank_analysis", args, rows, {"by_type": by_type, "prune_config": vars(config)})
    try:
        import plotly  # noqa: F401
    except ImportError:
        print(f"plotly is not installed: no figure; redraw it elsewhere with --replot {path}")
        return
    figure(json.loads(path.read_text()), figure_path)


if __name__ == "__main__":
    main()
