"""Core commands: prepare, models, methods, spectra, finetune, compress, evaluate.

Each ``<name>_command(args)`` turns parsed arguments into one library call and returns ``(data, table)``
(:mod:`lowrank.cli.main` prints one of them). ``compress`` has one path with two settings: in memory
(:func:`lowrank.compress`, then :func:`lowrank.save_compressed` with ``--out``) or block by block
(:func:`lowrank.compress_sequential`, always into ``--out``; chosen by ``--sequential`` or when the model's
float32 size is above half the free RAM); both report the :class:`lowrank.CompressionInfo` they produced.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import pandas as pd

from lowrank.alignment import DEFAULT_ALIGN
from lowrank.allocation import read_ranks
from lowrank.analysis.spectra import PLAIN, metric_method, spectra
from lowrank.assets import prepare_all, prepare_suite
from lowrank.card import update_card
from lowrank.cli.args import (
    add_common,
    add_output,
    add_perplexity_options,
    add_statistics_options,
    add_task,
    model_and_task,
    output_folder,
    perplexity_options,
    statistics_settings,
    task_of,
    warn_calibration,
)
from lowrank.compress import load_any, load_compressed, save_compressed
from lowrank.data import load_task
from lowrank.evaluation import evaluate
from lowrank.evaluation.harness import harness_scores, parse_tasks, scores_table, store_scores
from lowrank.evaluation.throughput import ThroughputSettings
from lowrank.experiments.store import RunStore
from lowrank.files.atomic import atomic_dir
from lowrank.info import load_info
from lowrank.layers import FORMS
from lowrank.methods import COMPENSATE, available_methods, get_method, with_compensation
from lowrank.methods.compensated import ALPHA
from lowrank.models.packaged import FINETUNED, FINETUNED_BASE, PACKAGED, finetuned_dir, is_built
from lowrank.progress import TqdmProgress
from lowrank.sequential import compress_in_memory, compress_sequential, method_form, sequential_reason
from lowrank.speed import SpeedSettings, optimize_speed
from lowrank.statistics import needs_task, statistics_for
from lowrank.statistics.blockwise import INPUTS
from lowrank.training.finetune import MINILM_RT_CONFIG, TrainConfig, build_finetuned, train
from lowrank.validate import COUNT, FRACTION, POSITIVE, arg_type, finite, parse_json, path_arg


def register(sub) -> None:
    p = add_common(sub.add_parser("prepare", help="fetch the offline assets (and optionally build fine-tuned models)"))
    p.add_argument(
        "--build",
        nargs="+",
        default=[],
        metavar="NAME",
        choices=[*FINETUNED, "all"],
        help=f"also fine-tune and cache these packaged models if missing ({', '.join(FINETUNED)}; all: every one)",
    )
    p.add_argument("--build-minilm-rt", action="store_true", help="same as --build minilm-rt")
    p.set_defaults(handler=prepare_command)

    p = add_common(sub.add_parser("models", help="list packaged models"))
    p.set_defaults(handler=models_command)

    p = add_common(sub.add_parser("methods", help="list registered factorization methods"))
    p.set_defaults(handler=methods_command)

    p = add_common(sub.add_parser("spectra", help="per-layer singular values and rank statistics"))
    p.add_argument("--model", default="minilm-rt")
    p.add_argument("--full", action="store_true", help="include singular values and energy curves in JSON")
    p.add_argument(
        "--metric",
        default=PLAIN,
        help="a closed-form method whose truncated matrix's spectrum is shown (svd: W itself; fwsvd: W diag(d); "
        "svd_llm: W L_A; kfac_svd: L_G^T W L_A); its statistics are computed on --task",
    )
    add_task(p, "task the metric's statistics are computed on")
    add_statistics_options(p)
    p.set_defaults(handler=spectra_command)

    p = add_common(sub.add_parser("finetune", help="fine-tune a model on a task (builds minilm-rt, minilm-<task>)"))
    p.add_argument("--model", default="minilm")
    add_task(p, "task to fine-tune on (recorded in the saved model)")
    add_output(
        p,
        "output folder (default for minilm on a suite task: its packaged model's cache, e.g. minilm-rt for rotten_tomatoes)",
    )
    p.add_argument("--epochs", type=arg_type(POSITIVE, "--epochs"))
    p.add_argument("--lr", type=arg_type(POSITIVE, "--lr"))
    p.add_argument("--max-steps", type=arg_type(COUNT, "--max-steps"))
    add_perplexity_options(p)
    p.set_defaults(handler=finetune_command)

    p = add_common(sub.add_parser("compress", help="factorize a model's Linear layers and save it"))
    p.add_argument("--model", default="minilm-rt")
    group = p.add_mutually_exclusive_group()
    group.add_argument(
        "--keep",
        type=arg_type(FRACTION, "--keep"),
        default=0.5,
        help="fraction of each layer's parameters to keep (default 0.5)",
    )
    group.add_argument(
        "--plan", type=path_arg("--plan"), help="JSON file with a 'ranks' object {layer: rank} (e.g. from `allocate`)"
    )
    p.add_argument(
        "--align",
        type=arg_type(COUNT, "--align"),
        default=DEFAULT_ALIGN,
        help=f"with --keep: ranks are multiples of this, rounded down (default {DEFAULT_ALIGN}; 1: unaligned)",
    )
    p.add_argument(
        "--speed-batch",
        type=arg_type(COUNT, "--speed-batch"),
        help="time each factorized layer at this many texts (of --speed-length tokens) on --device and keep the "
        "fastest form (two products, compiled, or merged back to dense); recorded in the folder",
    )
    p.add_argument(
        "--speed-length",
        type=arg_type(COUNT, "--speed-length"),
        default=1,
        help="tokens per text for --speed-batch (default 1: one generated token; 256 for prefill)",
    )
    p.add_argument("--method", default="svd")
    p.add_argument(
        "--compensate",
        action=argparse.BooleanOptionalAction,
        help="run a data-aware method in its error-compensated form (svd_llm, kfac_svd: each block "
        "fitted, from the inputs of the blocks compressed before it, toward the dense outputs with weight alpha, "
        f"--option alpha=A, default {ALPHA:g}; each layer's correction validated on held-out calibration windows, "
        "--option validate=none to skip; default: "
        + ", ".join(f"{'on' if on else 'off'} for a {kind}" for kind, on in COMPENSATE.items())
        + ")",
    )
    p.add_argument("--solver", help="solver for iterative methods (e.g. als, em, adam, adam_sgd)")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", help="extra method option, repeatable")
    add_task(p, "task for statistics (Fisher...) and evaluation")
    add_statistics_options(p)
    add_output(p, "folder to save the compressed model (atomic)")
    p.add_argument("--evaluate", action="store_true", help="evaluate the compressed model on --task")
    add_perplexity_options(p)
    p.add_argument(
        "--sequential",
        action="store_true",
        help="causal LMs: one decoder block in memory at a time, written to --out as shards (automatic "
        "when the model's float32 size is above half the available RAM)",
    )
    p.add_argument(
        "--sequential-inputs",
        choices=INPUTS,
        help="with --sequential: block inputs for activation statistics, from the blocks already "
        "compressed (default) or the dense ones; compensated: both (the default and only choice of a method of "
        "compensation statistics, e.g. svd_llm_compensated)",
    )
    p.set_defaults(handler=compress_command)

    p = add_common(sub.add_parser("evaluate", help="accuracy/perplexity, size and latency of a model"))
    p.add_argument("--model", default="minilm-rt", help="packaged name, hub id, model folder or compressed folder")
    add_task(p)
    p.add_argument("--split", default="validation")
    p.add_argument("--limit", type=arg_type(COUNT, "--limit"), help="evaluate on at most this many batches")
    p.add_argument(
        "--throughput",
        action="store_true",
        help="also tokens/s: prefill and (causal LMs) greedy decoding at batch 1 and 8, a compressed model against "
        "its dense base measured in this process, with the FLOP bound",
    )
    p.add_argument(
        "--throughput-length",
        type=arg_type(COUNT, "--throughput-length"),
        default=ThroughputSettings.length,
        help=f"prefill tokens per sequence for --throughput (default {ThroughputSettings.length})",
    )
    add_perplexity_options(p)
    p.add_argument(
        "--harness",
        metavar="TASK[,TASK]",
        help="instead: lm-eval-harness tasks (needs pip install '.[eval]'); the scores are printed and stored in the "
        "run store as tasks harness:<task>:<metric> (Trade-offs, Summary)",
    )
    p.add_argument(
        "--harness-include", type=path_arg("--harness-include"), help="folder of lm-eval task YAML files (local tasks)"
    )
    p.add_argument(
        "--harness-limit", type=arg_type(COUNT, "--harness-limit"), help="at most this many examples per harness task"
    )
    p.add_argument("--shots", type=arg_type(COUNT, "--shots"), help="few-shot examples (default: each task's own)")
    p.add_argument(
        "--store", type=path_arg("--store"), help="run store file (default: runs.sqlite in the cache, $LOWRANK_CACHE)"
    )
    p.set_defaults(handler=evaluate_command)


def prepare_command(args):
    paths = {k: str(v) for k, v in {**prepare_all(), **prepare_suite()}.items()}
    wanted = (
        list(FINETUNED)
        if "all" in args.build
        else list(dict.fromkeys(args.build + ["minilm-rt"] * args.build_minilm_rt))
    )
    for name in wanted:
        if not is_built(name):
            print(f"building {name} (one-time fine-tuning of {FINETUNED_BASE} on {FINETUNED[name]})...")
            build_finetuned(FINETUNED[name], device=args.device, progress=TqdmProgress())
    paths |= {name: str(finetuned_dir(name)) for name in FINETUNED if is_built(name)}
    return paths, pd.DataFrame({"asset": list(paths), "path": list(paths.values())})


def models_command(args):
    return PACKAGED, pd.DataFrame({"name": list(PACKAGED), "description": list(PACKAGED.values())})


def methods_command(args):
    rows = [
        {
            "name": n,
            "needs": ", ".join(get_method(n).needs) or "-",
            "options": ", ".join(f"{k}={o.default}" for k, o in get_method(n).options.items()) or "-",
            "description": get_method(n).description,
        }
        for n in available_methods()
    ]
    return rows, pd.DataFrame(rows)


def spectra_command(args):
    needs = metric_method(args.metric).needs
    loaded, task = model_and_task(args) if needs else (load_any(args.model, args.device), None)
    stats = statistics_for(loaded, task, needs, statistics_settings(args), progress=TqdmProgress())
    frame = spectra(loaded, progress=TqdmProgress(), metric=args.metric, stats=stats)
    summary = frame.drop(columns=["singular_values", "energy"])
    return (frame if args.full else summary), summary.round(2)


def finetune_command(args):
    overrides = {
        k: v for k, v in {"epochs": args.epochs, "lr": args.lr, "max_steps": args.max_steps}.items() if v is not None
    }
    if args.model == FINETUNED_BASE and args.task in FINETUNED.values() and not args.out:
        record = build_finetuned(
            args.task,
            TrainConfig(**{**MINILM_RT_CONFIG.__dict__, **overrides}),
            device=args.device,
            progress=TqdmProgress(),
        )
        return record, pd.DataFrame([{"model": record["name"], "validation_accuracy": record["validation_accuracy"]}])
    if not args.out:
        raise ValueError(
            f"--out is required unless building a packaged model (--model {FINETUNED_BASE} --task "
            f"{' | '.join(FINETUNED.values())})"
        )
    out = output_folder(args)
    loaded, task = model_and_task(args)
    task = load_task(task)
    losses = train(loaded.model, loaded.tokenizer, task, TrainConfig(**overrides), progress=TqdmProgress())
    result = evaluate(loaded, task, latency=False, **perplexity_options(args))
    with atomic_dir(out, force=args.force) as tmp:
        loaded.model.save_pretrained(tmp, safe_serialization=True)
        loaded.tokenizer.save_pretrained(tmp)
    record = {"out": args.out, "final_loss": losses[-1], result.metric: result.value, "protocol": result.protocol}
    return record, pd.DataFrame([record])


def parse_options(pairs: list[str], solver: str | None = None) -> dict:
    """``--option KEY=VALUE`` pairs (a value read as JSON when it is, else text) and ``--solver``: each option
    given once (``--solver als --option solver=em`` has two meanings and is refused), numbers finite."""
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--option expects KEY=VALUE, got {pair!r}")
        if key in options:
            raise ValueError(f"--option {key} is given twice ({options[key]!r} and {value!r}); give it once")
        try:
            options[key] = parse_json(value, f"--option {key}")
        except ValueError:
            options[key] = value
        if isinstance(options[key], float):
            finite(options[key], f"--option {key}")
    if solver is not None:
        if "solver" in options:
            raise ValueError(f"--solver {solver} and --option solver={options['solver']}: give the solver once")
        options["solver"] = solver
    return options


def compress_command(args):
    out = output_folder(args)
    options = parse_options(args.option, args.solver)
    ranks = read_ranks(args.plan) if args.plan else args.keep
    reason = None if args.sequential else sequential_reason(args.model)
    if args.sequential_inputs and not (args.sequential or reason):
        raise ValueError("--sequential-inputs applies only to block-by-block compression: add --sequential")
    speed = SpeedSettings(args.speed_batch, args.speed_length, args.device) if args.speed_batch else None
    if speed is None and args.speed_length != 1:
        raise ValueError("--speed-length applies only with --speed-batch")
    if speed is not None and (args.sequential or reason):
        raise ValueError("--speed-batch times layers of a model in memory; it does not apply to --sequential")
    if args.sequential or reason:
        args.method = with_compensation(args.method, args.compensate)
        out = compress_streamed(args, ranks, options, reason)
        small, task, info = None, args.task, load_info(out)
    else:
        loaded = load_any(args.model, args.device)
        args.method = method_form(loaded, args.method, args.compensate)
        spec = get_method(args.method)
        spec.check_options(options)  # the form that runs, before the task and any statistics
        task = task_of(args, loaded) if args.evaluate or needs_task(spec.needs) or spec.block_sweep else None
        small = compress_in_memory(
            loaded, ranks, args.method, task, statistics_settings(args), None, TqdmProgress(), args.align, **options
        )
    if small is not None:  # in memory: the fast forms, then the folder
        if out:
            out = save_compressed(small, out, force=args.force, speed=speed, progress=TqdmProgress())
        elif speed is not None:
            optimize_speed(small, speed, progress=TqdmProgress())
        info = small.model.lowrank_info
    record = {
        "model": args.model,
        "method": args.method,
        "layers": len(info.ranks),
        "seconds": round(sum(info.seconds.values()), 3),
    }
    if info.calibration:
        record["calibration"] = f"{info.calibration['tokens']:,} tokens of {info.calibration['task']}"
        warn_calibration(info.calibration, task if args.evaluate else None)
    if info.sequential:
        record |= {"sequential": info.sequential["statistics"], "out": str(out)}
    if info.speed:
        forms = [entry["form"] for entry in info.speed["layers"].values()]
        record["forms"] = ", ".join(f"{form}: {forms.count(form)}" for form in FORMS if form in forms)
    if info.regularizers():
        record["regularizers"] = ", ".join(f"{label}: {n} layer(s)" for label, n in info.regularizers().items())
    if out:
        record["out"] = str(out)
    if args.evaluate:
        measured = evaluate(
            small if small is not None else load_compressed(out, args.device),
            task,
            progress=TqdmProgress(),
            **perplexity_options(args),
        )
        record |= measured.to_dict()
        if out:
            update_card(out, measured)  # the card of the folder just written names the quality measured
    return record, pd.DataFrame([record])


def compress_streamed(args, ranks, options: dict, reason) -> Path:
    """The compressed folder ``--out``, written one decoder block at a time (:func:`lowrank.compress_sequential`)."""
    if reason:
        print(f"notice: {reason}", file=sys.stderr)
    if not args.out:
        raise ValueError("sequential compression writes the model to a folder: pass --out")
    return compress_sequential(
        args.model,
        ranks,
        args.method,
        args.out,
        args.task,
        statistics_settings(args),
        progress=TqdmProgress(),
        inputs=args.sequential_inputs,
        device=args.device,
        align=args.align,
        **options,
    )


def evaluate_command(args):
    if args.harness:
        return harness_command(args)
    loaded = load_any(args.model, args.device, task=None)
    task = task_of(args, loaded)
    speed, reference = None, None
    if args.throughput:
        speed = ThroughputSettings(length=args.throughput_length)
        info = getattr(loaded.model, "lowrank_info", None)
        if info is not None and info.base_model:  # a compressed model: against its dense base, in this process
            reference = load_any(info.base_model, args.device, task=None)
    result = evaluate(
        loaded,
        task,
        args.split,
        limit=args.limit,
        progress=TqdmProgress(),
        throughput=speed,
        reference=reference,
        **perplexity_options(args),
    )
    return result.to_dict(), pd.DataFrame([result.to_dict()])


def harness_command(args):
    """``evaluate --harness``: lm-eval scores of the model, printed and stored as runs (lowrank.evaluation.harness)."""
    tasks = parse_tasks(args.harness)
    store = RunStore(args.store)  # a bad --store is refused before the model loads
    loaded = load_any(args.model, args.device, task=None)
    start = time.perf_counter()
    scores = harness_scores(loaded, tasks, args.harness_include, args.harness_limit, args.shots)
    ids = store_scores(store, loaded, scores, args.harness_limit, time.perf_counter() - start)
    rows = [{**row, "run": run} for row, run in zip(scores_table(scores), ids)]
    return rows, pd.DataFrame(rows)
