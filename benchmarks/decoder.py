"""Decoders that stay language models (issue 25): a causal LM compressed with calibration from one corpus and
measured on two, training-free and healed.

Stages (each row is written to the JSON as soon as it is measured; a stopped run resumes where it stopped, rows
already in the JSON are not measured again; statistics come from the library's cache):

* ``dense``: perplexity of the dense model on the validation split of every corpus;
* ``strategies``: per calibration corpus and kept fraction, ``kfac_svd`` on the ranks of ``uniform``,
  ``kfac_greedy`` and ``measured_greedy`` (LEMS-like); the best non-uniform strategy (lowest perplexity on the
  calibration corpus's validation split) is the one the ``main`` stage uses; each plan summarized by layer type
  and depth (:func:`lowrank.allocation.summarize_plan`);
* ``main``: svd_llm and kfac_svd, each plain and compensated (with each ``--alpha``, the weight of the dense
  outputs in the compensated target, and each ``--validate``, :mod:`lowrank.methods.compensated`), on uniform ranks
  and the best other strategy;
* ``habits``: KFAC-SVD's gradient habits (edge tokens dropped, token norms clipped; ``--habits``), each on plain
  kfac_svd with uniform ranks and/or on the best training-free row of the budget (``--habit-rows``);
* ``curve``: the calibration-size curve of kfac_svd, plain and compensated (``--variants``, ``--alpha``,
  ``--validate``; ``--sizes`` tokens, ``all``: the whole training split; the default size comes from ``main``);
* ``heal``: the best training-free row of each corpus and budget, healed by ``lowrank.heal`` on the calibration
  text (:func:`lowrank.healing.default_healing` of a causal LM, with each ``--heal-level`` and ``--heal-lr``; ``--quick``: a few
  steps).

Every compressed row is evaluated on every corpus: the corpus it was calibrated on and the others (cross-domain).
Perplexity is the library's ``windows of N tokens`` protocol (``Evaluation.protocol``, in every row). Wall time
per stage part (statistics, allocation, compression, evaluation) and the process's peak RSS so far are in each row.

    python benchmarks/decoder.py                                   # smollm2-135m, lee and rotten_tomatoes:text
    python benchmarks/decoder.py --stages dense main               # a part
    python benchmarks/decoder.py --quick --model /tmp/tiny-llama   # smoke run (minutes)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

import lowrank
from lowrank import allocate, compress_in_memory, evaluate, load_model
from lowrank.allocation import summarize_plan
from lowrank.healing import LEVELS, PRECISIONS, HealConfig, default_healing
from lowrank.healing.config import BACKOFF
from lowrank.methods import with_compensation
from lowrank.methods.compensated import ALPHA, VALIDATE, VALIDATIONS
from lowrank.methods.registry import COMPENSATED_SUFFIX
from lowrank.progress import TqdmProgress
from lowrank.statistics import DEFAULT, StatisticsSettings, statistics_for
from lowrank.statistics.resolve import is_cached
from lowrank.threads import set_threads

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("dense", "strategies", "main", "habits", "curve", "heal")
METHODS = ("svd_llm", "kfac_svd")
OTHER_STRATEGIES = ("kfac_greedy", "measured_greedy")
HABITS = {"edge": {"grad_edge": 0.125}, "clip": {"grad_clip": 4.0}, "edge+clip": {"grad_edge": 0.125, "grad_clip": 4.0}}
HABIT_ROWS = ("uniform", "best")
# Targets of issue 25 (own-corpus perplexity as a multiple of dense): training-free and healed, per kept fraction.
TARGETS = {"training-free": {0.8: 1.5, 0.6: 2.5}, "healed": {0.8: 1.15, 0.6: 1.5}}
NEEDS = ("activations", "gradients")
NOTES = "<!-- notes: kept when the tables are written again -->"  # the write-up below the tables
# What a heal row keeps of lowrank.heal's record (CompressionInfo.healing).
HEAL_RECORD = (
    "level",
    "config",
    "train_tokens",
    "heldout_before",
    "heldout_after",
    "kept",
    "seconds",
    "blocks",
    "end_to_end",
)
QUICK_HEALING = HealConfig(steps=4, eval_every=2, heldout_batches=1, batch_size=2, max_length=32)


def arguments() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--corpora", nargs="+", default=["lee", "rotten_tomatoes:text"])
    p.add_argument(
        "--calibrate", nargs="+", help="corpora to calibrate on (default: every corpus); rows are measured on all"
    )
    p.add_argument("--keeps", type=float, nargs="+", default=[0.8, 0.6])
    p.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS), help="methods of the main stage")
    p.add_argument(
        "--variants",
        nargs="+",
        choices=("plain", "compensated"),
        default=["plain", "compensated"],
        help="which forms of each method the main and curve stages measure",
    )
    p.add_argument(
        "--alpha",
        type=float,
        nargs="+",
        default=[ALPHA],
        help="compensated rows: weight of the dense outputs in the target, one row per value (default %(default)s)",
    )
    p.add_argument(
        "--validate",
        nargs="+",
        choices=VALIDATIONS,
        default=[VALIDATE],
        help="compensated rows: how each layer's correction is checked on calibration windows it was not fitted on, "
        "one row each (default: the library's, %(default)s)",
    )
    p.add_argument(
        "--strategies",
        nargs="+",
        choices=OTHER_STRATEGIES,
        default=list(OTHER_STRATEGIES),
        help="strategies stage: the non-uniform strategies measured against uniform",
    )
    p.add_argument(
        "--habits",
        nargs="+",
        choices=list(HABITS),
        default=list(HABITS),
        help="habits stage: KFAC-SVD's gradient habits measured, one row each",
    )
    p.add_argument(
        "--habit-rows",
        nargs="+",
        choices=HABIT_ROWS,
        default=["uniform"],
        help="habits stage: the rows each habit is measured on: 'uniform' (plain kfac_svd, uniform ranks), 'best' "
        "(the best training-free row of the budget: its form, strategy, alpha and validation)",
    )
    p.add_argument("--tokens", type=int, default=DEFAULT.tokens, help="calibration tokens of the main rows")
    p.add_argument("--sizes", nargs="+", default=["8192", "all"], help="calibration-size curve: tokens or 'all'")
    p.add_argument(
        "--heal-lr",
        type=float,
        nargs="+",
        help="heal stage: learning rates, one healed row each (default: the library's causal-LM recipe)",
    )
    p.add_argument(
        "--heal-level",
        nargs="+",
        choices=LEVELS,
        help="heal stage: levels, one healed row each (with each --heal-lr; default: the causal-LM recipe's)",
    )
    p.add_argument(
        "--heal-backoff",
        type=backoff_arg,
        nargs="+",
        help="heal stage: learning-rate back-offs ('none': go on without one), one healed row each (with each "
        "--heal-lr and --heal-level; default: the causal-LM recipe's)",
    )
    p.add_argument(
        "--heal-precision",
        nargs="+",
        choices=PRECISIONS,
        help="heal stage: arithmetic of the training steps, one healed row each (with each --heal-lr, --heal-level "
        "and --heal-backoff; default: the causal-LM recipe's)",
    )
    p.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES))
    p.add_argument("--limit", type=int, help="evaluate on at most this many batches")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, help="torch threads (default: every core)")
    p.add_argument("--quick", action="store_true", help="smoke run: tiny samples, one budget, short evaluation")
    p.add_argument("--out", help="JSON path (default benchmarks/results/decoder[-quick].json)")
    p.add_argument("--report", help="markdown path (default docs/results/decoder.md; quick: next to the JSON)")
    args = p.parse_args()
    if args.quick:
        args.keeps, args.tokens, args.sizes = args.keeps[-1:], 2048, ["1024"]
        args.limit = args.limit or 2
    args.calibrate = args.calibrate or args.corpora
    if unknown := set(args.calibrate) - set(args.corpora):
        p.error(f"--calibrate names corpora not in --corpora: {', '.join(sorted(unknown))}")
    suffix = "-quick" if args.quick else ""
    args.out = Path(args.out or ROOT / "benchmarks" / "results" / f"decoder{suffix}.json")
    args.report = Path(args.report or (args.out.with_suffix(".md") if args.quick else ROOT / "docs/results/decoder.md"))
    return args


def peak_rss_gib() -> float:
    """The process's peak resident memory so far (Linux ``ru_maxrss`` is in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


