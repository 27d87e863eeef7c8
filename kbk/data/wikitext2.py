"""WikiText-2 (raw), the seed's data: from the Hugging Face hub through `datasets`, or from a local copy.

Whitespace words, the `max_vocab` most frequent TRAINING words plus `<unk>`. Each dataset row is one line of the
original files; with `eos=True` every non-empty line ends in `<eos>` (as in the classic word-level WikiText setup)
and blank lines add nothing. The seed's Colab run had 30,000 ids and no `<eos>`: `max_vocab=29_999, eos=False`,
what `data=wikitext2` (conf/data/wikitext2.yaml) sets. The `test` split (the hub's, or a local copy's
`test-*.parquet`) is read only when an evaluation asks for it (`Corpus.test()`).
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from kbk.data.corpus import Corpus, tokenised_corpus
from kbk.data.tokenizers import TOKENIZERS
from kbk.errors import DataError, require, require_choice, settings_or_fields

HUB_NAME, HUB_CONFIG = "wikitext", "wikitext-2-raw-v1"
TRAINING_SPLITS = ("train", "validation")
_TRUE = {"1", "ON", "YES", "TRUE"}


def _alternatives() -> str:
    return (
        "Alternatives: point data.path=<folder> at a local copy in the hub's layout "
        f"(<folder>/{HUB_CONFIG}/train-00000-of-00001.parquet and validation-00000-of-00001.parquet, "
        "e.g. from `hf download Salesforce/wikitext --repo-type dataset --local-dir <folder>` "
        "on a machine with internet); "
        f"or set HF_DATASETS_OFFLINE=1 with a Hugging Face cache (HF_HOME) that already holds {HUB_CONFIG}; "
        "or use data=text data.path=<your .txt files>; or data=synthetic (no files needed)."
    )


def hub_offline() -> bool:
    return any(os.environ.get(v, "").upper() in _TRUE for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def hub_unreachable(timeout_s: float) -> str | None:
    """Why the hub (or the HTTPS proxy in front of it) refuses a TCP connection, or None if it accepts one.

    `datasets` retries an unreachable hub for half a minute or more; one short probe fails in seconds instead.
    """
    proxy = os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy")
    url = urlparse(proxy or os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    host, port = url.hostname or "huggingface.co", url.port or (80 if url.scheme == "http" else 443)
    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
        return None
    except OSError as e:
        return f"{host}:{port}: {e}"


def local_files(path: Path) -> dict[str, list[Path]]:
    """The parquet shards of a local copy in the hub repo's layout (`path`: the repo or its config folder); the
    `test` split's list is empty when the copy has none."""
    folder = path / HUB_CONFIG if (path / HUB_CONFIG).is_dir() else path
    files = {split: sorted(folder.glob(f"{split}-*.parquet")) for split in (*TRAINING_SPLITS, "test")}
    if not path.is_dir() or not all(files[split] for split in TRAINING_SPLITS):
        what = "does not exist" if not path.exists() else "is not a WikiText-2 copy in the hub's layout"
        raise DataError(
            f"data.path={path} {what}: expected "
            f"{path}/{HUB_CONFIG}/train-*.parquet and validation-*.parquet. {_alternatives()}"
        )
    return files


def _rows_to_text(rows) -> str:
    # a row is a line of the original file; "" rows are its blank lines
    return "".join(r if r.endswith("\n") else r + "\n" for r in rows)


def _read_local(
    files: dict[str, list[Path]], hf_cache_dir: str | None, splits: tuple[str, ...] = TRAINING_SPLITS
) -> tuple[str, ...]:
    """The text of each of `splits`, in that order."""
    import datasets

    try:
        ds = datasets.load_dataset(
            "parquet", data_files={k: [str(f) for f in files[k]] for k in splits}, cache_dir=hf_cache_dir
        )
        return tuple(_rows_to_text(ds[split]["text"]) for split in splits)
    except Exception as e:  # corrupt shards, a missing "text" column, ...: all fixed by a fresh copy
        raise DataError(
            f"cannot read WikiText-2 from {files['train'][0].parent} ({e}): replace the copy. "
            f"{_alternatives()}"
        ) from e


def _read_hub(
    hf_cache_dir: str | None, timeout_s: float, splits: tuple[str, ...] = TRAINING_SPLITS
) -> tuple[str, ...]:
    """The text of each of `splits`, in that order."""
    offline = hub_offline()
    reason = None if offline else hub_unreachable(timeout_s)
    if reason is not None:
        raise DataError(
            f"cannot load WikiText-2: the Hugging Face hub cannot be reached ({reason}). {_alternatives()}"
        )
    import datasets

    try:
        ds = datasets.load_dataset(HUB_NAME, HUB_CONFIG, cache_dir=hf_cache_dir)
    except Exception as e:
        cause = (
            "offline mode is set (the hub is not contacted) and the local cache does not hold it"
            if offline
            else "the hub download failed"
        )
        raise DataError(
            f"cannot load WikiText-2 ({HUB_NAME}/{HUB_CONFIG}): {cause} ({type(e).__name__}: {e}). "
            f"{_alternatives()}"
        ) from e
    return tuple(_rows_to_text(ds[split]["text"]) for split in splits)


@dataclass
class WikiText2Config:
    """WikiText-2 raw (`data=wikitext2`): where it comes from and how it is tokenised."""

    path: str | None = None  # a local copy in the hub's layout; None: the hub
    tokenizer: str = "word"  # "word" | "char" | "bpe"
    max_vocab: int = 30_000
    bpe_vocab_size: int = 4096
    lowercase: bool = False
    eos: bool = True
    cache_dir: str | None = None  # the tokenised-data cache; None: no cache
    hf_cache_dir: str | None = None  # where `datasets` keeps its own files (None: its default under HF_HOME)
    hub_timeout_s: float = 5.0  # how long to wait for the hub before calling it unreachable

    def __post_init__(self) -> None:
        require_choice(self, "tokenizer", TOKENIZERS)
        require(self, "hub_timeout_s", lambda v: v > 0, "a number of seconds > 0")


def load_wikitext2(config: WikiText2Config | None = None, **settings: Any) -> Corpus:
    """WikiText-2 raw, train/validation splits (and test, see `Corpus.test()`), from `config` or
    `WikiText2Config`'s fields as keywords."""
    c = settings_or_fields(WikiText2Config, config, settings)
    path, hf_cache_dir = c.path, c.hf_cache_dir
    if path is not None and str(path) != "":
        path = Path(path).expanduser()
        files = local_files(path)
        flat = files["train"] + files["validation"]
        source = str(path.resolve())

        def read_splits(splits=TRAINING_SPLITS):
            return _read_local(files, hf_cache_dir, splits)

        has_test = bool(files["test"])
    else:
        flat, source, has_test = [], f"hub:{HUB_NAME}/{HUB_CONFIG}", True

        def read_splits(splits=TRAINING_SPLITS):
            return _read_hub(hf_cache_dir, c.hub_timeout_s, splits)

    # What the tokenised text depends on: the cache key (so the same names and order as ever).
    settings = {"source": source, **{k: getattr(c, k) for k in (
        "tokenizer", "max_vocab", "bpe_vocab_size", "lowercase", "eos")}}
    read_test = (lambda: read_splits(("test",))[0]) if has_test else None
    return tokenised_corpus("wikitext2", read_splits, settings, flat, c.cache_dir, read_test)
