"""The `Corpus` every source returns, the `load_corpus` dispatcher, and the cache of tokenised corpora.

A corpus's test split (where its source has one) is read and tokenised with the training vocabulary only when
`Corpus.test()` is first called, so training, which never calls it, never reads the test text.

Cache layout: `<cache_dir>/<name>-<key>/{train.pt, val.pt, tokenizer.json, meta.json}`, where `key` hashes
the source settings (and, for local files, their paths, sizes and mtimes), so changing a setting or editing a
file builds a new entry and never reads a stale one. An entry is written into a temporary sibling folder and
renamed into place in one step, so a killed run leaves either a whole entry or none.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from kbk.data.batching import num_windows
from kbk.data.tokenizers import build_tokenizer, load_tokenizer
from kbk.errors import DataError, SettingError

# A child of kbk's logger: in a run its lines reach the console and run.log like every `[kbk]` line.
log = logging.getLogger("kbk.data")

CACHE_FORMAT = 1


@dataclass
class Corpus:
    train: torch.Tensor  # 1-D int64 token ids
    val: torch.Tensor
    vocab_size: int
    name: str  # "synthetic" | "text" | "wikitext2"
    tokenizer: Any
    source_model: Any = None  # the exact generator (synthetic HMM); None for real text
    cache_path: Path | None = None
    from_cache: bool = False
    # reads and tokenises the test split (None: the source has none); called by `test()` only
    test_loader: Callable[[], torch.Tensor] | None = field(default=None, repr=False)
    _test: torch.Tensor | None = field(default=None, repr=False)
    _floors: dict[tuple[str, int], float] = field(default_factory=dict, repr=False)

    @property
    def has_test(self) -> bool:
        return self.test_loader is not None

    def test(self) -> torch.Tensor:
        """The test split's token ids (1-D int64), read and tokenised on the first call."""
        if self.test_loader is None:
            raise DataError(
                f"the {self.name} data has no test split: give data.path a folder with a test.txt next to its "
                f"train.txt (a WikiText-2 copy: test-*.parquet), or evaluate the validation split only"
            )
        if self._test is None:
            self._test = self.test_loader()
        return self._test

    def split(self, name: str) -> torch.Tensor:
        """The token ids of split `name`: "train", "val" or "test"."""
        return {"train": lambda: self.train, "val": lambda: self.val, "test": self.test}[name]()

    def loss_floor(self, n_seq: int, split: str = "val") -> float | None:
        """The Bayes-optimal mean cross-entropy (nats/token) over the evaluator's windows of `split`.

        The windows are those of `TokenBatches(<split>, n_seq, ..., shuffle=False)`. None for real text, whose
        source is unknown.
        """
        if self.source_model is None:
            return None
        if (split, n_seq) not in self._floors:
            tokens = self.split(split)
            if num_windows(tokens.numel(), n_seq) == 0:
                raise DataError(
                    f"the {split} stream has {tokens.numel()} tokens, too few for one window of "
                    f"n_seq={n_seq} (+1 target): raise data.n_val_tokens or lower model.n_seq"
                )
            self._floors[split, n_seq] = self.source_model.mean_window_nll(tokens, n_seq)
        return self._floors[split, n_seq]


def sources() -> dict[str, tuple[type, Callable[..., Corpus]]]:
    """Each source's settings dataclass (its options) and loader."""
    from kbk.data.synthetic import SyntheticConfig, load_synthetic
    from kbk.data.text import TextConfig, load_text
    from kbk.data.wikitext2 import WikiText2Config, load_wikitext2

    return {
        "synthetic": (SyntheticConfig, load_synthetic),
        "text": (TextConfig, load_text),
        "wikitext2": (WikiText2Config, load_wikitext2),
    }


def load_corpus(source: str = "synthetic", **options: Any) -> Corpus:
    """Load `source` ("synthetic" | "text" | "wikitext2") with that source's options (the fields of its settings
    dataclass); an unknown option or one out of range is a `DataError` naming `data.<option>`."""
    known = sources()
    if source not in known:
        raise DataError(f"unknown data source {source!r}: choose one of {', '.join(known)}")
    settings, loader = known[source]
    allowed = [f.name for f in fields(settings)]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise DataError(
            f"data={source} has no option(s) {', '.join(unknown)}: its options are {', '.join(allowed)}"
        )
    try:
        config = settings(**options)
    except SettingError as exc:
        raise DataError(f"data.{exc}") from None
    return loader(config)


