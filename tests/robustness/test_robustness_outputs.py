"""Outputs never destroy what a user owns, survive a killed save, follow the umask; loading checks RAM first."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from lowrank.allocation import allocate
from lowrank.card import CARD_FILE
from lowrank.cli.main import main
from lowrank.compress import compress, load_compressed, save_compressed
from lowrank.files.atomic import OWNER, PAUSE_ENV, atomic_write_bytes, recover
from lowrank.files.outputs import MARKER, OutputError
from lowrank.models.errors import ModelLoadError
from lowrank.processes import own_start
from tests.robustness.leftovers import dead_pid, killed_copy

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LOWRANK_CACHE", str(tmp_path / "cache"))


def logits(loaded, texts=("a good film", "a bad film, awful")):
    batch = loaded.tokenizer(list(texts), padding=True, return_tensors="pt")
    with torch.no_grad():
        return loaded.model(**batch).logits


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def user_folder(tmp_path) -> Path:
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("x\n")
    return folder


def hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


# ---------------------------------------------------------------- 1. --out never deletes what is there


def command(name: str, model: Path, task: Path, out: Path) -> list:
    return {
        "compress": ["compress", "--model", model, "--keep", "0.5"],
        "finetune": ["finetune", "--model", model, "--task", task, "--max-steps", "1"],
        "prune": ["prune", "--model", model, "--task", task, "--sparsity", "0.5", "--max-steps", "2"],
        "lpaf": [
            "lpaf",
            "--model",
            model,
            "--task",
            task,
            "--keep",
            "0.5",
            "--prune-max-steps",
            "1",
            "--max-steps",
            "1",
            "--limit",
            "1",
        ],
    }[name] + ["--out", out]


@pytest.mark.parametrize("name", ["compress", "finetune", "prune", "lpaf"])
def test_out_refuses_a_folder_holding_user_files_even_with_force(capsys, tmp_path, tiny_bert_dir, sentiment_csv, name):
    folder = user_folder(tmp_path)
    for extra in ([], ["--force"]):
        code, out, err = run(capsys, *command(name, tiny_bert_dir, sentiment_csv, folder), *extra)
        assert code == 2 and err.startswith("error: ") and err.count("\n") == 1 and "notes.txt" in err, err
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt"] and (folder / "notes.txt").read_text() == "x\n"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no work was started


def test_out_refuses_a_file_and_the_working_directory(capsys, tmp_path, tiny_bert_dir, monkeypatch):
    target = tmp_path / "model.bin"
    target.write_bytes(b"mine")
    code, _, err = run(capsys, "compress", "--model", tiny_bert_dir, "--out", target, "--force")
    assert code == 2 and "is a file" in err and target.read_bytes() == b"mine"

    work = tmp_path / "sub"
    work.mkdir()
    monkeypatch.chdir(work)
    for out in ("../sub", ".", ".."):
        code, _, err = run(capsys, "compress", "--model", tiny_bert_dir, "--out", out, "--force")
        assert code == 2 and "working directory" in err, err
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "cache") == ["model.bin", "sub"]
    assert not list(work.iterdir())


def test_own_outputs_are_replaced_a_marker_less_model_folder_needs_force(capsys, tmp_path, tiny_bert, tiny_bert_dir):
    small = compress(tiny_bert, 0.5)
    out = save_compressed(small, tmp_path / "out")
    assert json.loads((out / MARKER).read_text())["files"] == sorted(p.name for p in out.iterdir() if p.name != MARKER)
    save_compressed(compress(tiny_bert, 0.3), out)  # our own output: replaced without --force
    assert json.loads((out / "lowrank.json").read_text())["ranks"] == compress(tiny_bert, 0.3).model.lowrank_info.ranks
    (out / MARKER).unlink()  # no marker and a README.md: the card may be the user's now, never replaced
    with pytest.raises(OutputError, match="README.md"):
        save_compressed(small, out, force=True)
    (out / CARD_FILE).unlink()  # written by an older version (no marker, no card): lowrank.json marks it as ours
    save_compressed(small, out)
    (out / "notes.txt").write_text("x")  # our folder, but holding a file of the user's: never replaced
    with pytest.raises(OutputError, match="notes.txt"):
        save_compressed(small, out, force=True)
    assert (out / "notes.txt").read_text() == "x"

    plain = tmp_path / "plain"  # a model folder lowrank did not mark (e.g. one of the user's models)
    shutil.copytree(tiny_bert_dir, plain)
    code, _, err = run(capsys, "compress", "--model", tiny_bert_dir, "--out", plain)
    assert code == 2 and "--force" in err and not (plain / "lowrank.json").exists()
    code, _, err = run(capsys, "compress", "--model", tiny_bert_dir, "--out", plain, "--force")
    assert code == 0, err
    assert (plain / "lowrank.json").exists() and (plain / MARKER).exists()

    empty = tmp_path / "empty"
    empty.mkdir()
    assert (save_compressed(small, empty) / "lowrank.json").exists()


def test_plan_file_replaces_only_a_plan(tmp_path, tiny_bert):
    plan = allocate(tiny_bert, 0.5, "uniform")
    notes = tmp_path / "plan.json"
    notes.write_text("my notes\n")
    with pytest.raises(OutputError, match="not written by lowrank"):
        plan.save(notes)
    assert notes.read_text() == "my notes\n"
    folder = tmp_path / "folder.json"
    folder.mkdir()
    with pytest.raises(OutputError, match="is a folder"):
        plan.save(folder)
    path = plan.save(tmp_path / "p.json")
    assert plan.save(path) == path  # an existing plan is replaced


# ---------------------------------------------------------------- 2. killed saves: recoverable, no leaks


CHILD = """
import os, sys
from lowrank.compress import compress, save_compressed
from lowrank.models import load_model
small = compress(load_model(sys.argv[1]), 0.5)
save_compressed(small, sys.argv[2])  # an existing output that the loop below replaces
if sys.argv[3] == "pause":
    os.environ["{pause}"] = "120"
