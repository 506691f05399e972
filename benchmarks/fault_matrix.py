"""Fault matrix: bad inputs through the command line, each classified by what the user gets.

Every row runs one command (``python -m lowrank ...``, or a few library lines where no command reaches
the code, e.g. the run store) in a subprocess with its own temporary ``LOWRANK_CACHE`` (the offline
assets of the real cache are linked in, read-only use), on tiny models built here (2-layer BERT / Llama
of width 64 with MiniLM's tokenizer, as in ``tests/conftest.py``). Outcomes:

* ``clear error``: exit 2 and one ``error: ...`` line, the last on stderr (progress bars may precede it);
* ``handled``: exit 0 and the result is right (the row's check);
* ``traceback``: a traceback, another exit code, an exit 2 without a clean ``error:`` line, or killed
  at the row's timeout;
* ``silent wrong``: exit 0 but the result is wrong, or a bad input was accepted;
* ``data lost``: a file the user had is gone afterwards.

A row passes when its outcome is the expected one (``error``: a clear error; ``ok``: handled; ``any``:
either). Prints the table and the counts, writes ``benchmarks/results/fault_matrix.json``.

    python benchmarks/fault_matrix.py              # every row (a few minutes on 2 cores)
    python benchmarks/fault_matrix.py --only 3     # the first 3 rows (a smoke run)
    python benchmarks/fault_matrix.py --rows nan_weights_evaluate,truncated_safetensors
    python benchmarks/fault_matrix.py --fuzz 200   # the generated-input tests with 200 examples each

The rows of the reliability issue's classes 1-6 are in :mod:`fault_rows`. ``--fuzz N`` runs
``tests/robustness/test_generated_inputs.py`` (hypothesis, random seeds) with ``N`` examples per test instead of
the rows, and counts each generated case's outcome (``benchmarks/results/fault_matrix_fuzz.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import fault_rows
import pandas as pd
import torch
from common import write

from lowrank.files.cache import cache_dir

OUTCOMES = ("clear error", "handled", "traceback", "silent wrong", "data lost")
SHARED_CACHE = ("assets", "wheels")  # linked from the real cache into each row's private one
QUERY = "bert.encoder.layer.0.attention.self.query.weight"
POSITIVE = [
    "a good film",
    "great acting and a fine story",
    "wonderful, moving and funny",
    "I loved it",
    "a delight",
    "brilliant work",
    "superb and warm",
    "charming and clever",
    "a joy to watch",
    "beautifully made",
]
NEGATIVE = [
    "a bad film",
    "awful acting and a dull story",
    "boring, flat and silly",
    "I hated it",
    "a mess",
    "terrible work",
    "weak and cold",
    "tedious and stupid",
    "a pain to watch",
    "badly made",
]
STATS = ["--fisher-batches", "1", "--fisher-batch-size", "4"]


@dataclass
class Result:
    code: int | None
    out: str
    err: str
    seconds: float
    timed_out: bool = False

    def json(self):
        try:
            return json.loads(self.out)
        except json.JSONDecodeError:
            return None


@dataclass
class Row:
    """One bad input: ``argv`` (after ``python -m lowrank``, or a full command when it starts with the
    interpreter), run after ``before`` (commands that must succeed) in a cache prepared by ``setup``."""

    name: str
    defect: str  # the defect number(s)
    case: str
    argv: list
    expect: str = "error"  # error | ok | any
    check: Callable[[Result], bool] | None = None  # exit 0: is the result right?
    keep: list = field(default_factory=list)  # files that must still exist afterwards
    before: list = field(default_factory=list)
    setup: Callable[[Path], None] | None = None  # gets the row's cache folder
    timeout: float = 180.0


# ---------------------------------------------------------------- fixtures


def _tokenizer():
    from transformers import AutoTokenizer

    from lowrank.assets import minilm_dir

    return AutoTokenizer.from_pretrained(minilm_dir(), trust_remote_code=False)


def _bert(folder: Path, names: list[str]) -> Path:
    from transformers import BertConfig, BertForSequenceClassification

    tok = _tokenizer()
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=tok.vocab_size,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=256,
        max_position_embeddings=128,
        num_labels=len(names),
        id2label=dict(enumerate(names)),
        label2id={n: i for i, n in enumerate(names)},
    )
    BertForSequenceClassification(config).save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)
    return folder


def _llama(folder: Path) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = _tokenizer()
    tok.eos_token = tok.sep_token
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=tok.vocab_size,
        hidden_size=64,
        intermediate_size=192,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        eos_token_id=tok.sep_token_id,
        pad_token_id=tok.pad_token_id,
    )
    LlamaForCausalLM(config).save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)
    return folder


def _edit_tensors(source: Path, folder: Path, edit) -> Path:
    from safetensors.torch import load_file, save_file

    shutil.copytree(source, folder)
    tensors = load_file(folder / "model.safetensors")
    edit(tensors)
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    return folder


def _truncate(path: Path) -> None:
    with open(path, "r+b") as fh:
        fh.truncate(path.stat().st_size // 2)


def _sentiment(repeats: int = 4) -> pd.DataFrame:
    rows = [(t, "positive") for t in POSITIVE] + [(t, "negative") for t in NEGATIVE]
    return pd.DataFrame(rows * repeats, columns=["text", "label"])


def build_fixtures(root: Path) -> dict:
    """Models, CSVs, plans and compressed folders the rows use; returns their paths (and a few facts)."""
    from lowrank import compress, evaluate, load_model, save_compressed

    f: dict = {}
    f["bert"] = _bert(root / "bert", ["negative", "positive"])
    f["bert6"] = _bert(root / "bert6", [f"LABEL_{i}" for i in range(6)])
    f["llama"] = _llama(root / "llama")

    def swap(t):
        for key in ("classifier.weight", "classifier.bias"):
            t[key] = t[key].flip(0).contiguous()

    f["swapped"] = _edit_tensors(f["bert"], root / "swapped", swap)
    config = json.loads((f["swapped"] / "config.json").read_text())
    config.update(id2label={"0": "positive", "1": "negative"}, label2id={"positive": 0, "negative": 1})
    (f["swapped"] / "config.json").write_text(json.dumps(config))

    def poison(value):
        def edit(t):
            t[QUERY][0, 0] = value

        return edit

    f["nan"] = _edit_tensors(f["bert"], root / "nan", poison(float("nan")))
    f["inf"] = _edit_tensors(f["bert"], root / "inf", poison(float("inf")))
    f["truncated"] = shutil.copytree(f["bert"], root / "truncated")
    _truncate(f["truncated"] / "model.safetensors")
    f["no_config"] = root / "no-config"
    f["no_config"].mkdir()
    f["pickled"] = root / "pickled"
    f["pickled"].mkdir()
    shutil.copy(f["bert"] / "config.json", f["pickled"])
    torch.save({"x": torch.zeros(1)}, f["pickled"] / "pytorch_model.bin")

    frame = _sentiment()
    f["csv"] = root / "sentiment.csv"
    frame.to_csv(f["csv"], index=False)
    fr = frame.copy()
    fr["label"] = fr["label"].map({"positive": "fresh", "negative": "rotten"})
    f["fresh_rotten"] = root / "fresh_rotten.csv"
    fr.to_csv(f["fresh_rotten"], index=False)
    three = frame.copy()
    three.loc[::3, "label"] = "neutral"
    f["three"] = root / "three.csv"
    three.to_csv(f["three"], index=False)
    f["few"] = root / "few.csv"
    frame.iloc[8:12].to_csv(f["few"], index=False)  # 4 rows: the 10% validation split is empty
    na = frame.copy()
    na.loc[[0, 1, 2, 3], "text"] = ["NA", "None", "null", "NaN"]
    f["na"] = root / "na.csv"
    na.to_csv(f["na"], index=False)
    huge = frame.copy()
    huge.loc[0, "text"] = "a good film " * 400_000  # one 4.8 MB cell
    f["huge"] = root / "huge.csv"
    huge.to_csv(f["huge"], index=False)
    f["empty_csv"] = root / "empty.csv"
    f["empty_csv"].write_text("")
    f["no_columns"] = root / "columns.csv"
    f["no_columns"].write_text("sentence,score\nhello,1\nbye,0\n")
    f["binary_csv"] = root / "binary.csv"
    f["binary_csv"].write_bytes(bytes(range(256)) * 64)
    f["dir_csv"] = root / "folder.csv"
    f["dir_csv"].mkdir()

    f["dir_plan"] = root / "plan-folder"
    f["dir_plan"].mkdir()
    f["bad_json_plan"] = root / "bad.json"
    f["bad_json_plan"].write_text("{ranks: ")
    f["unknown_layer_plan"] = root / "unknown.json"
    f["unknown_layer_plan"].write_text(json.dumps({"ranks": {"no.such.layer": 4}}))
    f["zero_rank_plan"] = root / "zero.json"
    f["zero_rank_plan"].write_text(json.dumps({"ranks": {"bert.encoder.layer.0.intermediate.dense": 0}}))

    loaded = load_model(str(f["bert"]))
    f["small"] = save_compressed(compress(loaded, 0.5), root / "small")
    meta = json.loads((f["small"] / "lowrank.json").read_text())
    first = next(iter(meta["ranks"]))
    for name, ranks in (
        ("small_missing", {k: v for k, v in meta["ranks"].items() if k != first}),
        ("small_rank", {**meta["ranks"], first: meta["ranks"][first] + 1}),
    ):
        f[name] = shutil.copytree(f["small"], root / name)
        (f[name] / "lowrank.json").write_text(json.dumps({**meta, "ranks": ranks}))
    f["small_badjson"] = shutil.copytree(f["small"], root / "small_badjson")
    (f["small_badjson"] / "lowrank.json").write_text("{")
    f["small_truncated"] = shutil.copytree(f["small"], root / "small_truncated")
    _truncate(f["small_truncated"] / "model.safetensors")

    fault_rows.build(f, root)
    task = str(f["csv"])
    f["bert_loss"] = evaluate(loaded, task, latency=False).loss  # what the swapped model must score
    return f


def foreign_folder(path: Path) -> Path:
    """A folder of the user's with a file in it, the target of an --out."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "notes.txt").write_text("the user's own file\n")
    return path


