"""Prepare the King James Bible as an offline English corpus: train/valid/test text files for `data=kjv`.

    python experiments/data/kjv.py                 # writes <outputs>/corpora/kjv/{train,valid,test}.txt
    python experiments/data/kjv.py --out DIR       # anywhere else (then run with data=kjv data.path=DIR)

The text comes from Debian's `bible-kjv` package (`bible -f "Gen1:1-Rev22:21"` prints all 31,102 verses, one a
line, each after its reference such as `Ge1:1`); if the `bible` program is missing and this runs as root, the
package is installed with apt-get first. Preparation, all deterministic:

- the reference is dropped and punctuation `, . ; : ! ? ( )` is split off into tokens of its own, in the layout of
  WikiText (so a whitespace word vocabulary does not hold "earth", "earth," and "earth." apart);
- consecutive verses are grouped in blocks of BLOCK_VERSES; block i goes to valid if i % 20 == 18, to test if
  i % 20 == 19, otherwise to train: 90/5/5 across the whole book, every split drawn from all parts of it, while
  each block keeps its running text (no random sampling, so no seed).

Each file is written to a temporary folder that is renamed into place, so a failed run leaves no partial corpus.
It prints the word count and SHA-256 of every file and says whether they match the ones recorded here (and in
experiments/data/README.md) from Debian's bible-kjv 4.38.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from kbk.paths import outputs_dir

VERSE_RANGE = "Gen1:1-Rev22:21"
N_VERSES = 31_102
BLOCK_VERSES = 100
SPLITS = ("train", "valid", "test")
# sha256 of each prepared file from bible-kjv 4.38 (Debian bookworm); another package version may differ.
EXPECTED_SHA256 = {
    "train": "5b00e8d74c4e25df7ac8a8995ad887dbd78fb294d182304a20c4f2aa1f348ab1",
    "valid": "ce5348543a3860ca853c5c45787a3923b120072b101746543756bcb3d5699e79",
    "test": "45e4c2c26e9c7361a4ae78e501c695b38678af3b072ce7d088a942efccfcc280",
}
_REFERENCE = re.compile(r"^[1-3]?[A-Za-z]+\d+:\d+ ")
_PUNCTUATION = re.compile(r"([,.;:!?()])")


def fail(message: str) -> None:
    print(f"kbk: error: {message}", file=sys.stderr)
    raise SystemExit(1)


def ensure_bible_program() -> str:
    """The path of `bible`, installing Debian's bible-kjv first when it is missing and we may (root)."""
    found = shutil.which("bible")
    if found:
        return found
    install = "apt-get install -y bible-kjv bible-kjv-text"
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        fail(f"the `bible` program (Debian package bible-kjv) is not installed: run `sudo {install}` "
             f"(after `sudo apt-get update` on a fresh machine), then rerun this command")
    print(f"[kjv] installing the bible-kjv package: {install}", file=sys.stderr)
    for command in (install, "apt-get update", install):  # a fresh machine needs the package lists first
        done = subprocess.run(command.split(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if done.returncode == 0 and shutil.which("bible"):
            return shutil.which("bible")
    fail(f"`{install}` failed ({done.stderr.strip().splitlines()[-1:] or 'no message'}): install the package by "
         f"hand, then rerun this command")


def read_verses(bible: str) -> list[str]:
    done = subprocess.run([bible, "-f", VERSE_RANGE], capture_output=True, text=True)
    lines = done.stdout.splitlines()
    if done.returncode != 0 or len(lines) != N_VERSES or not all(_REFERENCE.match(line) for line in lines):
        fail(f"`{bible} -f {VERSE_RANGE}` printed {len(lines)} lines (exit {done.returncode}), expected "
             f"{N_VERSES} verses each after its reference: check the bible-kjv installation")
    return [_REFERENCE.sub("", line) for line in lines]


def tokenise(verse: str) -> str:
    return " ".join(_PUNCTUATION.sub(r" \1 ", verse).split())


def split_of(block: int) -> str:
    return {18: "valid", 19: "test"}.get(block % 20, "train")


def prepare(verses: list[str]) -> dict[str, str]:
    parts: dict[str, list[str]] = {s: [] for s in SPLITS}
    for i, verse in enumerate(verses):
        parts[split_of(i // BLOCK_VERSES)].append(tokenise(verse))
    return {s: "\n".join(lines) + "\n" for s, lines in parts.items()}


def write_atomically(out: Path, texts: dict[str, str]) -> None:
    tmp = out.with_name(f".tmp-{out.name}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        for split, text in texts.items():
            (tmp / f"{split}.txt").write_text(text, encoding="utf-8")
        shutil.rmtree(out, ignore_errors=True)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=outputs_dir() / "corpora" / "kjv",
                        help="folder to write train.txt, valid.txt, test.txt (default: %(default)s)")
    out = parser.parse_args(argv).out.expanduser().resolve()
    texts = prepare(read_verses(ensure_bible_program()))
    write_atomically(out, texts)
    print(f"[kjv] wrote {out}")
    print("| split | verses | words | sha256 |\n|---|---:|---:|---|")
    matches = []
    for split, text in texts.items():
        digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
        matches.append(digest == EXPECTED_SHA256[split])
        print(f"| {split} | {text.count(chr(10)):,} | {len(text.split()):,} | {digest} |")
    print("[kjv] checksums match the recorded ones (bible-kjv 4.38)" if all(matches) else
          "[kjv] checksums DIFFER from the recorded ones (bible-kjv 4.38): another package version?")


if __name__ == "__main__":
    main()