print("ready", flush=True)
sys.stdin.readline()  # the parent has read the first save
while True:
    save_compressed(small, sys.argv[2])
""".replace("{pause}", PAUSE_ENV)


def start_saver(tiny_bert_dir, target: Path, mode: str, log: Path) -> subprocess.Popen:
    """A process that saves a compressed model to ``target`` once, says ``ready``, and after a line on
    its stdin replaces it again and again (``mode="pause"``: sleeping between the two renames)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    with open(log, "w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(tiny_bert_dir), str(target), mode],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )
    line = proc.stdout.readline()
    assert line == "ready\n", log.read_text()
    return proc


def go(proc: subprocess.Popen) -> None:
    proc.stdin.write("go\n")
    proc.stdin.flush()


def test_kill_between_the_two_renames_restores_the_old_copy(tmp_path, tiny_bert_dir):
    target = tmp_path / "runs" / "out"
    proc = start_saver(tiny_bert_dir, target, "pause", tmp_path / "log")
    try:
        reference = logits(load_compressed(target))
        go(proc)
        deadline = time.monotonic() + 120
        while target.exists() and time.monotonic() < deadline:  # the old copy is set aside, the new one not yet in
            time.sleep(0.01)
    finally:
        proc.kill()
        proc.wait()
    assert not target.exists() and any(".out.old-" in n for n in hidden(target.parent))
    again = load_compressed(target)  # repaired on load, not "hub not reachable"
    assert torch.equal(logits(again), reference)
    assert all(".out.tmp-" in n for n in hidden(target.parent))  # a load deletes nothing: the killed save's copy
    save_compressed(again, target)  # the next save removes it
    assert sorted(p.name for p in target.parent.iterdir()) == ["out"]  # no hidden copy left behind


@pytest.mark.parametrize("delay", [0.0, 0.15])
def test_kill_at_any_moment_leaves_a_loadable_target_and_no_leftovers(tmp_path, tiny_bert_dir, delay):
    target = tmp_path / "runs" / "out"
    proc = start_saver(tiny_bert_dir, target, "loop", tmp_path / "log")
    try:
        reference = logits(load_compressed(target))
        go(proc)
        time.sleep(delay)
    finally:
        proc.kill()
        proc.wait()
    again = load_compressed(target)
    assert torch.equal(logits(again), reference)
    save_compressed(again, target)  # a load deletes nothing; the next save removes the killed save's copies
    assert sorted(p.name for p in target.parent.iterdir()) == ["out"]


def test_stale_temporary_copies_of_dead_processes_are_cleaned(tmp_path, tiny_bert):
    dead = dead_pid()
    parent = tmp_path / "outs"
    parent.mkdir()
    stale = killed_copy(parent, "a", "tmp", dead, 1700000000)  # a killed save's half-written folder
    live = killed_copy(parent, "b", "tmp", os.getpid(), own_start())  # a save still running: kept
    users = parent / f".c.tmp-{dead}-1700000000-0badc0de"  # no owner file: not ours, kept
    users.mkdir()
    (users / MARKER).write_text("{}")
    legacy = parent / f".d.old-{dead}"  # named like a set-aside copy, without an owner file: not ours, kept
    legacy.mkdir()
    (legacy / "lowrank.json").write_text("{}")
    plan = parent / f".plan.json.tmp-{dead}-1700000000-0badc0de"  # a file cannot prove it is ours: kept
    plan.write_bytes(b"{")
    killed_copy(parent, "f", "old", dead, 1700000000, payload="f's old copy")  # its target is missing: put back

    save_compressed(compress(tiny_bert, 0.5), parent / "e")
    assert not stale.exists()
    assert sorted(p.name for p in parent.iterdir()) == sorted([live.name, users.name, legacy.name, plan.name, "e", "f"])
    assert (parent / "f" / "lowrank.json").read_text() == "f's old copy"
    recover(parent / "b")
    assert live.exists()


def test_holders_of_writers_killed_while_creating_or_removing_them_are_cleaned(tmp_path, tiny_bert):
    """A kill between a holder's mkdir and the end of its owner file (or between removing the owner file and
    the folder) left a hidden folder the next save kept for ever (CI: ``.out.tmp-...`` beside ``out``)."""
    dead = dead_pid()
    parent = tmp_path / "outs"
    parent.mkdir()
    full = killed_copy(parent, "z", "tmp", dead, 1700000000)
    owner_text = (full / OWNER).read_text()
    shutil.rmtree(full)

    def holder(name: str, owner: str | None, pid: int = dead, start: int = 1700000000) -> Path:
        path = parent / f".{name}.tmp-{pid}-{start}-0badc0de"
        path.mkdir()
        if owner is not None:
            (path / OWNER).write_text(owner.replace('"z"', f'"{name}"'))
        return path

    cleaned = [holder("a", None), holder("b", ""), holder("c", owner_text[:20])]
    other = holder("d", owner_text[:20])
    (other / "notes.txt").write_text("a user's file")  # more than a cut-short owner file: kept
    foreign = holder("e", '{"written_by": "someone"')  # not a prefix of ours: kept
    live = holder("f", None, os.getpid(), own_start())  # its writer is still creating it: kept

    save_compressed(compress(tiny_bert, 0.5), parent / "out")
    assert not any(p.exists() for p in cleaned)
    assert sorted(p.name for p in parent.iterdir()) == sorted([other.name, foreign.name, live.name, "out"])


# ---------------------------------------------------------------- 11. permissions follow the umask


def test_outputs_are_created_with_the_users_umask(tmp_path, tiny_bert):
    previous = os.umask(0o022)
    try:
        out = save_compressed(compress(tiny_bert, 0.5), tmp_path / "out")
        plan = allocate(tiny_bert, 0.5, "uniform").save(tmp_path / "plan.json")
        atomic_write_bytes(tmp_path / "cache" / "entry.bin", b"1")
    finally:
        os.umask(previous)
    assert stat.S_IMODE(out.stat().st_mode) == 0o755
    assert {stat.S_IMODE(p.stat().st_mode) for p in out.iterdir()} == {0o644}
    assert stat.S_IMODE(plan.stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "cache" / "entry.bin").stat().st_mode) == 0o644


# ---------------------------------------------------------------- 7. load_compressed checks RAM and ranks first


def test_load_compressed_refuses_what_does_not_fit_before_allocating(tmp_path, tiny_bert, monkeypatch):
    out = save_compressed(compress(tiny_bert, 0.5), tmp_path / "out")
    with monkeypatch.context() as patch:
        patch.setattr("lowrank.models.loading.available_ram_bytes", lambda: 1 << 20)
        with pytest.raises(ModelLoadError, match="RAM"):
            load_compressed(out)

    meta = json.loads((out / "lowrank.json").read_text())
    name = next(iter(meta["ranks"]))
    meta["ranks"][name] = 100_000  # a crafted rank would allocate out x 100000 floats
    (out / "lowrank.json").write_text(json.dumps(meta))
    with pytest.raises(ModelLoadError, match=f"{name}: rank 100000 exceeds"):
        load_compressed(out)