# Arguments that change what a row measures: a run resumes only a JSON written with the same ones.
MEASURED = ("model", "limit", "quick", "device")


class Results:
    """Rows by key, written (atomically) after every row; rows already there are skipped on a rerun (of the same
    model and evaluation settings: another one is refused, so no table mixes two)."""

    def __init__(self, path: Path, args):
        self.path, self.args = path, args
        self.rows: dict[str, dict] = {}
        self.environment: dict = {}  # where the stored rows were measured (the last writer's threads and cores)
        if path.exists():
            stored = json.loads(path.read_text())
            differ = [k for k in MEASURED if stored["args"].get(k) != getattr(args, k)]
            if differ:
                raise SystemExit(
                    f"error: {path} was measured with other {', '.join(differ)}; pass another --out to start afresh"
                )
            self.rows = {row["key"]: row for row in stored["rows"]}
            self.environment = stored.get("environment", {})
            print(f"resuming: {len(self.rows)} rows in {path}", flush=True)

    def has(self, key: str) -> bool:
        return key in self.rows

    def add(self, row: dict) -> dict:
        row["peak_rss_gib"] = round(peak_rss_gib(), 3)
        row["torch_threads"] = torch.get_num_threads()
        self.environment = {"torch_threads": row["torch_threads"], "cpus": os.cpu_count()}  # of the rows' process
        self.rows[row["key"]] = row
        payload = {
            "benchmark": "decoder",
            "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(self.args).items()},
            "environment": self.environment,
            "rows": list(self.rows.values()),
        }
        tmp = self.path.with_suffix(".json.tmp")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(payload, indent=2, default=str))
        os.replace(tmp, self.path)
        hidden = ("key", "plan_by_type", "plan_by_depth", "calibration", "healing")
        shown = {k: v for k, v in row.items() if k not in hidden}
        print(json.dumps(shown, default=str), flush=True)
        return row