def corrupt_statistics(kind: str, model: Path, task: Path, gradients: bool = False):
    """A setup writing garbage at the cache entry the command will read (``fisher`` or ``moments``)."""

    def setup(cache: Path) -> None:
        os.environ["LOWRANK_CACHE"] = str(cache)
        try:
            from lowrank import load_model, load_task
            from lowrank.statistics import DEFAULT
            from lowrank.statistics.cache import entry_path

            settings = DEFAULT.with_(num_batches=1, batch_size=4).to_dict()
            key = settings if kind == "fisher" else {**settings, "gradients": gradients}
            path = entry_path(kind, load_model(str(model)), load_task(str(task)), key)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"\x00garbage, not safetensors" * 10)
        finally:
            os.environ.pop("LOWRANK_CACHE", None)

    return setup


def corrupt_store(cache: Path) -> None:
    (cache / "runs.sqlite").write_bytes(b"this is not a database" * 100)


# library lines for code no command reaches; a user error prints one line and exits 2, like the dashboard shows it
SNIPPET = """
import sys, types
try:
{body}
except (ValueError, OSError, RuntimeError) as err:
    print(f"error: {{str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__}}", file=sys.stderr)
    sys.exit(2)
"""


def snippet(body: str) -> list:
    return [sys.executable, "-c", SNIPPET.format(body="\n".join("    " + line for line in body.strip().splitlines()))]


