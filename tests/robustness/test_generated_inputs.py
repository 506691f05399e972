"""Generated bad input (hypothesis): numeric flags, plan JSON, CSV label columns and model configs.

Every generated case must end in exit 0 with a correct result or exit 2 with one ``error:`` line, within a time
bound. Examples per test: :data:`EXAMPLES` (``$LOWRANK_FUZZ_EXAMPLES``; ``benchmarks/fault_matrix.py --fuzz`` runs
more); with ``$LOWRANK_FUZZ_LOG`` each case's outcome is appended there as a JSON line.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lowrank.cli.main import build_parser, main
from lowrank.data import load_task
from lowrank.validate import label_name
from tests.conftest import sentiment_frame

EXAMPLES = int(os.environ.get("LOWRANK_FUZZ_EXAMPLES", "12"))
SECONDS = 60.0  # the time bound of one case (a model load and one command on a tiny model take about a second)
SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,  # the bound is SECONDS, asserted per case (the first case also pays for imports)
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    derandomize=os.environ.get("LOWRANK_FUZZ_EXAMPLES") is None,  # make test: the same cases every run
)
NUMBER_TEXT = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.integers(min_value=-(10**30), max_value=10**30).map(str),
    st.sampled_from(["0", "-0", "nan", "inf", "-inf", "1e400", "", " ", "x", "0x10", "1_000", "1.5e-300", "Infinity"]),
)


def record(test: str, outcome: str) -> None:
    log = os.environ.get("LOWRANK_FUZZ_LOG")
    if log:
        with open(log, "a") as fh:
            fh.write(json.dumps({"test": test, "outcome": outcome}) + "\n")


def run_cli(*argv) -> tuple[int, str, str, float]:
    out, err = io.StringIO(), io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue(), time.perf_counter() - start


def outcome(test: str, code: int, err: str, seconds: float, correct) -> None:
    """Assert the contract for one case (exit 0 and ``correct()``, or exit 2 and one last ``error:`` line)."""
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.strip()]
    assert seconds < SECONDS, f"took {seconds:.0f} s"
    assert "Traceback" not in err, err[-2000:]
    if code == 2:
        assert lines and lines[-1].startswith("error: "), err[-2000:]
        assert sum(line.startswith("error: ") for line in lines) == 1, err[-2000:]
        record(test, "clear error")
    else:
        assert code == 0 and correct(), (code, err[-2000:])
        record(test, "handled")


# ---------------------------------------------------------------- numeric flags


def numeric_flags() -> list[tuple[str, str, object]]:
    """``(command, flag, limits)`` of every numeric option of every command."""
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    found = []
    for command, cmd_parser in sub.choices.items():
        for action in cmd_parser._actions:
            assert action.type not in (int, float), f"{command} {action.option_strings}: an unchecked number"
            if hasattr(action.type, "limits"):
                found.append((command, action.option_strings[0], action.type.limits))
    return found


FLAGS = numeric_flags()


def test_every_numeric_flag_is_checked():
    assert len(FLAGS) > 20 and {("finetune", "--lr"), ("ranks", "--tol")} <= {(c, f) for c, f, _ in FLAGS}


@SETTINGS
@given(case=st.sampled_from(FLAGS), text=NUMBER_TEXT)
def test_numeric_flags_accept_only_their_range(case, text):
    command, flag, limits = case
    required = ["--budget", "0.5"] if command == "allocate" and flag != "--budget" else []
    err = io.StringIO()
    start = time.perf_counter()
    try:
        with contextlib.redirect_stderr(err):
            args = build_parser().parse_args([command, *required, f"{flag}={text}"])
    except SystemExit as stop:
        outcome("numeric flag", stop.code, err.getvalue(), time.perf_counter() - start, lambda: False)
        return
    value = getattr(
        args,
        next(
            a.dest
            for a in build_parser()._subparsers._group_actions[0].choices[command]._actions
            if flag in a.option_strings
        ),
    )
    outcome("numeric flag", 0, "", time.perf_counter() - start, lambda: limits.check(value, flag) == value)


@SETTINGS
@given(text=NUMBER_TEXT)
def test_ranks_tol_end_to_end(tiny_bert_dir, text):
    code, out, err, seconds = run_cli("ranks", "--model", tiny_bert_dir, f"--tol={text}", "--summary", "--json")
    outcome("ranks --tol", code, err, seconds, lambda: 0 < float(text) < 1 and "numerical_rank" in json.loads(out))


# ---------------------------------------------------------------- plan JSON

LAYERS = [f"bert.encoder.layer.{i}.{name}" for i in (0, 1) for name in ("attention.self.query", "intermediate.dense")]
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**6), 10**6) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)


@st.composite
def plan_texts(draw) -> str:
    kind = draw(st.sampled_from(["random", "valid", "duplicate", "deep", "bad rank"]))
    if kind == "random":
        return json.dumps(draw(JSON_VALUES | st.fixed_dictionaries({"ranks": JSON_VALUES})))
    if kind == "deep":
        depth = draw(st.integers(1, 200_000))
        return '{"ranks": ' + '{"a": ' * depth + "1" + "}" * (depth + 1)
    names = draw(st.lists(st.sampled_from(LAYERS), min_size=1, max_size=4, unique=kind != "duplicate"))
    if kind == "duplicate":
        names = [*names, names[0]]
    ranks = [
        draw(st.integers(1, 20)) if kind != "bad rank" else draw(st.integers(-5, 0) | st.just(10**9)) for _ in names
    ]
    return "{" + '"ranks": {' + ", ".join(f'"{n}": {r}' for n, r in zip(names, ranks)) + "}}"


@SETTINGS
@given(text=plan_texts())
def test_plans(tiny_bert_dir, text):
    with tempfile.TemporaryDirectory() as folder:
        plan = Path(folder) / "plan.json"
        plan.write_text(text)
        code, out, err, seconds = run_cli("compress", "--model", tiny_bert_dir, "--plan", plan, "--json")

    def correct() -> bool:
        ranks = json.loads(text)["ranks"]  # a plan accepted whole: every layer factorized as written
        return json.loads(out)["layers"] == len(ranks) > 0

    outcome("plan JSON", code, err, seconds, correct)


# ---------------------------------------------------------------- CSV label columns


def spellings(value: float) -> st.SearchStrategy[str]:
    whole = float(value).is_integer()
    base = str(int(value)) if whole else repr(float(value))
    forms = [base, f" {base} ", f"\u00a0{base}\t", f"+{base}" if value >= 0 else base, f"{float(value)}"]
    forms += [f"0{base}", base.translate(str.maketrans("0123456789", "０１２３４５６７８９"))] if value >= 0 else []
    forms += [f"{base}.0", f"{int(value)}e0"] if whole else [f"{base}0"]
    return st.sampled_from(forms)


@SETTINGS
@given(
    classes=st.lists(
        st.integers(-3, 12) | st.sampled_from([0.5, 2.25, -1.5]), min_size=2, max_size=4, unique_by=lambda v: float(v)
    ),
    data=st.data(),
    words=st.sampled_from([None, ["café", "cafe\u0301", " café "], ["Ｐos", "Pos"]]),
)
def test_label_columns(classes, data, words):
    rows = 24
    truth = [data.draw(st.integers(0, len(classes) - 1)) for _ in range(rows)]
    if words is not None:  # one text class, spelt in equivalent Unicode forms, beside the numbers
        labels = [data.draw(st.sampled_from(words)) if t == 0 else data.draw(spellings(classes[t])) for t in truth]
    else:
        labels = [data.draw(spellings(classes[t])) for t in truth]
    frame = pd.DataFrame({"text": sentiment_frame()["text"].iloc[:rows].tolist(), "label": labels})
    frame["split"] = ["train", "validation", "test"] * (rows // 3)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "labels.csv"
        frame.to_csv(path, index=False)
        start = time.perf_counter()
        try:
            task = load_task(str(path))
        except ValueError as err:  # fewer than two classes present is the only refusal expected here
            outcome("CSV labels", 2, f"error: {err}", time.perf_counter() - start, lambda: False)
            assert len(set(truth)) < 2, err
            return

    def correct() -> bool:
        got = [y for split in ("train", "validation", "test") for y in task.labels[split]]
        order = [i for split in ("train", "validation", "test") for i in range(rows) if frame["split"][i] == split]
        same = {(truth[i], got[k]) for k, i in enumerate(order)}
        return task.num_labels == len(set(truth)) and len(same) == len(set(truth))  # one id per class, and back

    outcome("CSV labels", 0, "", time.perf_counter() - start, correct)
    assert all(label_name(n) == n for n in task.label_names)


# ---------------------------------------------------------------- configs with random sizes

SIZE = st.one_of(
    st.integers(-(10**12), 10**12),
    st.sampled_from([0, 1, 2, 4, 64, 256, 30522, 100_000, 2**40]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["64", None, True, [64]]),
)
FIELDS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size")


@SETTINGS
@given(changes=st.dictionaries(st.sampled_from(FIELDS), SIZE, min_size=1, max_size=3))
def test_configs_with_random_sizes(tmp_path_factory, tiny_bert_dir, changes):
    folder = Path(tempfile.mkdtemp(dir=tmp_path_factory.getbasetemp()))
    shutil.copytree(tiny_bert_dir, folder / "model")
    config = json.loads((folder / "model" / "config.json").read_text())
    config.update(changes)
    (folder / "model" / "config.json").write_text(json.dumps(config))
    code, out, err, seconds = run_cli("spectra", "--model", folder / "model", "--json")
    shutil.rmtree(folder)

    def correct() -> bool:  # sizes the weights fit (another head count may): the checkpoint's 12 matrices
        return len(json.loads(out)) == 12

    outcome("config sizes", code, err, seconds, correct)


@pytest.mark.parametrize("field", FIELDS)
def test_a_size_of_the_wrong_type_is_named(tmp_path, tiny_bert_dir, field, capsys):
    shutil.copytree(tiny_bert_dir, tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    (tmp_path / "m" / "config.json").write_text(json.dumps({**config, field: 64.5}))
    assert main(["spectra", "--model", str(tmp_path / "m")]) == 2
    assert field in capsys.readouterr().err.splitlines()[-1]
