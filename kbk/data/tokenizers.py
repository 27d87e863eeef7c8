"""Tokenisers: `word` (the seed's capped whitespace vocabulary), `char`, byte-level `bpe`, `ids` (synthetic).

Every tokeniser is fitted on the TRAINING text only (so validation words never leak into the vocabulary) and
has `encode(str) -> list[int]`, `decode(list[int]) -> str`, `vocab_size`, `save(path)` and a `load(path)`
that restores it from its JSON. `load_tokenizer(path)` reads any of them back.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from kbk.errors import DataError
from kbk.files import write_atomic

UNK, EOS = "<unk>", "<eos>"
TOKENIZERS = ("word", "char", "bpe")


class _JsonTokenizer:
    kind = ""

    def to_dict(self) -> dict:
        raise NotImplementedError

    def save(self, path: str | Path) -> None:
        # atomically: a killed run never leaves half a vocabulary behind
        write_atomic(path, json.dumps({"type": self.kind, **self.to_dict()}, ensure_ascii=False))

    @classmethod
    def load(cls, path: str | Path):
        tok = load_tokenizer(path)
        if not isinstance(tok, cls):
            raise DataError(f"{path} holds a {tok.kind!r} tokeniser, not {cls.kind!r}: delete it to rebuild")
        return tok


class WordTokenizer(_JsonTokenizer):
    """Whitespace words; the `max_vocab` most frequent training words, every other word is `<unk>`.

    With `eos=True` each non-empty line ends in `<eos>` (line structure is information a model can use; blank
    lines carry none, so they add no tokens). Ids: `<unk>`=0, `<eos>`=1 if used, then words by descending
    training count, ties broken alphabetically so the vocabulary never depends on file order.
    """

    kind = "word"

    def __init__(self, words: list[str], eos: bool = True, lowercase: bool = False) -> None:
        self.eos, self.lowercase = eos, lowercase
        self.itos = [UNK] + ([EOS] if eos else []) + [w for w in words if w not in (UNK, EOS)]
        self.stoi = {w: i for i, w in enumerate(self.itos)}

    @classmethod
    def train(cls, text: str, max_vocab: int = 30_000, eos: bool = True, lowercase: bool = False):
        counts = Counter((text.lower() if lowercase else text).split())
        for special in (UNK, EOS):
            counts.pop(special, None)
        ranked = sorted(counts.items(), key=lambda wc: (-wc[1], wc[0]))
        return cls([w for w, _ in ranked[:max_vocab]], eos=eos, lowercase=lowercase)

    @property
    def vocab_size(self) -> int:
        return len(self.itos)

    def words(self, text: str) -> list[str]:
        if self.lowercase:
            text = text.lower()
        if not self.eos:
            return text.split()
        out: list[str] = []
        for line in text.splitlines():
            words = line.split()
            if words:
                out += words
                out.append(EOS)
        return out

    def encode(self, text: str) -> list[int]:
        get = self.stoi.get
        return [get(w, 0) for w in self.words(text)]

    def decode(self, ids: list[int]) -> str:
        lines, current = [], []
        for i in ids:
            w = self.itos[i]
            if w == EOS and self.eos:
                lines.append(" ".join(current) + "\n")
                current = []
            else:
                current.append(w)
        return "".join(lines) + " ".join(current)

    def to_dict(self) -> dict:
        return {"eos": self.eos, "lowercase": self.lowercase, "itos": self.itos}


class CharTokenizer(_JsonTokenizer):
    """Characters seen in training (sorted), plus `<unk>`=0 for characters only validation text contains."""

    kind = "char"
    unk_char = "\ufffd"

    def __init__(self, chars: list[str], lowercase: bool = False) -> None:
        self.lowercase = lowercase
        self.itos = [UNK] + [c for c in chars if c != UNK]
        self.stoi = {c: i for i, c in enumerate(self.itos) if i > 0}

    @classmethod
    def train(cls, text: str, lowercase: bool = False):
        return cls(sorted(set(text.lower() if lowercase else text)), lowercase=lowercase)

    @property
    def vocab_size(self) -> int:
        return len(self.itos)

    def encode(self, text: str) -> list[int]:
        get = self.stoi.get
        return [get(c, 0) for c in (text.lower() if self.lowercase else text)]

    def decode(self, ids: list[int]) -> str:
        return "".join(self.unk_char if i == 0 else self.itos[i] for i in ids)

    def to_dict(self) -> dict:
        return {"lowercase": self.lowercase, "itos": self.itos}


class BpeTokenizer(_JsonTokenizer):
    """Byte-level BPE from the `tokenizers` library: no unknown tokens, and decode(encode(s)) == s."""

    kind = "bpe"

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer

    @classmethod
    def train(cls, text: str, vocab_size: int = 4096, lowercase: bool = False):
        from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

        tok = Tokenizer(models.BPE())
        if lowercase:
            tok.normalizer = normalizers.Lowercase()
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
        )
        tok.train_from_iterator(text.splitlines(keepends=True), trainer)
        return cls(tok)

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        # line by line so the library can batch in parallel; byte-level BPE stays lossless across the cuts
        return [i for enc in self.tokenizer.encode_batch(text.splitlines(keepends=True)) for i in enc.ids]

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(list(ids))

    def to_dict(self) -> dict:
        return {"tokenizer": self.tokenizer.to_str()}


class IdTokenizer(_JsonTokenizer):
    """The synthetic source's tokens have no text: they read and print as whitespace-separated integers."""

    kind = "ids"

    def __init__(self, vocab_size: int) -> None:
        self._vocab_size = vocab_size

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    def encode(self, text: str) -> list[int]:
        ids = [int(t) for t in text.split()]
        if any(not 0 <= i < self._vocab_size for i in ids):
            raise DataError(f"token ids must lie in [0, {self._vocab_size}): got {text!r}")
        return ids

    def decode(self, ids: list[int]) -> str:
        return " ".join(str(int(i)) for i in ids)

    def to_dict(self) -> dict:
        return {"vocab_size": self._vocab_size}


