"""Rows of the fault matrix for the reliability issue's classes 1-6 (:mod:`fault_matrix` runs them).

Classes 1-3: user folders named like a writer's set-aside copy (``.<name>.old-<n>``) next to an output or a
loaded model; a compressed folder whose config asks for custom code (``auto_map`` + its own ``model_type``); a
checkpoint missing one encoder weight, a fine-tuned classifier missing its head. Classes 4-6: malformed models and stores, inputs that mean nothing or two things,
readers during a replacement (two processes).
"""

from __future__ import annotations

import json
import shutil
import sys
import textwrap
from pathlib import Path

from safetensors.torch import load_file, save_file

QUERY = "bert.encoder.layer.0.attention.self.query.weight"
LAYER = "bert.encoder.layer.0.intermediate.dense"
STATS = ["--fisher-batches", "1", "--fisher-batch-size", "4"]  # the statistics pass of a run that gets that far
# A reader loading a compressed folder in a loop while a second process replaces it with another version.
READERS = """
import json, subprocess, sys, time
from lowrank.compress import load_compressed, low_rank_layers
try:
    from lowrank.files.readers import FolderReplaced
except ImportError:  # code without the replacement check: every failure is counted
    FolderReplaced = ()
target, a, b = sys.argv[1:4]
writer = subprocess.Popen([sys.executable, "-c", '''
import sys, time
from lowrank.compress import load_compressed, save_compressed
versions = [load_compressed(p) for p in sys.argv[2:4]]
end, i = time.time() + 6, 0
print("ready", flush=True)
while time.time() < end:
    save_compressed(versions[i % 2], sys.argv[1]); i += 1
''', target, a, b], stdout=subprocess.PIPE, text=True)
writer.stdout.readline()
counts = {"whole": 0, "retry": 0, "mixed": 0}
while writer.poll() is None:
    try:
        m = load_compressed(target).model
        ok = {n: l.rank for n, l in low_rank_layers(m).items()} == m.lowrank_info.ranks
        counts["whole" if ok else "mixed"] += 1
    except FolderReplaced:
        counts["retry"] += 1
    except Exception as err:
        counts["mixed"] += 1
print(json.dumps(counts))
"""


def _copy_with(source: Path, folder: Path, config: dict | None = None, drop: tuple = ()) -> Path:
    """A copy of a model folder with ``config`` entries changed and the tensors ``drop`` removed."""
    shutil.copytree(source, folder)
    if config:
        data = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**data, **config}))
    if drop:
        tensors = {k: v for k, v in load_file(folder / "model.safetensors").items() if k not in drop}
        save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    return folder


def build(f: dict, root: Path) -> None:
    """Add this module's fixtures to ``f`` (``build_fixtures`` made the models, CSVs and compressed folders)."""
    from lowrank import compress, load_model, save_compressed

    shape = _copy_with(f["bert"], root / "shape")
    tensors = load_file(shape / "model.safetensors")
    tensors[QUERY] = tensors[QUERY][:32].contiguous()
    save_file(tensors, shape / "model.safetensors", metadata={"format": "pt"})
    f["shape"] = shape
    f["negative_hidden"] = _copy_with(f["bert"], root / "negative_hidden", {"hidden_size": -64})
    f["many_layers"] = _copy_with(f["bert"], root / "many_layers", {"num_hidden_layers": 100_000})
    f["no_encoder_weight"] = _copy_with(f["bert"], root / "no_encoder_weight", drop=(QUERY,))
    f["no_head"] = _copy_with(f["bert"], root / "no_head", drop=("classifier.weight", "classifier.bias"))
    f["custom_code"] = _copy_with(
        f["small"], root / "custom_code", {"model_type": "my-bert", "auto_map": {"AutoModel": "modeling.MyModel"}}
    )
    f["deep_plan"] = root / "deep.json"
    f["deep_plan"].write_text('{"ranks": ' + '{"a": ' * 100_000 + "1" + "}" * 100_001)
    f["twice_plan"] = root / "twice.json"
    f["twice_plan"].write_text(f'{{"ranks": {{"{LAYER}": 4, "{LAYER}": 8}}}}')
    f["empty_plan"] = root / "empty.json"
    f["empty_plan"].write_text('{"ranks": {}}')
    f["store_folder"] = root / "store-folder"
    f["store_folder"].mkdir()
    f["mixed_labels"] = root / "mixed.csv"
    lines = ["text,label"] + [f"{t},{lab}" for t, lab in zip(_texts(40), ["1", "1.0", "0", " 0.0 "] * 10)]
    f["mixed_labels"].write_text("\n".join(lines) + "\n")
    loaded = load_model(str(f["bert"]))
    f["version_b"] = save_compressed(compress(loaded, 0.8), root / "version_b")


def _texts(n: int) -> list[str]:
    return [f"review number {i}" for i in range(n)]


def old_looking(folder: Path):
    """A setup making the user's folder ``.<name>.old-<n>`` next to ``folder``, with a file of theirs in it."""

    def setup(cache: Path) -> Path:
        mine = folder.with_name(f".{folder.name}.old-99999999")  # a number no live process has
        mine.mkdir(parents=True, exist_ok=True)
        (mine / "notes.txt").write_text("the user's own file\n")
        return mine

    return setup