def rows(f: dict, work: Path) -> list[Row]:
    bert, csv = str(f["bert"]), str(f["csv"])
    ev = ["evaluate", "--model", bert, "--task", csv, "--limit", "1"]
    has_cuda = torch.cuda.is_available()

    def metric(name: str):
        return lambda r: (r.json() or {}).get("metric") == name

    return [
        # paths and folders
        Row(
            "model_missing",
            "5",
            "--model is a path that does not exist",
            ["evaluate", "--model", str(work / "nope"), "--task", csv],
        ),
        Row("model_is_file", "5", "--model is a file (a CSV)", ["evaluate", "--model", csv, "--task", csv]),
        Row(
            "model_no_config",
            "5",
            "--model is a folder without config.json",
            ["spectra", "--model", str(f["no_config"])],
        ),
        Row("model_pickle_only", "5", "--model holds only pickle weights", ["spectra", "--model", str(f["pickled"])]),
        Row(
            "csv_missing",
            "5",
            "--task CSV does not exist",
            ["evaluate", "--model", bert, "--task", str(work / "nope.csv")],
        ),
        Row(
            "csv_is_folder",
            "5",
            "--task CSV path is a folder",
            ["evaluate", "--model", bert, "--task", str(f["dir_csv"])],
        ),
        Row("plan_is_folder", "5", "--plan is a folder", ["compress", "--model", bert, "--plan", str(f["dir_plan"])]),
        Row(
            "plan_missing",
            "5",
            "--plan does not exist",
            ["compress", "--model", bert, "--plan", str(work / "nope.json")],
        ),
        Row(
            "plan_not_json", "5", "--plan is not JSON", ["compress", "--model", bert, "--plan", str(f["bad_json_plan"])]
        ),
        Row(
            "plan_unknown_layer",
            "5",
            "--plan names a layer the model lacks",
            ["compress", "--model", bert, "--plan", str(f["unknown_layer_plan"])],
        ),
        Row(
            "plan_rank_zero",
            "5",
            "--plan holds a rank of 0",
            ["compress", "--model", bert, "--plan", str(f["zero_rank_plan"])],
        ),
        # CSV contents
        Row("csv_empty_file", "5", "CSV file is empty", ["evaluate", "--model", bert, "--task", str(f["empty_csv"])]),
        Row(
            "csv_no_columns",
            "5",
            "CSV lacks text/label columns",
            ["evaluate", "--model", bert, "--task", str(f["no_columns"])],
        ),
        Row("csv_binary", "5", "CSV is binary garbage", ["evaluate", "--model", bert, "--task", str(f["binary_csv"])]),
        Row(
            "csv_na_texts",
            "11",
            "texts 'NA', 'None', 'null', 'NaN' are reviews",
            ["evaluate", "--model", bert, "--task", str(f["na"]), "--json"],
            expect="ok",  # all 80 rows kept: 8 validation examples, as without the NA texts
            check=lambda r: (r.json() or {}).get("examples") == 8,
        ),
        Row(
            "csv_huge_row",
            "10",
            "one 4.8 MB CSV cell (bounded time)",
            ["evaluate", "--model", bert, "--task", str(f["huge"]), "--split", "train", "--limit", "1", "--json"],
            expect="ok",
            check=metric("accuracy"),
            timeout=60,
        ),
        Row(
            "split_empty",
            "5",
            "the validation split is empty (4 rows)",
            ["evaluate", "--model", bert, "--task", str(f["few"])],
        ),
        Row(
            "split_unknown",
            "5",
            "--split names no split",
            ["evaluate", "--model", bert, "--task", csv, "--split", "dev"],
        ),
        # labels and tasks
        Row(
            "labels_other_names",
            "3",
            "fresh/rotten CSV on a negative/positive model",
            ["evaluate", "--model", bert, "--task", str(f["fresh_rotten"]), "--json"],
        ),
        Row(
            "labels_more_classes",
            "3",
            "3-class CSV on a 2-label model",
            ["evaluate", "--model", bert, "--task", str(f["three"])],
        ),
        Row(
            "labels_fewer_classes",
            "3",
            "2-class CSV on a 6-label model",
            ["evaluate", "--model", str(f["bert6"]), "--task", csv],
        ),
        Row(
            "labels_other_order",
            "3",
            "model {0: positive, 1: negative} on a negative/positive CSV (mapped by name)",
            ["evaluate", "--model", str(f["swapped"]), "--task", csv, "--json"],
            expect="ok",
            check=lambda r: abs((r.json() or {}).get("loss", -1) - f["bert_loss"]) < 1e-5 * f["bert_loss"],
        ),
        Row(
            "task_default_unrelated",
            "3",
            "6-label model without --task (no recorded task)",
            ["evaluate", "--model", str(f["bert6"]), "--limit", "1"],
        ),
        Row(
            "task_default_classifier",
            "3",
            "classifier without --task (no recorded task)",
            ["fisher", "--model", bert, *STATS],
        ),
        Row(
            "task_default_recorded",
            "3",
            "a fine-tuned model evaluated without --task uses its recorded task",
            ["evaluate", "--model", str(work / "tuned"), "--limit", "1", "--json"],
            expect="ok",
            check=lambda r: (r.json() or {}).get("task") == "sentiment",
            before=[["finetune", "--model", bert, "--task", csv, "--max-steps", "1", "--out", str(work / "tuned")]],
        ),
        Row(
            "task_lm_on_classifier",
            "3",
            "a text task on a classifier",
            ["evaluate", "--model", str(f["llama"]), "--task", csv],
        ),
        # devices, limits, options
        Row("device_bad", "5", "--device tpu9", ev + ["--device", "tpu9"]),
        Row(
            "device_cuda",
            "5",
            "--device cuda" + ("" if has_cuda else " without a GPU"),
            ev + ["--device", "cuda", "--json"],
            expect="ok" if has_cuda else "error",
            check=metric("accuracy"),
        ),
        Row("limit_zero", "5", "--limit 0", ["evaluate", "--model", bert, "--task", csv, "--limit", "0"]),
        Row("limit_negative", "5", "--limit -3", ["evaluate", "--model", bert, "--task", csv, "--limit", "-3"]),
        Row("threads_zero", "5", "--threads 0", ev + ["--threads", "0"]),
        Row(
            "limit_not_a_number",
            "5",
            "--limit x (argparse)",
            ["evaluate", "--model", bert, "--task", csv, "--limit", "x"],
        ),
        Row(
            "option_misspelt",
            "5",
            "--option solvr=em for tfwsvd",
            ["compress", "--model", bert, "--task", csv, "--method", "tfwsvd", "--option", "solvr=em", *STATS],
        ),
        Row(
            "option_max_iters_negative",
            "11",
            "--option max_iters=-1 for tfwsvd",
            ["compress", "--model", bert, "--task", csv, "--method", "tfwsvd", "--option", "max_iters=-1", *STATS],
        ),
        Row(
            "option_wrong_type",
            "5",
            "--option alpha=abc for asvd",
            ["compress", "--model", bert, "--task", csv, "--method", "asvd", "--option", "alpha=abc", *STATS],
        ),
        Row("option_no_value", "5", "--option without '='", ["compress", "--model", bert, "--option", "solver"]),
        Row("method_unknown", "5", "--method nope", ["compress", "--model", bert, "--method", "nope"]),
        Row("keep_out_of_range", "5", "--keep 1.5", ["compress", "--model", bert, "--keep", "1.5"]),
        Row(
            "risk_unweighted_method",
            "5",
            "risk --method svd",
            ["risk", "--model", bert, "--task", csv, "--method", "svd", *STATS],
        ),
        Row(
            "budget_out_of_range",
            "5",
            "allocate --budget 2.0",
            ["allocate", "--model", bert, "--task", csv, "--budget", "2.0", *STATS],
        ),
        # weights
        Row("truncated_safetensors", "5", "model.safetensors truncated", ["spectra", "--model", str(f["truncated"])]),
        Row(
            "nan_weights_evaluate", "6", "a NaN weight, evaluate", ["evaluate", "--model", str(f["nan"]), "--task", csv]
        ),
        Row("inf_weights_spectra", "6", "an infinite weight, spectra", ["spectra", "--model", str(f["inf"])]),
        Row(
            "compressed_missing_layer",
            "5",
            "lowrank.json lacks a factorized layer",
            ["evaluate", "--model", str(f["small_missing"]), "--task", csv],
        ),
        Row(
            "compressed_wrong_rank",
            "5",
            "lowrank.json rank disagrees with the weights",
            ["evaluate", "--model", str(f["small_rank"]), "--task", csv],
        ),
        Row(
            "compressed_bad_json",
            "5",
            "lowrank.json is not JSON",
            ["evaluate", "--model", str(f["small_badjson"]), "--task", csv],
        ),
        Row(
            "compressed_truncated",
            "5",
            "compressed model.safetensors truncated",
            ["evaluate", "--model", str(f["small_truncated"]), "--task", csv],
        ),
        Row(
            "compressed_ram_short",
            "io",
            "load_compressed when RAM is short (library)",
            snippet(
                f"import psutil\npsutil.virtual_memory = lambda: types.SimpleNamespace(available=10**6, total=2*10**6, "
                f"percent=50.0, used=10**6, free=10**6)\nfrom lowrank import load_compressed\n"
                f"load_compressed({str(f['small'])!r})"
            ),
        ),
        # outputs and caches (the other half of the issue)
        Row(
            "out_onto_foreign_folder",
            "io",
            "compress --out onto a folder holding a user's file",
            ["compress", "--model", bert, "--keep", "0.5", "--out", str(work / "mine")],
            keep=[work / "mine" / "notes.txt"],
            setup=lambda cache: foreign_folder(work / "mine"),
        ),
        Row(
            "finetune_out_onto_foreign_folder",
            "io",
            "finetune --out onto a folder holding a user's file",
            ["finetune", "--model", bert, "--task", csv, "--max-steps", "1", "--out", str(work / "mine2")],
            keep=[work / "mine2" / "notes.txt"],
            setup=lambda cache: foreign_folder(work / "mine2"),
        ),
        Row(
            "out_onto_file",
            "io",
            "compress --out onto an existing file",
            ["compress", "--model", bert, "--keep", "0.5", "--out", str(work / "a-file")],
            keep=[work / "a-file"],
            setup=lambda cache: (work / "a-file").write_text("keep me\n"),
        ),
        Row(
            "plan_out_onto_folder",
            "io",
            "allocate --out onto a folder holding a user's file",
            ["allocate", "--model", bert, "--budget", "0.5", "--strategy", "uniform", "--out", str(work / "plans")],
            keep=[work / "plans" / "notes.txt"],
            setup=lambda cache: foreign_folder(work / "plans"),
        ),
        Row(
            "fisher_cache_corrupt",
            "io",
            "a corrupt Fisher cache entry",
            ["fisher", "--model", bert, "--task", csv, *STATS, "--json"],
            expect="any",
            check=lambda r: isinstance(r.json(), list) and len(r.json()) == 12,
            setup=corrupt_statistics("fisher", f["bert"], f["csv"]),
        ),
        Row(
            "moments_cache_corrupt",
            "io",
            "a corrupt activation-moments cache entry",
            ["compress", "--model", bert, "--task", csv, "--method", "svd_llm", *STATS, "--json"],
            expect="any",
            check=lambda r: (r.json() or {}).get("layers") == 12,
            setup=corrupt_statistics("moments", f["bert"], f["csv"]),
        ),
        Row(
            "run_store_corrupt",
            "io",
            "runs.sqlite is not a database (library, as the dashboard opens it)",
            snippet("from lowrank.experiments.store import RunStore\nprint(len(RunStore().runs()))"),
            expect="any",
            setup=corrupt_store,
        ),
        *fault_rows.rows(f, work, Row, snippet),
    ]