class Bench:
    """The dense model, its statistics per calibration sample (cached by the library) and the measurements."""

    def __init__(self, args):
        self.args = args
        self.results = Results(args.out, args)  # a JSON of other settings is refused before the model loads
        self.loaded = load_model(args.model, device=args.device)
        self.plans: dict[tuple, object] = {}

    def settings(self, corpus: str, tokens: int | None, **habits) -> StatisticsSettings:
        return DEFAULT.with_(task=corpus, **habits).for_tokens(tokens)

    def statistics(self, settings: StatisticsSettings) -> tuple[dict, dict]:
        cached = is_cached(self.loaded, None, NEEDS, settings)
        start = time.perf_counter()
        stats = statistics_for(self.loaded, None, NEEDS, settings)
        return stats, {"statistics_s": round(time.perf_counter() - start, 1), "statistics_cached": cached}

    def evaluate(self, model) -> dict:
        out = {}
        for corpus in self.args.corpora:
            start = time.perf_counter()
            result = evaluate(model, corpus, "validation", limit=self.args.limit, latency=False)
            dense = self.results.rows.get(f"dense|{corpus}", {}).get(f"ppl[{corpus}]")
            out[f"ppl[{corpus}]"] = result.value
            if dense:
                out[f"x_dense[{corpus}]"] = result.value / dense
            out["protocol"] = result.protocol
            out[f"evaluate_s[{corpus}]"] = round(time.perf_counter() - start, 1)
        return out

    def compress(self, method: str, form: Form, ranks, settings: StatisticsSettings, stats: dict):
        """The compressed model and the record of how, by :func:`lowrank.compress_in_memory`: compensated forms
        through the block sweep with the cached dense statistics (the gradients), plain ones through ``compress``;
        the record summarizes the layers' correction multipliers ``s*`` (mean, min, zeros) where there are any."""
        name = with_compensation(method, form.compensated)
        start = time.perf_counter()
        model = compress_in_memory(self.loaded, ranks, name, None, settings, stats, **form.options())
        made = {"method": name, **form.options(), "compress_s": round(time.perf_counter() - start, 1)}
        multipliers = [
            facts["correction_multiplier"]
            for facts in model.model.lowrank_info.details.values()
            if isinstance(facts.get("correction_multiplier"), float)
        ]
        if multipliers:
            made["correction_multiplier"] = {
                "mean": round(sum(multipliers) / len(multipliers), 4),
                "min": round(min(multipliers), 4),
                "zero": sum(m == 0.0 for m in multipliers),
                "layers": len(multipliers),
            }
        return model, made

    def plan(self, corpus: str, keep: float, strategy: str, settings: StatisticsSettings, stats: dict):
        """``(ranks, record)`` of a strategy: ``keep`` itself for uniform, else an allocated plan (cached here)."""
        if strategy == "uniform":
            return keep, {"allocate_s": 0.0}
        key = (corpus, keep, strategy, settings)
        if key not in self.plans:
            start = time.perf_counter()
            options = {"method": "kfac_svd"} | ({"num_batches": 1, "batch_size": 2} if self.args.quick else {})
            extra = {"task": corpus, **options} if strategy == "measured_greedy" else {}
            plan = allocate(self.loaded, keep, strategy, stats=stats, progress=TqdmProgress(), **extra)
            self.plans[key] = (plan, time.perf_counter() - start)
        plan, seconds = self.plans[key]
        record = {
            "allocate_s": round(seconds, 1),
            "plan_by_type": summarize_plan(plan, "type").to_dict("records"),
            "plan_by_depth": summarize_plan(plan, "depth").to_dict("records"),
        }
        return plan.ranks, record

    def row(
        self,
        key: str,
        stage: str,
        corpus: str,
        keep: float,
        method: str,
        form: Form,
        strategy: str,
        tokens: int | None,
        habits: dict | None = None,
    ) -> dict | None:
        """Measure one configuration (unless its row exists): statistics, ranks, compression, evaluation."""
        if self.results.has(key):
            return self.results.rows[key]
        settings = self.settings(corpus, tokens, **(habits or {}))
        stats, timing = self.statistics(settings)
        ranks, planned = self.plan(corpus, keep, strategy, settings, stats)
        model, made = self.compress(method, form, ranks, settings, stats)
        row = {
            "key": key,
            "stage": stage,
            "calibration": model.model.lowrank_info.calibration,  # the sample it held (task, examples, tokens)
            "calibrated_on": corpus,
            "tokens": tokens if tokens is not None else "all",
            "keep": keep,
            "strategy": strategy,
            "habits": ",".join(f"{k}={v}" for k, v in (habits or {}).items()) or "-",
            **made,
            **timing,
            **planned,
            **self.evaluate(model),
        }
        return self.results.add(row)


