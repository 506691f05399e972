"""Helpers shared by the benchmark scripts: argument parsing, tables and JSON output."""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import pandas as pd
import torch

from lowrank.statistics import StatisticsSettings, select, statistics_for
from lowrank.threads import set_threads

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
    info = {"python": platform.python_version(), "torch": torch.__version__, "device": device,
            "cpu_threads": torch.get_num_threads(), "machine": platform.machine(),
            "date": time.strftime("%Y-%m-%d %H:%M:%S")}
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
    payload = {"benchmark": name, "args": vars(args), "environment": environment(args.device), "rows": rows, **(extra or {})}
    path.write_text(json.dumps(payload, indent=2, default=str))
    print(f"wrote {path}")
    return path


def fisher_maps(loaded, task, num_batches: int, **changes) -> dict[str, torch.Tensor]:
    """``{layer: F}`` through the library's one statistics resolver (``changes``: other StatisticsSettings fields)."""
    settings = StatisticsSettings(num_batches=num_batches, batch_size=16, **changes)
    return select(statistics_for(loaded, task, ("fisher",), settings), "fisher")
