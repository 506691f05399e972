"""Speed of factorized models against dense, measured side by side: tokens/s, memory, the FLOP bound.

For each model and kept fraction the model is factorized with plain SVD (a real factorization; speed does not
depend on the weights' values) in four variants:

* ``unaligned``: ranks ``floor(f out in / (out + in))`` (``align=1``), two products per layer;
* ``aligned``: the same rounded down to multiples of ``--align`` (:mod:`lowrank.alignment`);
* ``fast-decode`` / ``fast-prefill``: aligned, then each layer shape in its fastest form
  (:func:`lowrank.speed.optimize_speed`: factorized, compiled or merged to dense) timed at batch 1 x 1 token
  (generation) or batch 8 x ``--length`` tokens (prompts). Encoders get ``fast-prefill`` only.

Each row is :func:`lowrank.evaluation.throughput.compare_throughput`: dense and the variant alternately, figure by figure,
prefill tokens/s at batch 1 and 8 x ``--length`` tokens, decode tokens/s (greedy ``generate`` with the KV cache,
``--new-tokens`` per sequence) at batch 1 and 8 for causal LMs, peak RSS, FLOPs per token and the FLOP bound.
A first section times ranks around each layer shape's budget share to measure which multiple pays (``align``).

The JSON (``benchmarks/results/speed.json``) is written after every row; a rerun with the same settings skips the
rows it holds (resumable). ``--quick``: one kept fraction per model, short budgets (a smoke run, minutes).
``docs/results/speed.md`` is rendered from the JSON (``--markdown``, default on).

    python benchmarks/speed.py                 # the full table, 2 CPU threads, alone on the machine
    python benchmarks/speed.py --quick --out /tmp/speed_quick.json --markdown-out /tmp/speed_quick.md
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from common import RESULTS, environment

import lowrank
from lowrank.alignment import DEFAULT_ALIGN
from lowrank.evaluation.size import parameter_counts
from lowrank.evaluation.throughput import ThroughputSettings, compare_throughput, figures
from lowrank.evaluation.timing import median_time
from lowrank.progress import TqdmProgress
from lowrank.ranks import linear_shapes
from lowrank.speed import SpeedSettings, optimize_speed
from lowrank.threads import set_threads

ROOT = Path(__file__).resolve().parents[1]
KEEPS = {"smollm2-135m": (0.8, 0.6, 0.4), "minilm-rt": (0.7, 0.5, 0.3)}
QUICK_KEEPS = {"smollm2-135m": (0.6,), "minilm-rt": (0.5,)}
MULTIPLES = (1, 8, 16, 32, 64)


def arguments() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=list(KEEPS), help="packaged names or folders")
    p.add_argument("--keeps", nargs="+", type=float, help="kept fractions (default: per model, see KEEPS)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2: this machine's cores)")
    p.add_argument("--align", type=int, default=DEFAULT_ALIGN)
    p.add_argument("--length", type=int, default=256, help="prefill tokens per sequence")
    p.add_argument("--new-tokens", type=int, default=32, help="decode: generated tokens per sequence")
    p.add_argument("--prompt", type=int, default=32, help="decode: prompt tokens per sequence")
    p.add_argument("--budget", type=float, default=6.0, help="seconds per throughput figure and model")
    p.add_argument("--quick", action="store_true", help="one kept fraction per model, short budgets")
    p.add_argument("--variants", nargs="+", help="only these variants (unaligned aligned fast-decode fast-prefill)")
    p.add_argument("--skip-align", action="store_true", help="skip the section timing ranks by multiple")
    p.add_argument("--out", help="JSON path (default benchmarks/results/speed.json)")
    p.add_argument("--markdown-out", help="Markdown path (default docs/results/speed.md)")
    args = p.parse_args()
    if args.quick:
        args.budget, args.new_tokens = min(args.budget, 1.5), min(args.new_tokens, 16)
    return args


def align_section(loaded, device, quick: bool, progress) -> list[dict]:
    """Per distinct layer shape: seconds per rank of the two products at ranks around the 50% share, averaged over
    the ranks that are multiples of each of :data:`MULTIPLES`, at 1 token (decode) and 8 x 256 tokens (prefill);
    ``vs_unaligned`` < 1 means that multiple's ranks cost less per rank than ranks in general."""
    rows = []
    shapes = sorted(set(linear_shapes(loaded).values()))
    span = 32 if quick else 128
    for step, (out_f, in_f) in enumerate(shapes):
        progress(step, len(shapes), f"align: {out_f}x{in_f}")
        centre = int(0.5 * out_f * in_f / (out_f + in_f)) // 64 * 64 + 64
        ranks = list(range(max(1, centre - span // 2), centre + span // 2))
        for tokens in (1, 8 * 256):
            x = torch.randn(tokens, in_f, device=device)
            per_rank = {}
            for r in ranks:
                V, U = torch.randn(r, in_f, device=device), torch.randn(out_f, r, device=device)
                budget = 0.05 if tokens == 1 else 0.25
                with torch.inference_mode():
                    t = median_time(lambda x=x, V=V, U=U: F.linear(F.linear(x, V), U), device, 50, budget).seconds
                per_rank[r] = t / r
            base = statistics.mean(per_rank.values())
            for m in MULTIPLES:
                chosen = [per_rank[r] for r in ranks if r % m == 0]
                rows.append(
                    {
                        "shape": f"{out_f}x{in_f}",
                        "tokens": tokens,
                        "multiple": m,
                        "ranks": len(chosen),
                        "us_per_rank": 1e6 * statistics.mean(chosen),
                        "vs_unaligned": statistics.mean(chosen) / base,
                    }
                )
    progress(len(shapes), len(shapes), "align: done")
    return rows


def variants(loaded, keep: float, args, device) -> list[tuple[str, object]]:
    """``(name, factory)`` of the row variants; each factory returns the compressed LoadedModel."""
    causal = loaded.kind == "causal-lm"
    aligned = {}

    def base():
        if "model" not in aligned:
            aligned["model"] = lowrank.compress(loaded, keep, "svd", align=args.align, progress=TqdmProgress())
        return aligned["model"]

    def fast(batch: int, length: int):
        def make():
            model = base().with_model(copy.deepcopy(base().model))
            optimize_speed(model, SpeedSettings(batch, length, str(device)), progress=TqdmProgress())
            return model

        return make

    rows = [
        ("unaligned", lambda: lowrank.compress(loaded, keep, "svd", align=1, progress=TqdmProgress())),
        ("aligned", base),
    ]
    if causal:
        rows.append(("fast-decode", fast(1, 1)))
    rows.append(("fast-prefill", fast(8, args.length)))
    return rows


def row_of(model_name: str, keep: float, variant: str, small, result: dict) -> dict:
    info = small.model.lowrank_info
    forms = [e["form"] for e in (info.speed.get("layers") or {}).values()]
    row = {
        "model": model_name,
        "keep": keep,
        "variant": variant,
        "ranks_gcd": math.gcd(*info.ranks.values()) if info.ranks else None,
        "forms": {f: forms.count(f) for f in sorted(set(forms))},
        "params_linear": parameter_counts(small.model)[1],
        "peak_rss_mb": result["peak_bytes"] / 2**20,
        "dense_peak_rss_mb": result["dense"]["peak_bytes"] / 2**20,
        "working_mb": result["peak_above_start_bytes"] / 2**20,
        "dense_working_mb": result["dense"]["peak_above_start_bytes"] / 2**20,
        "conditions": result["how"]["conditions"],
    }
    for key in figures(result):
        row[f"{key}_tps"] = result[key]
        row[f"{key}_dense_tps"] = result["dense"][key]
        row[f"{key}_ratio"] = result["ratio"][key]
        row[f"{key}_bound"] = result["bound"][key]
        row[f"{key}_of_bound"] = result["of_bound"][key]
    return row


def load_previous(path: Path, settings: dict) -> dict:
    if not path.exists():
        return {}
    data = json.loads(path.read_text())
    return data if data.get("settings") == settings else {}


def save(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=str))
    tmp.replace(path)


def main() -> None:
    args = arguments()
    set_threads(args.threads)
    device = torch.device(args.device)
    settings = {
        "length": args.length,
        "prompt": args.prompt,
        "new_tokens": args.new_tokens,
        "budget_s": args.budget,
        "align": args.align,
        "threads": args.threads,
        "device": args.device,
        "quick": args.quick,
    }
    path = Path(args.out) if args.out else RESULTS / "speed.json"
    payload = load_previous(path, settings) or {"benchmark": "speed", "settings": settings, "rows": [], "align": {}}
    payload["environment"] = environment(args.device)
    done = {(r["model"], r["keep"], r["variant"]) for r in payload["rows"]}
    throughput = ThroughputSettings(
        batches=(1, 8), length=args.length, prompt=args.prompt, new_tokens=args.new_tokens, budget_s=args.budget
    )
    bar = TqdmProgress()
    for name in args.models:
        loaded = lowrank.load_model(name, device=args.device)
        label = Path(name).name if Path(name).exists() else name
        if not args.skip_align and label not in payload["align"]:
            payload["align"][label] = align_section(loaded, device, args.quick, bar)
            save(path, payload)
        keeps = args.keeps or (QUICK_KEEPS if args.quick else KEEPS).get(label, (0.5,))
        for keep in keeps:
            for variant, make in variants(loaded, keep, args, device):
                if (label, keep, variant) in done or (args.variants and variant not in args.variants):
                    continue
                start = time.perf_counter()
                small = make()
                result = compare_throughput(small, loaded, throughput, progress=bar)
                row = row_of(label, keep, variant, small, result)
                row["seconds"] = time.perf_counter() - start
                payload["rows"].append(row)
                save(path, payload)  # resumable: every finished row is on disk
                print(summary_line(row), flush=True)
    markdown = Path(args.markdown_out) if args.markdown_out else ROOT / "docs" / "results" / "speed.md"
    markdown.write_text(render(payload, path))
    print(f"wrote {path} and {markdown}")


def summary_line(row: dict) -> str:
    ratios = ", ".join(f"{k.removesuffix('_ratio')} {v:.2f}x" for k, v in row.items() if k.endswith("_ratio"))
    return f"{row['model']} keep {row['keep']:.0%} {row['variant']}: {ratios}"


def render(payload: dict, json_path: Path) -> str:
    """``docs/results/speed.md`` from the benchmark's JSON."""
    s, env = payload["settings"], payload.get("environment", {})
    lines = [
        "# Speed: factorized models against dense",
        "",
        f"`benchmarks/speed.py`{' --quick' if s['quick'] else ''} -> `{json_path.relative_to(ROOT) if json_path.is_relative_to(ROOT) else json_path}`"
        f" ({env.get('date', '')}, torch {env.get('torch', '')}, {s['device']}, {s['threads']} threads). Plain SVD "
        "factorization; dense and the variant measured alternately in one process, figure by figure (ratios are side by side).",
        "",
        f"* prefill: one forward of `batch x {s['length']}` tokens (causal LMs: logits of the last position, as "
        "generation does), tokens/s = batch x length / median seconds;",
        f"* decode (causal LMs): greedy `generate` with the KV cache, exactly {s['new_tokens']} new tokens after a "
        f"{s['prompt']}-token prompt (min_new_tokens = max_new_tokens); tokens/s over the steps after the first token;",
        "* bound: dense FLOPs per token / the model's, every Linear counted (LM head, tied or not; layers left dense) "
        "plus attention scores at the stated context; `of bound` = measured ratio / bound;",
        "* peak RSS: the process's resident set (both models are loaded), sampled during each model's measurement; "
        "working = peak minus the RSS when that measurement began;",
        f"* each figure: median of up to 5 runs after a warm-up, at most {s['budget_s']:g} s per figure and model.",
        "",
    ]
    rows = payload["rows"]
    if rows:
        header = "| model | kept | variant | forms | decode b1 | decode b8 | prefill b1 | prefill b8 x {} | peak RSS MB (dense) |"
        lines += [header.format(s["length"]), "|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            forms = ", ".join(f"{k} {v}" for k, v in r["forms"].items()) or "factorized"
            lines.append(
                f"| {r['model']} | {r['keep']:.0%} | {r['variant']} | {forms} | {cell(r, 'decode_b1')} | "
                f"{cell(r, 'decode_b8')} | {cell(r, 'prefill_b1')} | {cell(r, 'prefill_b8')} | "
                f"{r['peak_rss_mb']:,.0f} ({r['dense_peak_rss_mb']:,.0f}) |"
            )
        lines += [
            "",
            "Load average during each row (1 minute): "
            + ", ".join(f"{r['model']} {r['keep']:.0%} {r['variant']}: {r['conditions'].get('load')}" for r in rows)
            + ".",
            "",
        ]
        lines += targets(rows)
    for model, align_rows in payload.get("align", {}).items():
        lines += [
            "",
            f"## Which rank multiple pays: {model}",
            "",
            "Seconds per rank of the two products at ranks around each shape's 50% share, over ranks that are "
            "multiples of m, relative to all ranks of the range (< 1: such ranks run faster per rank).",
            "",
        ]
        for tokens in sorted({r["tokens"] for r in align_rows}):
            means = {
                m: statistics.mean(
                    r["vs_unaligned"] for r in align_rows if r["tokens"] == tokens and r["multiple"] == m
                )
                for m in MULTIPLES
            }
            lines.append(
                f"Mean over shapes at {tokens} token(s): " + ", ".join(f"m={m} {v:.3f}" for m, v in means.items()) + "."
            )
        lines += [
            "",
            "| shape | tokens | " + " | ".join(f"m={m}" for m in MULTIPLES) + " |",
            "|---|---|" + "---|" * len(MULTIPLES),
        ]
        keys = sorted({(r["shape"], r["tokens"]) for r in align_rows})
        for shape, tokens in keys:
            cells = {
                r["multiple"]: r["vs_unaligned"] for r in align_rows if (r["shape"], r["tokens"]) == (shape, tokens)
            }
            lines.append(
                f"| {shape} | {tokens} | " + " | ".join(f"{cells.get(m, float('nan')):.3f}" for m in MULTIPLES) + " |"
            )
    return "\n".join(lines) + "\n"


def cell(r: dict, key: str) -> str:
    """One figure of a row: tokens/s, the ratio to dense, the FLOP bound and the fraction of it reached."""
    if f"{key}_ratio" not in r:
        return "-"
    return (
        f"{r[f'{key}_tps']:,.0f} tok/s, **{r[f'{key}_ratio']:.2f}x** "
        f"(bound {r[f'{key}_bound']:.2f}x, {r[f'{key}_of_bound']:.0%})"
    )


def targets(rows: list[dict]) -> list[str]:
    """The issue's targets, checked against the rows (the best variant of each model and kept fraction)."""
    out = ["## Targets (issue 28)", ""]
    smol = [r for r in rows if r["model"] == "smollm2-135m" and r["keep"] == 0.6]
    if smol:
        best_decode = max(smol, key=lambda r: r.get("decode_b1_ratio", 0))
        best_prefill = max(smol, key=lambda r: r.get("prefill_b8_ratio", 0))
        out.append(
            f"* smollm2-135m at 60%: decode b1 {best_decode.get('decode_b1_ratio', float('nan')):.2f}x "
            f"({best_decode['variant']}; target >= 1.25x); prefill b8 {best_prefill.get('prefill_b8_ratio', float('nan')):.2f}x "
            f"({best_prefill['variant']}; target >= 1.35x), {best_prefill.get('prefill_b8_of_bound', float('nan')):.0%} "
            "of the FLOP bound (target >= 80%)."
        )
    slower = [
        f"{r['model']} {r['keep']:.0%} {r['variant']} {k.removesuffix('_ratio')} {v:.2f}x"
        for r in rows
        for k, v in r.items()
        if k.endswith("_ratio") and v < 1.0
    ]
    out.append("* Figures below dense (ratio < 1): " + ("; ".join(slower) if slower else "none") + ".")
    return out


if __name__ == "__main__":
    main()