# Compensated rows measured before alpha was an option ran full compensation: they record no alpha, and their keys
# carry none. Rows measured before validation was an option ran unvalidated: they record no ``validate``, and their
# keys carry none.
UNRECORDED_ALPHA = 1.0


@dataclass(frozen=True)
class Form:
    """How a method runs: plain or compensated, with its alpha and how its corrections are checked (``validate``)."""

    compensated: bool
    alpha: float = ALPHA
    validate: str = "none"

    @classmethod
    def of(cls, row: dict) -> Form:
        """The form a row ran in."""
        if not row["method"].endswith(COMPENSATED_SUFFIX):
            return cls(False)
        return cls(True, row.get("alpha", UNRECORDED_ALPHA), row.get("validate", "none"))

    def options(self) -> dict:
        """The method's options: none for a plain form."""
        return {"alpha": self.alpha, "validate": self.validate} if self.compensated else {}

    def key(self) -> str:
        """The key suffix: a compensated form's alpha (except full compensation, the rows measured before alpha) and
        validation; none for a plain form."""
        if not self.compensated:
            return ""
        alpha = "" if self.alpha == UNRECORDED_ALPHA else f"|alpha={self.alpha:g}"
        return alpha + ("" if self.validate == "none" else f"|{self.validate}")

    def label(self) -> str:
        if not self.compensated:
            return ""
        return f" (alpha {self.alpha:g}" + ("" if self.validate == "none" else f", {self.validate}") + ")"


