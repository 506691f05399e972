"""Helpers shared by the benchmark scripts: argument parsing, tables and JSON output, the multi-task suite."""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import pandas as pd
import torch

from lowrank.cli.args import add_statistics_options
from lowrank.data.tasks import SUITE
from lowrank.models.packaged import build_command, finetuned_model, is_built
from lowrank.statistics import DEFAULT, StatisticsSettings, select, statistics_for
from lowrank.threads import set_threads

# Every method side by side (benchmarks/methods.py, benchmarks/suite.py): fwsvd in both orientations.
METHOD_CONFIGS = [
    ("svd", {}),
    ("fwsvd", {"axis": "in"}),
    ("fwsvd", {"axis": "out"}),
    ("tfwsvd", {}),
    ("asvd", {}),
    ("svd_llm", {}),
    ("kfac_svd", {}),
]

RESULTS = Path(__file__).resolve().parent / "results"


def parser(description: str) -> argparse.ArgumentParser:
    set_threads()
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--model", default="minilm-rt")
    p.add_argument("--task", default="rotten_tomatoes")
    p.add_argument("--device", default="cpu")
    p.add_argument("--limit", type=int, help="evaluate on at most this many batches (smoke runs)")
    p.add_argument("--out", help="JSON output path (default benchmarks/results/<name>.json)")
    return p


def environment(device: str) -> dict:
    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": device,
        "cpu_threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def write(name: str, args, rows: list[dict], extra: dict | None = None) -> Path:
    """Print the rows as a table and write them with the environment to JSON."""
    table = pd.DataFrame(rows)
    with pd.option_context("display.width", 200, "display.max_columns", 30, "display.max_rows", 200):
        print(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    path = Path(args.out) if args.out else RESULTS / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "benchmark": name,
        "args": vars(args),
        "environment": environment(args.device),
        "rows": rows,
        **(extra or {}),
    }
    path.write_text(json.dumps(payload, indent=2, default=str))
    print(f"wrote {path}")
    return path


def fisher_maps(loaded, task, num_batches: int, **changes) -> dict[str, torch.Tensor]:
    """``{layer: F}`` through the library's one statistics resolver (``changes``: other StatisticsSettings fields)."""
    settings = StatisticsSettings(num_batches=num_batches, batch_size=16, **changes)
    return select(statistics_for(loaded, task, ("fisher",), settings), "fisher")


def suite_parser(description: str) -> argparse.ArgumentParser:
    """:func:`parser` plus the suite's ``--tasks`` and the library's statistics flags (one set of names, one set of
    defaults: :func:`lowrank.cli.args.add_statistics_options`)."""
    p = parser(description)
    p.add_argument(
        "--tasks",
        nargs="+",
        default=list(SUITE),
        choices=list(SUITE),
        help=f"suite tasks, each with its fine-tuned MiniLM (default: {' '.join(SUITE)})",
    )
    p.add_argument("--split", default="validation", help="evaluation split (default validation)")
    add_statistics_options(p)
    return p


def suite_models(tasks: list[str]) -> list[tuple[str, str]]:
    """``(task, packaged model)`` for every task whose fine-tuned model is built; prints how to build the others."""
    ready = []
    for task in tasks:
        name = finetuned_model(task)
        if is_built(name):
            ready.append((task, name))
        else:
            print(f"skipped {task}: {name} is not built; build it with `{build_command(name)}`", flush=True)
    return ready


def settings_tag(settings: StatisticsSettings) -> str:
    """A file-name tag for the statistics settings: the labels, then whatever differs from the library's defaults."""
    short = {
        "num_batches": "b",
        "batch_size": "bs",
        "labels_per_example": "k",
        "max_length": "len",
        "split": "",
        "seed": "seed",
        "task": "cal-",
        "grad_edge": "edge",
        "grad_clip": "clip",
    }
    changed = [
        f"{short[k]}{str(v).replace('/', '_')}"
        for k, v in settings.to_dict().items()
        if k != "labels" and v != getattr(DEFAULT, k)
    ]
    return "_".join([settings.labels, *changed])