def rows(f: dict, work: Path, Row, snippet) -> list:
    """The rows of classes 1-6 (``Row`` and ``snippet`` are :mod:`fault_matrix`'s)."""
    bert, csv = str(f["bert"]), str(f["csv"])
    model_copy = work / "model-copy"
    return [
        # class 1: a user's folder that looks like a set-aside copy
        Row(
            "old_named_folder_by_output",
            "1",
            "a user's .<out>.old-<n> folder next to compress --out",
            ["compress", "--model", bert, "--keep", "0.5", "--out", str(work / "out1")],
            expect="ok",
            keep=[work / ".out1.old-99999999" / "notes.txt"],
            setup=old_looking(work / "out1"),
        ),
        Row(
            "old_named_folder_by_model",
            "1",
            "a user's .<model>.old-<n> folder next to a loaded model",
            ["spectra", "--model", str(model_copy)],
            expect="ok",
            keep=[work / ".model-copy.old-99999999" / "notes.txt"],
            setup=lambda cache: (shutil.copytree(f["bert"], model_copy), old_looking(model_copy)(cache)),
        ),
        # class 2: custom code asked for by a compressed folder
        Row(
            "compressed_custom_code",
            "2",
            "compressed folder whose config has auto_map + its own model_type",
            ["evaluate", "--model", str(f["custom_code"]), "--task", csv, "--limit", "1"],
        ),
        # class 3: weights missing
        Row(
            "missing_encoder_weight",
            "3",
            "weights file missing one encoder weight",
            ["evaluate", "--model", str(f["no_encoder_weight"]), "--task", csv, "--limit", "1"],
        ),
        Row(
            "classifier_missing_head",
            "3",
            "a fine-tuned classifier missing its head",
            ["evaluate", "--model", str(f["no_head"]), "--task", csv, "--limit", "1"],
        ),
        # class 4: malformed models and stores
        Row(
            "weight_wrong_shape",
            "4",
            "a weight of the wrong shape",
            ["evaluate", "--model", str(f["shape"]), "--task", csv, "--limit", "1"],
        ),
        Row(
            "config_negative_hidden",
            "4",
            "config hidden_size: -64",
            ["evaluate", "--model", str(f["negative_hidden"]), "--task", csv],
        ),
        Row(
            "config_many_layers",
            "4",
            "config num_hidden_layers: 100000 (bounded time)",
            ["spectra", "--model", str(f["many_layers"])],
            timeout=60,
        ),
        Row(
            "plan_deeply_nested",
            "4",
            "plan JSON of 100,000 nested objects",
            ["compress", "--model", bert, "--plan", str(f["deep_plan"])],
        ),
        Row("store_is_folder", "4", "report --store a folder", ["report", "--store", str(f["store_folder"])]),
        Row(
            "default_store_is_folder",
            "4",
            "runs.sqlite in the cache is a folder",
            ["report"],
            setup=lambda cache: (cache / "runs.sqlite").mkdir(),
        ),
        # class 5: inputs that mean nothing, or two things
        Row(
            "labels_1_and_1_0",
            "5",
            "labels written 1 and 1.0 (and 0, ' 0.0 '): two classes",
            ["evaluate", "--model", bert, "--task", str(f["mixed_labels"]), "--json"],
            expect="ok",
            check=lambda r: (r.json() or {}).get("metric") == "accuracy",
        ),
        Row(
            "plan_layer_twice",
            "5",
            "a plan with a layer key twice",
            ["compress", "--model", bert, "--plan", str(f["twice_plan"])],
        ),
        Row(
            "plan_empty_ranks",
            "5",
            "a plan with no layer",
            ["compress", "--model", bert, "--plan", str(f["empty_plan"])],
        ),
        Row("out_empty", "5", "compress --out ''", ["compress", "--model", bert, "--out", ""]),
        Row(
            "sequential_inputs_alone",
            "5",
            "--sequential-inputs without --sequential",
            ["compress", "--model", str(f["llama"]), "--sequential-inputs", "dense"],
        ),
        Row(
            "solver_twice",
            "5",
            "--solver als with --option solver=em",
            [
                "compress",
                "--model",
                bert,
                "--task",
                csv,
                "--method",
                "tfwsvd",
                "--solver",
                "als",
                "--option",
                "solver=em",
                *STATS,
            ],
        ),
        Row(
            "epochs_nan",
            "5",
            "finetune --epochs nan",
            ["finetune", "--model", bert, "--task", csv, "--epochs", "nan", "--out", str(work / "ft")],
        ),
        Row(
            "lr_zero",
            "5",
            "finetune --lr 0",
            ["finetune", "--model", bert, "--task", csv, "--lr", "0", "--out", str(work / "ft")],
        ),
        Row("tol_nan", "5", "ranks --tol nan", ["ranks", "--model", bert, "--tol", "nan"]),
        Row("tol_negative", "5", "ranks --tol -1", ["ranks", "--model", bert, "--tol", "-1"]),
        Row(
            "option_nan",
            "5",
            "--option alpha=NaN for asvd",
            ["compress", "--model", bert, "--task", csv, "--method", "asvd", "--option", "alpha=NaN", *STATS],
        ),
        Row(
            "store_over_text_file",
            "5",
            "report --store notes.txt (a user's text file)",
            ["report", "--store", str(work / "notes.txt")],
            keep=[work / "notes.txt"],
            setup=lambda cache: (work / "notes.txt").write_text("my notes\n"),
        ),
        # class 6: readers during a replacement
        Row(
            "readers_during_replacement",
            "6",
            "load_compressed in a loop while another process replaces the folder",
            [
                sys.executable,
                "-c",
                textwrap.dedent(READERS),
                str(work / "replaced"),
                str(f["small"]),
                str(f["version_b"]),
            ],
            expect="ok",
            check=lambda r: (r.json() or {}).get("mixed") == 0 and (r.json() or {}).get("whole", 0) > 0,
            setup=lambda cache: shutil.copytree(f["small"], work / "replaced"),
            timeout=120,
        ),
    ]