def variants(args) -> list[Form]:
    """The forms the main and curve stages measure: plain once, compensated once per alpha and validation."""
    plain = [Form(False)] if "plain" in args.variants else []
    compensated = "compensated" in args.variants
    return plain + [Form(True, a, v) for a in args.alpha for v in args.validate if compensated]


def best_strategy(bench: Bench, corpus: str, keep: float) -> str | None:
    """The non-uniform strategy the ``strategies`` stage measured best here; None where it has not run."""
    rows = [r for r in bench.results.rows.values() if r["stage"] == "strategies" and r["calibrated_on"] == corpus]
    rows = [r for r in rows if r["keep"] == keep and r["strategy"] != "uniform"]
    return min(rows, key=lambda r: r[f"ppl[{corpus}]"])["strategy"] if rows else None


def run(bench: Bench, args) -> None:
    stages = set(args.stages)
    if "dense" in stages or any(not bench.results.has(f"dense|{c}") for c in args.corpora):
        for corpus in args.corpora:
            key = f"dense|{corpus}"
            if not bench.results.has(key):
                start = time.perf_counter()
                result = evaluate(bench.loaded, corpus, "validation", limit=args.limit, latency=False)
                seconds = round(time.perf_counter() - start, 1)
                bench.results.add(
                    {
                        "key": key,
                        "stage": "dense",
                        "method": "dense",
                        "keep": 1.0,
                        f"ppl[{corpus}]": result.value,
                        "protocol": result.protocol,
                        f"evaluate_s[{corpus}]": seconds,
                    }
                )
    for corpus in args.calibrate:
        for keep in args.keeps:
            tag = f"{corpus}|{args.tokens}|{keep}"
            if "strategies" in stages:
                uniform = [] if bench.results.has(f"main|{tag}|kfac_svd|False|uniform") else ["uniform"]
                for strategy in (*uniform, *args.strategies):  # uniform plain kfac_svd: the main stage's row
                    bench.row(
                        f"strategies|{tag}|{strategy}",
                        "strategies",
                        corpus,
                        keep,
                        "kfac_svd",
                        False,
                        strategy,
                        args.tokens,
                    )
            if "main" in stages:
                best = best_strategy(bench, corpus, keep)
                if best is None:
                    print(f"main: uniform ranks only for {corpus} at {keep:.0%} kept (no strategies rows)", flush=True)
                for strategy in ("uniform", *([best] if best else [])):
                    for method in args.methods:
                        for form in variants(args):
                            measured = bench.results.has(f"strategies|{tag}|{strategy}")
                            if measured and method == "kfac_svd" and not form.compensated:
                                continue  # the strategies stage measured this configuration
                            key = f"main|{tag}|{method}|{form.compensated}|{strategy}" + form.key()
                            bench.row(key, "main", corpus, keep, method, form, strategy, args.tokens)
            if "habits" in stages:
                for name in args.habits:
                    if "uniform" in args.habit_rows:
                        key = f"habits|{tag}|{name}"
                        bench.row(
                            key, "habits", corpus, keep, "kfac_svd", Form(False), "uniform", args.tokens, HABITS[name]
                        )
                    if "best" in args.habit_rows and (best := best_row(bench, corpus, keep, args.tokens)):
                        key, strategy = f"habits|{tag}|{name}|on={best['key']}", best["strategy"]
                        method = best_method(best)
                        bench.row(
                            key, "habits", corpus, keep, method, Form.of(best), strategy, args.tokens, HABITS[name]
                        )
            if "curve" in stages:
                for size in args.sizes:
                    tokens = None if size == "all" else int(size)
                    for form in variants(args):
                        key = f"curve|{corpus}|{size}|{keep}|kfac_svd|{form.compensated}" + form.key()
                        bench.row(key, "curve", corpus, keep, "kfac_svd", form, "uniform", tokens)
            if "heal" in stages:
                heal(bench, corpus, keep, args)


