"""Caches never serve a corrupt or stale entry: statistics, extracted assets, wheels, uploads, the run store."""

from __future__ import annotations

import logging
import sqlite3
import subprocess
import zipfile
from pathlib import Path

import pytest
import streamlit as st
import torch
from streamlit.testing.v1 import AppTest

from dashboard import layout
from dashboard.cache import save_upload
from lowrank import assets, load_task
from lowrank.data.tasks import Task, lee_local
from lowrank.experiments.store import RunStore
from lowrank.statistics import StatisticsSettings, cache, select, statistics_for
from lowrank.statistics.resolve import cache_entries

SETTINGS = StatisticsSettings(num_batches=1, batch_size=4)


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LOWRANK_CACHE", str(tmp_path))


def notices(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "lowrank" and r.levelno == logging.WARNING]


def flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x40
    path.write_bytes(bytes(data))


# ---------------------------------------------------------------- statistics entries


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage"])
def test_a_damaged_statistics_entry_is_recomputed_with_a_notice(tiny_bert, sentiment_csv, caplog, damage):
    first = select(statistics_for(tiny_bert, sentiment_csv, ("fisher",), SETTINGS), "fisher")
    (path,) = cache_entries(tiny_bert, load_task(sentiment_csv), ("fisher",), SETTINGS)
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif damage == "flip":  # a bit flip in the last tensor's data: still a valid safetensors file
        flip_last_byte(path)
    else:
        path.write_bytes(b"not a safetensors file")
    again = select(statistics_for(tiny_bert, sentiment_csv, ("fisher",), SETTINGS), "fisher")
    assert set(again) == set(first) and all(torch.equal(first[n], again[n]) for n in first)
    (message,) = notices(caplog)
    assert str(path) in message and "\n" not in message
    assert cache.read(path) is not None  # the rebuilt entry verifies


def test_statistics_key_includes_the_tasks_data(tiny_bert):
    a = Task("same", "lm", {"train": ["one text", "two"], "validation": ["x"], "test": ["y"]})
    b = Task("same", "lm", {"train": ["one text", "TWO"], "validation": ["x"], "test": ["y"]})
    assert a.sizes() == b.sizes() and a.content_hash() != b.content_hash()
    assert cache.entry_path("fisher", tiny_bert, a, {}) != cache.entry_path("fisher", tiny_bert, b, {})
    assert a.content_hash() == Task("same", "lm", {k: list(v) for k, v in a.texts.items()}).content_hash()


# ---------------------------------------------------------------- assets and wheels


LEE_DOCS = [f"document number {i} about the news of the day." for i in range(300)]


def write_gensim_wheel(folder: Path, lines=LEE_DOCS) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "gensim-4.4.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(assets.GENSIM_WHEEL[2], "\n".join(lines) + "\n")
    return path


def test_a_truncated_extracted_asset_is_extracted_again(tmp_path, caplog):
    write_gensim_wheel(tmp_path / "wheels")
    assert lee_local().sizes() == {"train": 240, "validation": 30, "test": 30}
    corpus = assets.lee_corpus()
    corpus.write_bytes(corpus.read_bytes()[: corpus.stat().st_size // 2])
    assert lee_local().sizes() == {"train": 240, "validation": 30, "test": 30}
    assert any(str(corpus) in m for m in notices(caplog))


def test_a_corrupt_wheel_is_downloaded_again_once(tmp_path, monkeypatch, caplog):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    bad = wheels / "gensim-4.4.0-py3-none-any.whl"
    bad.write_bytes(b"PK\x03\x04 truncated download")
    downloads = []

    def fake_pip(cmd, **kwargs):  # `pip download -d <folder> gensim==4.4.0`
        downloads.append(cmd[-1])
        write_gensim_wheel(Path(cmd[cmd.index("-d") + 1]))
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(assets.subprocess, "run", fake_pip)
    assert lee_local().sizes()["train"] == 240
    assert downloads == ["gensim==4.4.0"] and any(str(bad) in m for m in notices(caplog))

    assets.lee_corpus().unlink()
    bad.write_bytes(b"garbage")

    def corrupt_pip(cmd, **kwargs):
        bad.write_bytes(b"garbage again")
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(assets.subprocess, "run", corrupt_pip)
    with pytest.raises(assets.AssetError, match=f"{bad}.*corrupt"):
        assets.lee_corpus()


def test_a_damaged_upload_is_written_again(tmp_path):
    data = b"text,label\na good film,positive\na bad film,negative\n"
    path = Path(save_upload("reviews.csv", data))
    path.write_bytes(data[:10])
    assert Path(save_upload("reviews.csv", data)) == path and path.read_bytes() == data


# ---------------------------------------------------------------- the run store


@pytest.mark.parametrize("damage", ["garbage", "truncate"])
def test_a_corrupt_run_store_is_moved_aside_and_a_fresh_one_started(tmp_path, caplog, damage):
    path = tmp_path / "runs.sqlite"
    store = RunStore(path)
    for _ in range(200):
        store.start_run(model="m", task="t", method="svd", error="x" * 500)
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    data = path.read_bytes()
    broken = b"this is not a database" * 100 if damage == "garbage" else data[: len(data) // 2]
    path.write_bytes(broken)
    fresh = RunStore(path)
    assert fresh.runs().empty and fresh.start_run(model="m") == 1
    (aside,) = tmp_path.glob("runs.sqlite.corrupt-*[0-9]")
    assert aside.read_bytes() == broken  # the user's data is kept, not deleted
    (message,) = notices(caplog)
    assert str(path) in message and aside.name in message


def test_dashboard_pages_work_on_a_corrupt_run_store(monkeypatch, tmp_path, tiny_bert_dir, sentiment_csv):
    root = Path(__file__).resolve().parents[2]
    monkeypatch.setenv("LOWRANK_THREADS", "1")
    monkeypatch.setenv("LOWRANK_DEFAULT_MODEL", str(tiny_bert_dir))
    monkeypatch.setenv("LOWRANK_DEFAULT_TASK", str(sentiment_csv))
    (tmp_path / "runs.sqlite").write_bytes(b"not a database" * 100)
    st.cache_data.clear()
    st.cache_resource.clear()
    at = AppTest.from_file(str(root / "app.py"), default_timeout=180).run()
    assert not at.exception, [e.message for e in at.exception]
    at.switch_page(layout.page("tradeoffs").script).run()
    assert not at.exception, [e.message for e in at.exception]
