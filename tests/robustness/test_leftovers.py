"""Recovery touches only what a killed save of this tool left, proven by the owner file in it; a load deletes nothing.

Regression: any hidden folder named ``.<name>.old-<number>`` whose number was no live process id was taken for a
killed save's set-aside copy: ``compress --out DIR/out`` deleted a user's ``DIR/.results.old-2023/``, a read-only
``evaluate --model DIR/model`` deleted ``DIR/.model.old-2023/``, and a lone ``.data.old-2023/`` became ``data/``.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import tempfile
from collections import Counter
from datetime import timedelta
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lowrank.cli.main import main
from lowrank.files.atomic import CONTENT, OWNER, OWNER_MAX_BYTES, atomic_dir, atomic_write_bytes, recover
from lowrank.models.packaged import resolve_source
from lowrank.processes import own_start
from tests.robustness.leftovers import dead_number, dead_pid, killed_copy

TARGETS = ("out", "results", "data", "model")


def users_folder(parent: Path, name: str) -> Path:
    folder = parent / name
    folder.mkdir()
    (folder / "notes.txt").write_text(f"mine: {name}\n")
    return folder


def tree(root: Path) -> dict[str, bytes | str | None]:
    """Everything under ``root``: file bytes, ``link -> target`` for links, ``None`` for folders."""
    found: dict[str, bytes | str | None] = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(dirpath) / name
            key = str(path.relative_to(root))
            if path.is_symlink():
                found[key] = f"link -> {os.readlink(path)}"
            else:
                found[key] = None if path.is_dir() else path.read_bytes()
    return found


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


# ---------------------------------------------------------------- the three examples


def test_compress_out_keeps_a_users_folder_named_like_a_set_aside_copy(capsys, tmp_path, tiny_bert_dir):
    n = dead_number()
    mine = users_folder(tmp_path, f".results.old-{n}")
    results = users_folder(tmp_path, "results")  # the old code deleted .results.old-N beside an existing results/
    before = tree(tmp_path)
    code, _, err = run(capsys, "compress", "--model", tiny_bert_dir, "--keep", "0.5", "--out", tmp_path / "out")
    assert code == 0, err
    after = tree(tmp_path)
    assert {k: v for k, v in after.items() if not k.startswith("out")} == before
    assert mine.is_dir() and results.is_dir()


def test_a_read_only_evaluate_deletes_nothing(capsys, tmp_path, tiny_bert_dir, sentiment_csv):
    shutil.copytree(tiny_bert_dir, tmp_path / "model")
    users_folder(tmp_path, f".model.old-{dead_number()}")
    before = tree(tmp_path)
    code, out, err = run(capsys, "evaluate", "--model", tmp_path / "model", "--task", sentiment_csv, "--limit", "1")
    assert code == 0, err
    assert tree(tmp_path) == before


def test_a_lone_folder_named_like_a_set_aside_copy_is_not_restored(capsys, tmp_path, caplog):
    mine = users_folder(tmp_path, f".data.old-{dead_number()}")
    before = tree(tmp_path)
    code, _, err = run(capsys, "evaluate", "--model", tmp_path / "data", "--task", "sst2")
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    assert tree(tmp_path) == before and mine.is_dir() and not (tmp_path / "data").exists()
    assert "restored" not in caplog.text + err


def test_a_killed_saves_copy_is_put_back_by_a_load_and_removed_by_a_save(tmp_path):
    dead = dead_pid()
    killed_copy(tmp_path, "out", "old", dead, 1700000000, payload="old copy")
    half = killed_copy(tmp_path, "out", "tmp", dead, 1700000000, payload="half written")
    resolve_source(str(tmp_path / "out"))  # what every loader does first
    assert (tmp_path / "out" / "lowrank.json").read_text() == "old copy"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([half.name, "out"])  # a load deletes nothing
    atomic_write_bytes(tmp_path / "plan.json", b"{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "plan.json"]


# ---------------------------------------------------------------- generated: hidden entries around a target


@functools.cache
def dead() -> int:
    return dead_pid()


OWNERS = ("valid", "none", "other target", "other pid", "other kind", "garbage", "a folder", "a link", "too large")
ENTRY = st.fixed_dictionaries(
    {
        "target": st.sampled_from(TARGETS),
        "kind": st.sampled_from(("old", "tmp")),
        "form": st.sampled_from(("ours", "pid only", "random")),  # .t.old-<pid>-<start>-<hex> / .t.old-<n> / .t.tmp-...
        "who": st.sampled_from(("dead", "live", "recycled")),  # a dead process, this one, this pid started earlier
        "owner": st.sampled_from(OWNERS),
        "folder": st.booleans(),
    }
)


def make_entry(parent: Path, outside: Path, i: int, spec: dict) -> tuple[Path, bool]:
    """Create one hidden entry from ``spec`` (payload ``payload {i}``); returns it and whether it is provably a
    dead writer's holder. A name taken already gets a plain file of that payload beside it instead."""
    t, kind = spec["target"], spec["kind"]
    pid, start = {
        "dead": (dead(), 1700000000),
        "live": (os.getpid(), own_start()),
        "recycled": (os.getpid(), own_start() - 1000),
    }[spec["who"]]
    name = {
        "ours": f".{t}.{kind}-{pid}-{start}-{i:08x}",
        "pid only": f".{t}.{kind}-{dead_number(2023 + i)}",
        "random": f".{t}.{kind}-user{i:04d}",
    }[spec["form"]]
    entry = parent / name
    if entry.exists():
        entry = parent / f"{name}-{i}"
        spec = {**spec, "folder": False}
    if not spec["folder"]:
        entry.write_text(f"payload {i}")
        return entry, False
    entry.mkdir()
    (entry / CONTENT).mkdir()
    (entry / CONTENT / "lowrank.json").write_text(f"payload {i}")
    owner = {"written_by": "lowrank", "pid": pid, "start": start, "kind": kind, "target": t}
    variant = spec["owner"]
    if variant == "other target":
        owner["target"] = t + "x"
    elif variant == "other pid":
        owner["pid"] = pid + 1
    elif variant == "other kind":
        owner["kind"] = "tmp" if kind == "old" else "old"
    text = json.dumps(owner)
    if variant == "garbage":
        text = "{not json"
    elif variant == "too large":
        text = text + " " * OWNER_MAX_BYTES
    if variant == "a folder":
        (entry / OWNER).mkdir()
    elif variant == "a link":
        (outside / f"owner-{i}").write_text(text)
        (entry / OWNER).symlink_to(outside / f"owner-{i}")
    elif variant != "none":
        (entry / OWNER).write_text(text)
    provable = spec["form"] == "ours" and variant == "valid" and spec["who"] != "live"
    return entry, provable