def heal_key(healed_from: str, config: HealConfig) -> str:
    """The key of a heal row: the row it healed, its level (end to end unnamed), learning rate, back-off (none
    unnamed) and precision (float32 unnamed), and a digest of its whole config (a row healed with other settings is
    another row)."""
    digest = hashlib.sha1(json.dumps(config.to_dict(), sort_keys=True).encode()).hexdigest()[:8]
    level = "" if config.level == "end-to-end" else f"|{config.level}"
    backoff = "" if config.backoff is None else f"|backoff={config.backoff:g}"
    precision = "" if config.precision == "float32" else f"|{config.precision}"
    return f"heal|{healed_from}{level}|lr={config.lr:g}{backoff}{precision}|{digest}"


def backoff_arg(text: str) -> float | None:
    """``--heal-backoff`` value: a factor in (0, 1], or ``none``."""
    return None if text.lower() == "none" else BACKOFF.check(float(text), "--heal-backoff")


def best_row(bench: Bench, corpus: str, keep: float, tokens: int) -> dict | None:
    """The best training-free row of the ``main`` and ``strategies`` stages calibrated on ``tokens`` of ``corpus``
    at ``keep`` (lowest perplexity on ``corpus``); None, said, where none has run."""
    rows = [r for r in bench.results.rows.values() if r["stage"] in ("main", "strategies")]
    rows = [r for r in rows if r["calibrated_on"] == corpus and r["keep"] == keep and r["tokens"] == tokens]
    if not rows:
        print(f"no training-free row yet for {corpus} at {keep:.0%} kept", flush=True)
        return None
    return min(rows, key=lambda r: r[f"ppl[{corpus}]"])


def best_method(row: dict) -> str:
    """A row's method without its compensated suffix (:class:`Form` has the form)."""
    return row["method"].removesuffix(COMPENSATED_SUFFIX)


def heal(bench: Bench, corpus: str, keep: float, args) -> None:
    """The best training-free row of this corpus and budget, healed on its calibration text by :func:`lowrank.heal`
    with each ``--heal-lr`` (``--quick``: a few steps)."""
    if (best := best_row(bench, corpus, keep, args.tokens)) is None:
        return
    base = QUICK_HEALING if args.quick else default_healing("causal-lm")
    configs = [
        base.with_(level=level, lr=lr, backoff=backoff, precision=precision)
        for level in args.heal_level or [base.level]
        for lr in args.heal_lr or [base.lr]
        for backoff in args.heal_backoff or [base.backoff]
        for precision in args.heal_precision or [base.precision]
    ]
    configs = [c for c in configs if not bench.results.has(heal_key(best["key"], c))]
    if not configs:
        return
    settings = bench.settings(corpus, args.tokens)
    stats, _ = bench.statistics(settings)
    ranks, _ = bench.plan(corpus, keep, best["strategy"], settings, stats)
    model, made = bench.compress(best_method(best), Form.of(best), ranks, settings, stats)
    print(f"heal: {best['key']} compressed again in {made['compress_s']} s", flush=True)
    for config in configs:
        start = time.perf_counter()
        healed = lowrank.heal(model, bench.loaded, corpus, config)
        heal_s = round(time.perf_counter() - start, 1)
        record = healed.model.lowrank_info.healing
        bench.results.add(
            {
                "key": heal_key(best["key"], config),
                "stage": "heal",
                "calibrated_on": corpus,
                "tokens": args.tokens,
                "keep": keep,
                "strategy": best["strategy"],
                "method": best["method"],
                **Form.of(best).options(),
                "healed_from": best["key"],
                "recompress_s": made["compress_s"],
                "heal_s": heal_s,
                "healing": {k: record.get(k) for k in HEAL_RECORD},
                **bench.evaluate(healed),
            }
        )