# ---------------------------------------------------------------- running and classifying


def private_cache(root: Path, shared: Path) -> Path:
    cache = Path(tempfile.mkdtemp(prefix="cache-", dir=root))
    for name in SHARED_CACHE:
        if (shared / name).exists():
            (cache / name).symlink_to(shared / name, target_is_directory=True)
    return cache


def execute(argv: list, cache: Path, timeout: float) -> Result:
    command = list(argv) if argv and argv[0] == sys.executable else [sys.executable, "-m", "lowrank", *map(str, argv)]
    env = {
        **os.environ,
        "LOWRANK_CACHE": str(cache),
        "LOWRANK_OFFLINE": "1",
        "LOWRANK_THREADS": "1",
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")]),
    }
    start = time.perf_counter()
    try:
        proc = subprocess.run(
            command, capture_output=True, text=True, env=env, timeout=timeout, stdin=subprocess.DEVNULL
        )
        return Result(proc.returncode, proc.stdout, proc.stderr, time.perf_counter() - start)
    except subprocess.TimeoutExpired as err:
        out = err.stdout.decode(errors="replace") if isinstance(err.stdout, bytes) else (err.stdout or "")
        errs = err.stderr.decode(errors="replace") if isinstance(err.stderr, bytes) else (err.stderr or "")
        return Result(None, out, errs, time.perf_counter() - start, timed_out=True)


