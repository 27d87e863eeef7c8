"""Local text: one `.txt` file, or a folder of them, split into training and validation text and tokenised.

A folder's `test.txt` is its test split: never part of the training or validation text, tokenised with the
training vocabulary when an evaluation asks for it (`Corpus.test()`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kbk.data.corpus import Corpus, tokenised_corpus
from kbk.data.tokenizers import TOKENIZERS
from kbk.errors import DataError, require, require_choice, settings_or_fields

VAL_NAMES = ("valid.txt", "val.txt", "validation.txt")
TEST_NAME = "test.txt"
_FIX = (
    "set data.path to an existing .txt file or folder of .txt files (or use data=synthetic: no files needed)"
)


def _read(f: Path) -> str:
    try:
        return f.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{f} is not UTF-8 text ({e}): convert it to UTF-8, or {_FIX}") from e
    except OSError as e:
        raise DataError(f"cannot read {f} ({e.strerror or e}): fix its permissions, or {_FIX}") from e


def _concat(files: list[Path]) -> str:
    # each file ends in a newline so the last line of one never runs into the first line of the next
    return "".join(t if t.endswith("\n") else t + "\n" for t in map(_read, files) if t.strip())


def split_text(text: str, val_fraction: float) -> tuple[str, str]:
    """The last `val_fraction` of `text` is validation, cut at a line (else word) end so no word is split."""
    cut = int(len(text) * (1.0 - val_fraction))
    for sep in ("\n", " "):
        at = text.find(sep, max(cut - 1, 0))  # a cut right after a newline stays put
        if at != -1 and text[at + 1 :].strip():
            return text[: at + 1], text[at + 1 :]
    return text[:cut], text[cut:]


def find_files(
    path: Path, prepare_command: str | None = None
) -> tuple[list[Path], list[Path] | None, Path | None]:
    """(training files, validation files or None when the validation part is cut from the end, test file or None).

    `prepare_command`: the command that writes the corpus (a prepared corpus's preset names it), told to the user
    when the files are missing."""
    if not path.exists():
        fix = f"prepare the corpus with `{prepare_command}`" if prepare_command else _FIX
        raise DataError(f"data.path={path} does not exist: {fix}")
    if path.is_file():
        return [path], None, None
    train = path / "train.txt"
    val = next((path / n for n in VAL_NAMES if (path / n).is_file()), None)
    test = path / TEST_NAME if (path / TEST_NAME).is_file() else None
    if train.is_file() and val is not None:
        return [train], [val], test
    # sorted: the same folder always gives the same stream; the test file is held out of it
    files = [f for f in sorted(path.rglob("*.txt")) if f != test]
    if not files:
        raise DataError(f"data.path={path} is a folder without any .txt file besides {TEST_NAME}: {_FIX}")
    return files, None, test


@dataclass
class TextConfig:
    """Local text (`data=text`): where it is, and how it is split and tokenised."""

    path: str | None = None  # a .txt file or a folder of them
    tokenizer: str = "char"  # "char" | "word" | "bpe"
    val_fraction: float = 0.1  # the last part of the text held out, when the folder has no valid.txt
    max_vocab: int = 30_000  # word: the most frequent training words kept
    bpe_vocab_size: int = 4096
    lowercase: bool = False
    eos: bool = True  # word: <eos> at the end of every line
    cache_dir: str | None = None  # the tokenised-data cache; None: no cache
    prepare_command: str | None = None  # what the missing-path error tells the user to run

    def __post_init__(self) -> None:
        require_choice(self, "tokenizer", TOKENIZERS)
        require(self, "val_fraction", lambda v: 0.0 < v < 1.0, "a number strictly between 0 and 1 (e.g. 0.1)")


def load_text(config: TextConfig | None = None, **settings: Any) -> Corpus:
    """Tokenise local text (`config`, or `TextConfig`'s fields as keywords).

    `path`: a `.txt` file, or a folder (its `train.txt` + `valid.txt` when both exist, else every `*.txt`
    below it, concatenated in sorted order, the last `val_fraction` being validation; a folder's `test.txt` is
    the test split, in neither). `tokenizer`: "char" | "word" (capped at `max_vocab`, `<eos>` per line if `eos`)
    | "bpe" (`bpe_vocab_size`). `prepare_command`: what the missing-path error tells the user to run (e.g.
    `python experiments/data/kjv.py`).
    """
    c = settings_or_fields(TextConfig, config, settings)
    if c.path is None or str(c.path) == "":
        raise DataError(f"data=text needs data.path: {_FIX}")
    path = Path(c.path).expanduser()
    train_files, val_files, test_file = find_files(path, c.prepare_command)

    def read_texts() -> tuple[str, str]:
        train = _concat(train_files)
        if not train:
            raise DataError(f"data.path={path} holds no text (empty or whitespace-only files): {_FIX}")
        if val_files is not None:
            val = _concat(val_files)
            if not val:
                raise DataError(f"{val_files[0]} is empty: put validation text in it, or remove it")
            return train, val
        return split_text(train, c.val_fraction)

    # What the tokenised text depends on: the cache key (so the same names and order as ever).
    settings = {"path": str(path.resolve()), **{k: getattr(c, k) for k in (
        "tokenizer", "val_fraction", "max_vocab", "bpe_vocab_size", "lowercase", "eos")}}
    read_test = None if test_file is None else (lambda: _concat([test_file]))
    return tokenised_corpus("text", read_texts, settings, train_files + (val_files or []), c.cache_dir, read_test)