def markdown(frame: pd.DataFrame) -> str:
    """A GitHub table of ``frame`` (numbers to 3 significant digits, missing values as -)."""

    def cell(v) -> str:
        if v is None or (isinstance(v, float) and v != v):
            return "-"
        return f"{v:.3g}" if isinstance(v, float) else str(v)

    head = "| " + " | ".join(frame.columns) + " |"
    rule = "|" + "---|" * len(frame.columns)
    body = ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([head, rule, *body])


def healing_label(config: dict) -> str:
    """A heal row's recipe in a few words: level, learning rate, back-off (when set) and precision (when not
    float32)."""
    backoff, precision = config.get("backoff"), config.get("precision", "float32")
    return (
        f"{config['level']}, lr {config['lr']:g}"
        + ("" if backoff is None else f", backoff {backoff:g}")
        + ("" if precision == "float32" else f", {precision}")
    )


def method_label(r: dict) -> str:
    """A row's method, with its alpha and validation when compensated."""
    return r["method"] + Form.of(r).label()


def row_label(r: dict) -> str:
    habits = r.get("habits", "-")
    return (
        f"{method_label(r)}, {r.get('strategy')}"
        + ("" if habits == "-" else f", {habits}")
        + (f", healed ({healing_label(r['healing']['config'])})" if r["stage"] == "heal" else "")
    )


def missed_by(ratio: float, target: float) -> str | None:
    """How far ``ratio`` (x dense) is above ``target``, as text; None when the target is met."""
    return f"{ratio - target:.2f}x" if ratio > target else None


def target_table(rows: list[dict], corpora: list[str]) -> pd.DataFrame:
    """Per corpus and budget, the best training-free and the best healed row on the corpus it was calibrated on
    (the calibration-size curve aside), against :data:`TARGETS`."""
    table = []
    for corpus in corpora:
        own = [
            r for r in rows if r.get("calibrated_on") == corpus and r["stage"] != "curve" and f"x_dense[{corpus}]" in r
        ]
        for keep in sorted({r["keep"] for r in own}, reverse=True):
            for kind in TARGETS:
                found = [r for r in own if r["keep"] == keep and (r["stage"] == "heal") == (kind == "healed")]
                target = TARGETS[kind].get(keep)
                if target is None:
                    continue
                best = min(found, key=lambda r: r[f"x_dense[{corpus}]"]) if found else None
                ratio = best[f"x_dense[{corpus}]"] if best else None
                table.append(
                    {
                        "corpus": corpus,
                        "keep": keep,
                        "kind": kind,
                        "best row": row_label(best) if best else "not run",
                        "x dense": ratio,
                        "target": f"<= {target}x",
                        "missed by": "-" if ratio is None else (missed_by(ratio, target) or "met"),
                    }
                )
    return pd.DataFrame(table)