def payloads(root: Path) -> Counter:
    """The contents of every file under ``root`` but owner files (what a read may move and never delete)."""
    return Counter(v for k, v in tree(root).items() if isinstance(v, bytes) and Path(k).name != OWNER)


@settings(max_examples=40, deadline=timedelta(seconds=5), suppress_health_check=[HealthCheck.too_slow])
@given(
    entries=st.lists(ENTRY, max_size=6),
    present=st.sets(st.sampled_from(TARGETS)),
    operation=st.sampled_from(("load", "write a file", "write a folder")),
    loaded=st.sampled_from(TARGETS),
)
def test_nothing_without_a_valid_owner_file_is_moved_or_deleted(entries, present, operation, loaded):
    with tempfile.TemporaryDirectory() as base:
        parent, outside = Path(base) / "parent", Path(base) / "outside"
        parent.mkdir()
        outside.mkdir()
        for t in present:
            (parent / t).mkdir()
            (parent / t / "lowrank.json").write_text(f"target {t}")
        made = [(spec, *make_entry(parent, outside, i, spec)) for i, spec in enumerate(entries)]
        before, counts = tree(parent), payloads(parent)
        if operation == "load":
            recover(parent / loaded)
        elif operation == "write a file":
            atomic_write_bytes(parent / "plan.json", b"{}")
        else:
            with atomic_dir(parent / "new") as tmp:
                (tmp / "lowrank.json").write_text("new")
        after = tree(parent)

        for spec, entry, provable in made:
            if not provable or (operation == "load" and spec["target"] != loaded):
                subtree = {k: v for k, v in before.items() if k == entry.name or k.startswith(entry.name + "/")}
                assert {k: after.get(k) for k in subtree} == subtree, entry.name
        for t in TARGETS:
            copies = [
                f"payload {i}".encode()
                for i, (s, _, p) in enumerate(made)
                if p and s["kind"] == "old" and s["target"] == t
            ]
            if t in present:
                assert after[f"{t}/lowrank.json"] == f"target {t}".encode()  # an existing target is never touched
            elif copies and (operation != "load" or t == loaded):
                assert after[f"{t}/lowrank.json"] in copies  # a killed save's copy put back
            else:
                assert t not in after  # nothing else is ever "restored"
        if operation == "load":
            assert payloads(parent) == counts  # a load deletes nothing
        else:
            assert not [e for _, e, p in made if p and e.exists()]  # a write removes the dead writers' holders