def build_tokenizer(
    kind: str,
    train_text: str,
    max_vocab: int = 30_000,
    bpe_vocab_size: int = 4096,
    lowercase: bool = False,
    eos: bool = True,
):
    """Fit a tokeniser of `kind` ("word" | "char" | "bpe") on the training text."""
    if kind == "word":
        if max_vocab < 1:
            raise DataError(f"data.max_vocab must be >= 1, got {max_vocab}")
        return WordTokenizer.train(train_text, max_vocab=max_vocab, eos=eos, lowercase=lowercase)
    if kind == "char":
        return CharTokenizer.train(train_text, lowercase=lowercase)
    if kind == "bpe":
        if bpe_vocab_size < 257:
            raise DataError(f"data.bpe_vocab_size must be > 256 (the byte alphabet), got {bpe_vocab_size}")
        return BpeTokenizer.train(train_text, vocab_size=bpe_vocab_size, lowercase=lowercase)
    raise DataError(f"unknown data.tokenizer={kind!r}: choose one of {', '.join(TOKENIZERS)}")


def load_tokenizer(path: str | Path):
    """Read back a tokeniser written by `save`."""
    try:
        d = json.loads(Path(path).read_text(encoding="utf-8"))
        kind = d.pop("type")
    except (OSError, ValueError, KeyError) as e:
        raise DataError(f"cannot read a tokeniser from {path} ({e}): delete it to rebuild") from e
    if kind == "word":
        tok = WordTokenizer([], eos=d["eos"], lowercase=d["lowercase"])
        tok.itos, tok.stoi = d["itos"], {w: i for i, w in enumerate(d["itos"])}
        return tok
    if kind == "char":
        return CharTokenizer(d["itos"][1:], lowercase=d["lowercase"])
    if kind == "bpe":
        from tokenizers import Tokenizer

        return BpeTokenizer(Tokenizer.from_str(d["tokenizer"]))
    if kind == "ids":
        return IdTokenizer(d["vocab_size"])
    raise DataError(f"{path} holds an unknown tokeniser type {kind!r}: delete it to rebuild")