def cache_key(name: str, settings: dict, files: list[Path] = ()) -> str:
    stamp = [(str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns) for f in files]
    blob = json.dumps(
        {"format": CACHE_FORMAT, "name": name, "settings": settings, "files": stamp}, sort_keys=True
    )
    return f"{name}-{hashlib.sha256(blob.encode()).hexdigest()[:16]}"


def _read_entry(folder: Path):
    train = torch.load(folder / "train.pt", weights_only=True).long()
    val = torch.load(folder / "val.pt", weights_only=True).long()
    return train, val, load_tokenizer(folder / "tokenizer.json")


def _write_entry(folder: Path, train: torch.Tensor, val: torch.Tensor, tokenizer, meta: dict) -> None:
    tmp = folder.with_name(f".tmp-{folder.name}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        # int32 halves the files; every vocabulary here is far below 2**31
        torch.save(train.to(torch.int32), tmp / "train.pt")
        torch.save(val.to(torch.int32), tmp / "val.pt")
        tokenizer.save(tmp / "tokenizer.json")
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1, sort_keys=True))
        try:
            os.replace(tmp, folder)
        except OSError:
            pass  # another process finished the same entry first; theirs is as good as ours
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def tokenised_corpus(
    name: str,
    read_texts: Callable[[], tuple[str, str]],
    settings: dict,
    files: list[Path],
    cache_dir: str | Path | None,
    read_test_text: Callable[[], str] | None = None,
) -> Corpus:
    """Tokenise `read_texts()` -> (train text, val text) as `settings` say, via the cache if one is given.

    `settings` must hold `tokenizer`, `max_vocab`, `bpe_vocab_size`, `lowercase`, `eos`. `read_test_text`: the
    test split's text, if the source has one; it is read and tokenised only when `Corpus.test()` asks for it (not
    cached: the cache key, and so the training data, never depends on the test files).
    """
    folder = Path(cache_dir) / cache_key(name, settings, files) if cache_dir is not None else None
    if folder is not None and (folder / "meta.json").is_file():
        try:
            train, val, tok = _read_entry(folder)
            return Corpus(train, val, tok.vocab_size, name, tok, cache_path=folder, from_cache=True,
                          test_loader=_test_loader(name, tok, read_test_text))
        except Exception:
            shutil.rmtree(folder, ignore_errors=True)  # unreadable entry: rebuild it below
    train_text, val_text = read_texts()
    # The one slow start-up phase (seconds to a minute for a real corpus): said before it starts, as it happens.
    started = time.perf_counter()
    log.info(f"data {name}: tokenising {len(train_text) + len(val_text):,} characters with the "
             f"{settings['tokenizer']} tokenizer" + (f" (cached for later runs in {folder})" if folder else ""))
    tok = build_tokenizer(
        settings["tokenizer"],
        train_text,
        max_vocab=settings["max_vocab"],
        bpe_vocab_size=settings["bpe_vocab_size"],
        lowercase=settings["lowercase"],
        eos=settings["eos"],
    )
    train = torch.tensor(tok.encode(train_text), dtype=torch.long)
    val = torch.tensor(tok.encode(val_text), dtype=torch.long)
    for split, ids in (("training", train), ("validation", val)):
        if ids.numel() < 2:
            raise DataError(
                f"the {name} {split} split has {ids.numel()} tokens after tokenisation: "
                f"use more text (or change data.val_fraction)"
            )
    log.info(f"data {name}: tokenised in {time.perf_counter() - started:.1f} s")
    if folder is not None:
        meta = {
            "name": name,
            "settings": settings,
            "files": [str(f) for f in files],
            "vocab_size": tok.vocab_size,
            "n_train": train.numel(),
            "n_val": val.numel(),
        }
        _write_entry(folder, train, val, tok, meta)
    return Corpus(train, val, tok.vocab_size, name, tok, cache_path=folder, from_cache=False,
                  test_loader=_test_loader(name, tok, read_test_text))


def _test_loader(name: str, tok, read_test_text: Callable[[], str] | None) -> Callable[[], torch.Tensor] | None:
    if read_test_text is None:
        return None

    def load() -> torch.Tensor:
        ids = torch.tensor(tok.encode(read_test_text()), dtype=torch.long)
        if ids.numel() < 2:
            raise DataError(f"the {name} test split has {ids.numel()} tokens after tokenisation: put more text in it")
        return ids

    return load