def sample_sizes(rows: list[dict]) -> dict[tuple[str, str], int]:
    """Tokens each calibration sample held, by ``(corpus, tokens asked)``, from the rows that recorded their sample
    (the two fix the sample: a heal row, or a row measured before samples were recorded, shares it)."""
    return {
        (r["calibrated_on"], str(r["tokens"])): r["calibration"]["tokens"]
        for r in rows
        if "examples" in (r.get("calibration") or {})
    }


def tokens_label(asked: int | str, held: int | None) -> str:
    """The calibration tokens of a row: what its sample held, marked ``whole split`` where that is all the split
    has (``all`` asked, or a split smaller than asked); what was asked where no row recorded the sample."""
    if held is None:
        return asked if isinstance(asked, str) else f"{asked:,}"
    whole = asked == "all" or held < int(asked)
    return f"{held:,}" + (" (whole split)" if whole else "")


def report(bench: Bench, args) -> None:
    """The markdown write-up's tables, from the JSON rows (targets and misses on the calibration corpus); the notes
    below :data:`NOTES` in the existing file are kept."""
    rows = list(bench.results.rows.values())
    lines = ["# Decoders: compensation, calibration, ranks, healing (benchmarks/decoder.py)", ""]
    lines += [
        f"Model `{args.model}`; corpora {', '.join(f'`{c}`' for c in args.corpora)}; torch threads "
        f"{bench.results.environment.get('torch_threads', '-')} ({bench.results.environment.get('cpus', '-')} cores). "
        f"Perplexity: {rows[0].get('protocol', '') if rows else ''}, "
        "validation splits. `x dense`: perplexity over the dense model's, same corpus, same run.",
        "",
    ]
    dense = [f"`{c}` {r[f'ppl[{c}]']:.4g}" for c in args.corpora if (r := bench.results.rows.get(f"dense|{c}"))]
    lines += [f"Dense perplexity: {', '.join(dense) or 'not measured'}.", ""]
    held = sample_sizes(rows)
    targets = target_table(rows, args.corpora)
    if not targets.empty:
        lines += ["## Targets (each corpus calibrated on its own training text)", "", markdown(targets), ""]
    for corpus in args.corpora:
        own = [r for r in rows if r.get("calibrated_on") == corpus]
        if not own:
            continue
        lines += [f"## Calibrated on `{corpus}` (train split)", ""]
        table = []
        for r in own:
            entry = {
                "stage": r["stage"],
                "keep": r["keep"],
                "method": method_label(r),
                "strategy": r.get("strategy"),
                "calibration tokens": tokens_label(r["tokens"], held.get((corpus, str(r["tokens"])))),
                "habits": r.get("habits", "-"),
                "healing": healing_label(r["healing"]["config"]) if r["stage"] == "heal" else "-",
            }
            for c in args.corpora:
                entry[f"ppl {c}"] = r.get(f"ppl[{c}]")
                entry[f"x dense {c}"] = r.get(f"x_dense[{c}]")
            kind = "healed" if r["stage"] == "heal" else "training-free"
            target = TARGETS[kind].get(r["keep"])
            ratio = r.get(f"x_dense[{corpus}]")
            entry["target"] = f"<= {target}x" if target else "-"
            entry["missed by"] = (missed_by(ratio, target) if target and ratio else None) or "-"
            entry["time s"] = sum(v for k, v in r.items() if k.endswith("_s") or k.startswith("evaluate_s"))
            entry["peak RSS GiB"] = r.get("peak_rss_gib")
            table.append(entry)
        lines += [markdown(pd.DataFrame(table)), ""]
    args.report.parent.mkdir(parents=True, exist_ok=True)
    kept = args.report.read_text().partition(NOTES)[2] if args.report.exists() else ""
    args.report.write_text("\n".join(lines) + "\n" + (NOTES + kept if kept else ""))
    print(f"wrote {args.report} and {args.out}", flush=True)


def main() -> None:
    args = arguments()
    set_threads(args.threads)
    bench = Bench(args)
    try:
        run(bench, args)
    finally:
        report(bench, args)


if __name__ == "__main__":
    main()