def error_lines(err: str) -> list[str]:
    return [line.strip() for line in err.replace("\r", "\n").splitlines() if line.strip()]


def classify(row: Row, result: Result) -> tuple[str, str]:
    """(outcome, detail) of one row's run."""
    lines = error_lines(result.err)
    last = lines[-1] if lines else ""
    lost = [str(p) for p in row.keep if not Path(p).exists()]
    if lost:
        return "data lost", f"gone: {', '.join(lost)}"
    if result.timed_out:
        return "traceback", f"killed after {result.seconds:.0f} s"
    if "Traceback (most recent call last)" in result.err:
        return "traceback", last[:200]
    if result.code == 2:
        errors = [line for line in lines if line.startswith("error: ")]
        if len(errors) == 1 and last == errors[0]:
            return "clear error", last[:200]
        return "traceback", f"exit 2 without one clean error line: {last[:160]}"
    if result.code == 0:
        if row.expect == "error":
            return (
                "silent wrong",
                f"accepted: {result.out.strip().splitlines()[-1][:160] if result.out.strip() else ''}",
            )
        if row.check is not None and not row.check(result):
            return "silent wrong", f"wrong result: {result.out.strip()[:160]}"
        return "handled", "ok"
    return "traceback", f"exit {result.code}: {last[:160]}"


