"""The KJV corpus: `experiments/data/kjv.py` prepares it (here from a stand-in `bible` program that prints verses
in the real one's format, so no package is needed), and `data=kjv` reads it or names the command that writes it."""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
import sys

import pytest
from conftest import compose_kbk
from omegaconf import OmegaConf

from kbk import build
from kbk.data import load_corpus
from kbk.errors import DataError
from kbk.paths import PROJECT_ROOT

SCRIPT = PROJECT_ROOT / "experiments" / "data" / "kjv.py"
N_VERSES = 31_102


def fake_bible(folder, verses: int = N_VERSES):
    """A `bible` that prints `verses` verses as `bible -f` does: `<Book><chapter>:<verse> <text>` per line."""
    folder.mkdir(parents=True, exist_ok=True)
    program = folder / "bible"
    program.write_text(
        f"#!{sys.executable}\n"
        "import sys\n"
        "assert sys.argv[1:] == ['-f', 'Gen1:1-Rev22:21'], sys.argv\n"
        f"for i in range({verses}):\n"
        "    book = ['Ge', '1Sm', 'Rev'][i % 3]\n"
        "    print(f'{book}{i // 40 + 1}:{i % 40 + 1} And verse{i % 50} said, Lo; word{i % 9000} (here): amen.')\n"
    )
    program.chmod(program.stat().st_mode | stat.S_IEXEC)
    return folder


def prepare(tmp_path, out, verses: int = N_VERSES):
    env = {**os.environ, "PATH": f"{fake_bible(tmp_path / 'bin', verses)}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run([sys.executable, str(SCRIPT), "--out", str(out)], capture_output=True, text=True, env=env,
                          timeout=120)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("kjv")
    done = prepare(tmp, tmp / "corpus")
    assert done.returncode == 0, done.stderr
    return tmp, done


def test_prepare_splits_verse_blocks_deterministically_and_prints_checksums(prepared):
    tmp, done = prepared
    files = {s: (tmp / "corpus" / f"{s}.txt").read_text() for s in ("train", "valid", "test")}
    lines = {s: text.splitlines() for s, text in files.items()}
    # blocks of 100 verses: 311 blocks, of which 16 (i % 20 == 18) are valid and 15 (i % 20 == 19) test
    assert {s: len(v) for s, v in lines.items()} == {"train": 28_102, "valid": 1_500, "test": 1_500}
    assert lines["valid"][0].startswith("And verse0 said")  # verse 1800, the first of block 18: 1800 % 50 == 0
    # references dropped, punctuation split off into tokens of its own
    assert lines["train"][0] == "And verse0 said , Lo ; word0 ( here ) : amen ."
    for split, text in files.items():
        digest = hashlib.sha256(text.encode()).hexdigest()
        assert f"| {split} | {len(lines[split]):,} | {len(text.split()):,} | {digest} |" in done.stdout
    assert "checksums DIFFER" in done.stdout  # the stand-in is not bible-kjv 4.38
    again = prepare(tmp, tmp / "again")
    assert again.stdout.replace(str(tmp / "again"), str(tmp / "corpus")) == done.stdout  # same input, same files


def test_the_kjv_preset_reads_the_prepared_corpus(prepared):
    tmp, _ = prepared
    settings = OmegaConf.to_object(compose_kbk(["data=kjv", f"data.path={tmp / 'corpus'}",
                                                f"data.cache_dir={tmp / 'cache'}"]))
    corpus = build.corpus(settings)
    # 9,000 "wordN" + a few others, capped at 8,000 words, plus <unk> and <eos> (one per verse)
    assert corpus.vocab_size == 8_002 and corpus.tokenizer.itos[:2] == ["<unk>", "<eos>"]
    assert corpus.val.numel() == 1_500 * 14  # 13 tokens and <eos> per verse


def test_a_missing_corpus_names_the_command_that_prepares_it(tmp_path):
    settings = OmegaConf.to_object(compose_kbk(["data=kjv", f"data.path={tmp_path / 'nowhere'}"]))
    assert settings.data.prepare_command == f"python experiments/data/kjv.py --out {tmp_path / 'nowhere'}"
    with pytest.raises(DataError) as error:
        build.corpus(settings)
    assert str(error.value) == (f"data.path={tmp_path / 'nowhere'} does not exist: prepare the corpus with "
                                f"`python experiments/data/kjv.py --out {tmp_path / 'nowhere'}`")
    with pytest.raises(DataError, match="set data.path to an existing"):  # plain data=text keeps its own advice
        load_corpus("text", path=tmp_path / "nowhere")


def test_unexpected_bible_output_stops_with_one_line_and_writes_nothing(tmp_path):
    done = prepare(tmp_path, tmp_path / "corpus", verses=3)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "kbk: error: `" + str(tmp_path / "bin" / "bible") + " -f Gen1:1-Rev22:21` printed 3 lines (exit 0), "
        "expected 31102 verses each after its reference: check the bible-kjv installation"]
    assert not (tmp_path / "corpus").exists()


def test_the_kjv_preset_has_the_prepared_test_split(prepared):
    tmp, _ = prepared
    settings = OmegaConf.to_object(compose_kbk(["data=kjv", f"data.path={tmp / 'corpus'}",
                                                f"data.cache_dir={tmp / 'cache'}"]))
    corpus = build.corpus(settings)
    test_text = (tmp / "corpus" / "test.txt").read_text()
    assert corpus.test().numel() == 1_500 * 14  # 13 tokens and <eos> per verse
    assert corpus.test().tolist() == corpus.tokenizer.encode(test_text)
    assert corpus.train.numel() == 28_102 * 14  # the test verses are in neither training nor validation