def passed(row: Row, outcome: str) -> bool:
    wanted = {"error": {"clear error"}, "ok": {"handled"}, "any": {"clear error", "handled"}}[row.expect]
    return outcome in wanted


def run_row(row: Row, root: Path, shared: Path) -> dict:
    cache = private_cache(root, shared)
    if row.setup is not None:
        row.setup(cache)
    for step in row.before:
        prep = execute(step, cache, row.timeout)
        if prep.code != 0:
            return {
                "row": row.name,
                "defect": row.defect,
                "case": row.case,
                "expect": row.expect,
                "outcome": "traceback",
                "pass": False,
                "exit": prep.code,
                "seconds": round(prep.seconds, 1),
                "detail": f"preparation failed: {error_lines(prep.err)[-1:] or prep.code}",
            }
    result = execute(row.argv, cache, row.timeout)
    outcome, detail = classify(row, result)
    return {
        "row": row.name,
        "defect": row.defect,
        "case": row.case,
        "expect": row.expect,
        "outcome": outcome,
        "pass": passed(row, outcome),
        "exit": result.code,
        "seconds": round(result.seconds, 1),
        "detail": detail,
    }


def fuzz(args) -> None:
    """Run the generated-input tests with ``args.fuzz`` examples each; count the outcomes of every case."""
    root = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory() as folder:
        log = Path(folder) / "cases.jsonl"
        env = {
            **os.environ,
            "LOWRANK_FUZZ_EXAMPLES": str(args.fuzz),
            "LOWRANK_FUZZ_LOG": str(log),
            "OMP_NUM_THREADS": "1",
            "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]),
        }
        test = root / "tests" / "robustness" / "test_generated_inputs.py"
        command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(test)]
        start = time.perf_counter()
        proc = subprocess.run(command, env=env, cwd=root, capture_output=True, text=True)
        cases = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    results = [
        {"test": name, "outcome": outcome, "cases": n}
        for (name, outcome), n in sorted(Counter((c["test"], c["outcome"]) for c in cases).items())
    ]
    summary = {
        "examples_per_test": args.fuzz,
        "cases": len(cases),
        "counts": dict(Counter(c["outcome"] for c in cases)),
        "pytest": proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else f"exit {proc.returncode}",
        "failed": proc.returncode != 0,
        "seconds": round(time.perf_counter() - start, 1),
    }
    if proc.returncode != 0:
        print(proc.stdout[-4000:])
    write("fault_matrix_fuzz", args, results, {"summary": summary})
    print(f"{summary['cases']} generated cases: {summary['counts']}; pytest: {summary['pytest']}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", type=int, help="run only the first N rows")
    p.add_argument("--rows", help="comma-separated row names to run")
    p.add_argument("--keep-files", action="store_true", help="keep the temporary folder (its path is printed)")
    p.add_argument("--out", help="JSON output path (default benchmarks/results/fault_matrix.json)")
    p.add_argument("--fuzz", type=int, metavar="N", help="run the generated-input tests with N examples each instead")
    args = p.parse_args()
    args.device = "cpu"
    if args.fuzz:
        return fuzz(args)
    shared = cache_dir()  # the real cache: its offline assets are linked into each row's cache
    root = Path(tempfile.mkdtemp(prefix="lowrank-faults-"))
    try:
        print(f"building tiny models and inputs in {root} ...", flush=True)
        fixtures = build_fixtures(root / "fixtures")
        table = rows(fixtures, root / "work")
        (root / "work").mkdir(exist_ok=True)
        if args.rows:
            wanted = {name.strip() for name in args.rows.split(",")}
            unknown = sorted(wanted - {r.name for r in table})
            if unknown:
                p.error(f"unknown row(s) {unknown}; known: {', '.join(r.name for r in table)}")
            table = [r for r in table if r.name in wanted]
        if args.only is not None:
            table = table[: max(0, args.only)]
        results = []
        for index, row in enumerate(table, 1):
            results.append(run_row(row, root, shared))
            print(
                f"[{index}/{len(table)}] {row.name}: {results[-1]['outcome']} ({results[-1]['seconds']} s)", flush=True
            )
        counts = Counter(r["outcome"] for r in results)
        summary = {
            "counts": {o: counts.get(o, 0) for o in OUTCOMES},
            "rows": len(results),
            "passed": sum(r["pass"] for r in results),
        }
        write("fault_matrix", args, results, {"summary": summary})
        print(
            ", ".join(f"{o}: {n}" for o, n in summary["counts"].items())
            + f"; {summary['passed']}/{len(results)} as expected"
        )
    finally:
        if args.keep_files:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
