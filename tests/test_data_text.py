import os

import pytest
import torch

import kbk.data.corpus as corpus_module
from kbk.data import load_corpus, load_text
from kbk.data.text import split_text
from kbk.errors import DataError

LINES = [f"line {i} says {'abcdefghij'[i % 10]}\n" for i in range(100)]


def test_file_split_keeps_the_last_fraction_for_validation_cut_at_a_line(tmp_path):
    text = "".join(LINES)
    (tmp_path / "a.txt").write_text(text)
    c = load_text(path=tmp_path / "a.txt", tokenizer="char", val_fraction=0.2)
    train, val = c.tokenizer.decode(c.train.tolist()), c.tokenizer.decode(c.val.tolist())
    assert train + val == text and train.endswith("\n")
    assert len(val) == pytest.approx(0.2 * len(text), abs=len(LINES[0]) + 1)
    assert c.name == "text" and c.vocab_size == c.tokenizer.vocab_size and c.train.dtype == torch.long
    assert split_text("one two three four", 0.5) == (
        "one two three ",
        "four",
    )  # no newline: the next word end


def test_tokenizer_is_fitted_on_training_text_only(tmp_path):
    (tmp_path / "a.txt").write_text("aaaa bbbb\n" * 9 + "zzzz qqqq\n")
    c = load_text(path=tmp_path / "a.txt", tokenizer="char", val_fraction=0.1)
    assert "z" not in c.tokenizer.itos and (c.val == 0).sum() == 8  # validation-only characters are <unk>
    w = load_text(path=tmp_path / "a.txt", tokenizer="word", val_fraction=0.1)
    assert w.tokenizer.itos == ["<unk>", "<eos>", "aaaa", "bbbb"] and w.val.tolist() == [0, 0, 1]


def test_folder_is_all_txt_files_sorted_or_its_train_and_valid_files(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "2.txt").write_text("second file")  # no final newline: one is added
    (tmp_path / "1.txt").write_text("first file\n")
    (tmp_path / "notes.md").write_text("not text data\n")
    c = load_text(path=tmp_path, tokenizer="char", val_fraction=0.3)
    assert c.tokenizer.decode(torch.cat([c.train, c.val]).tolist()) == "first file\nsecond file\n"
    (tmp_path / "train.txt").write_text("x y x\n")
    (tmp_path / "valid.txt").write_text("y z\n")
    w = load_text(path=tmp_path, tokenizer="word")
    assert (
        w.tokenizer.decode(w.train.tolist()) == "x y x\n"
        and w.tokenizer.decode(w.val.tolist()) == "y <unk>\n"
    )


def test_bpe_text_corpus_round_trips(tmp_path):
    text = "".join(LINES) * 3
    (tmp_path / "a.txt").write_text(text)
    c = load_text(path=tmp_path / "a.txt", tokenizer="bpe", bpe_vocab_size=300)
    assert c.tokenizer.decode(torch.cat([c.train, c.val]).tolist()) == text


@pytest.mark.parametrize("setup", ["missing", "empty", "blank", "no_txt", "binary", "none"])
def test_unusable_paths_name_the_path_and_the_fix(tmp_path, setup):
    path = tmp_path / "data.txt"
    if setup == "empty":
        path.write_text("")
    elif setup == "blank":
        path.write_text("  \n\n")
    elif setup == "no_txt":
        path = tmp_path / "folder"
        path.mkdir()
        (path / "a.csv").write_text("x,y\n")
    elif setup == "binary":
        path.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(DataError) as e:
        load_corpus("text", path=None if setup == "none" else path)
    assert "data.path" in str(e.value) and "data=synthetic" in str(e.value)
    if setup != "none":
        assert str(path) in str(e.value)


def test_too_little_text_and_bad_fraction_are_data_errors(tmp_path):
    (tmp_path / "a.txt").write_text("one\n")
    with pytest.raises(ValueError, match=r"^val_fraction=1\.0 is not allowed: it must be a number strictly between"):
        load_text(path=tmp_path / "a.txt", val_fraction=1.0)  # TextConfig's own check, a plain ValueError
    with pytest.raises(DataError, match=r"^data\.val_fraction=1\.0 is not allowed"):  # from the config: a user's
        load_corpus("text", path=str(tmp_path / "a.txt"), val_fraction=1.0)
    with pytest.raises(DataError, match="tokens after tokenisation"):
        load_text(path=tmp_path / "a.txt", tokenizer="word")


def test_second_load_reads_the_cache_without_tokenising(tmp_path, monkeypatch, caplog):
    (tmp_path / "a.txt").write_text("".join(LINES))
    cache = tmp_path / "cache"
    caplog.set_level("INFO", logger="kbk.data")
    first = load_text(path=tmp_path / "a.txt", tokenizer="word", cache_dir=cache)
    # The slow phase is said as it starts and ends (kbk's logger: the console and run.log in a run).
    said = [r.getMessage() for r in caplog.records if r.name == "kbk.data"]
    assert said[0].startswith(f"data text: tokenising {len(''.join(LINES)):,} characters with the word tokenizer")
    assert said[1].startswith("data text: tokenised in ") and len(said) == 2
    caplog.clear()
    entry = first.cache_path
    assert not first.from_cache and entry.parent == cache and entry.name.startswith("text-")
    assert sorted(p.name for p in entry.iterdir()) == ["meta.json", "tokenizer.json", "train.pt", "val.pt"]
    mtimes = {p.name: p.stat().st_mtime_ns for p in entry.iterdir()}

    monkeypatch.setattr(corpus_module, "build_tokenizer", lambda *a, **k: pytest.fail("re-tokenised"))
    second = load_text(path=tmp_path / "a.txt", tokenizer="word", cache_dir=cache)
    assert second.from_cache and second.cache_path == entry
    assert torch.equal(second.train, first.train) and torch.equal(second.val, first.val)
    assert second.train.dtype == torch.long and second.tokenizer.itos == first.tokenizer.itos
    assert {p.name: p.stat().st_mtime_ns for p in entry.iterdir()} == mtimes
    assert [p.name for p in cache.iterdir()] == [entry.name]  # nothing else written
    assert not [r for r in caplog.records if r.name == "kbk.data"]  # a cache hit tokenises nothing, says nothing


def test_cache_key_follows_settings_and_file_changes(tmp_path):
    path, cache = tmp_path / "a.txt", tmp_path / "cache"
    path.write_text("".join(LINES))
    a = load_text(path=path, tokenizer="word", cache_dir=cache)
    b = load_text(path=path, tokenizer="char", cache_dir=cache)
    assert a.cache_path != b.cache_path and not b.from_cache
    path.write_text("".join(LINES) + "an extra line\n")
    os.utime(path, ns=(1, 1))  # even an edit that kept the mtime changes the size
    c = load_text(path=path, tokenizer="word", cache_dir=cache)
    assert not c.from_cache and c.cache_path not in (a.cache_path, b.cache_path)
    assert c.val.numel() > a.val.numel()


def test_a_failed_cache_write_leaves_no_entry_and_the_next_load_rebuilds(tmp_path, monkeypatch):
    (tmp_path / "a.txt").write_text("".join(LINES))
    cache = tmp_path / "cache"
    real_save = torch.save

    def dies_on_val(obj, f, *a, **k):
        if str(f).endswith("val.pt"):
            raise KeyboardInterrupt  # as if the run were killed half-way through writing the entry
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(corpus_module.torch, "save", dies_on_val)
    with pytest.raises(KeyboardInterrupt):
        load_text(path=tmp_path / "a.txt", cache_dir=cache)
    assert list(cache.iterdir()) == []
    monkeypatch.setattr(corpus_module.torch, "save", real_save)
    fresh = load_text(path=tmp_path / "a.txt", cache_dir=cache)
    assert not fresh.from_cache and load_text(path=tmp_path / "a.txt", cache_dir=cache).from_cache


def test_a_corrupt_cache_entry_is_rebuilt(tmp_path):
    (tmp_path / "a.txt").write_text("".join(LINES))
    cache = tmp_path / "cache"
    first = load_text(path=tmp_path / "a.txt", cache_dir=cache)
    (first.cache_path / "train.pt").write_bytes(b"garbage")
    again = load_text(path=tmp_path / "a.txt", cache_dir=cache)
    assert not again.from_cache and torch.equal(again.train, first.train)
    assert load_text(path=tmp_path / "a.txt", cache_dir=cache).from_cache


def test_a_folders_test_txt_is_the_test_split_tokenised_with_the_training_vocabulary(tmp_path):
    (tmp_path / "train.txt").write_text("x y x\n")
    (tmp_path / "valid.txt").write_text("y x\n")
    (tmp_path / "test.txt").write_text("x z y\n")
    c = load_text(path=tmp_path, tokenizer="word", cache_dir=tmp_path / "cache")
    assert c.has_test and c.tokenizer.decode(c.test().tolist()) == "x <unk> y\n"  # "z" is in no training text
    assert "z" not in c.tokenizer.itos and c.vocab_size == 4
    assert torch.equal(c.split("test"), c.test()) and torch.equal(c.split("val"), c.val)


def test_training_never_reads_the_test_file_and_its_edits_keep_the_cache(tmp_path):
    (tmp_path / "train.txt").write_text("a b a\n")
    (tmp_path / "valid.txt").write_text("b a\n")
    (tmp_path / "test.txt").write_bytes(b"\xff\xfe not utf-8")  # reading it would fail
    cache = tmp_path / "cache"
    first = load_text(path=tmp_path, tokenizer="word", cache_dir=cache)
    assert first.train.numel() == 4 and first.has_test
    with pytest.raises(DataError, match="test.txt is not UTF-8"):
        first.test()
    (tmp_path / "test.txt").write_text("b b\n")
    second = load_text(path=tmp_path, tokenizer="word", cache_dir=cache)
    assert second.from_cache and second.cache_path == first.cache_path  # the training entry ignores the test file
    assert second.tokenizer.decode(second.test().tolist()) == "b b\n"


def test_a_folder_without_valid_txt_holds_its_test_txt_out_of_training_and_validation(tmp_path):
    (tmp_path / "a.txt").write_text("".join(LINES))
    (tmp_path / "test.txt").write_text("line 3 says zzz\n")
    c = load_text(path=tmp_path, tokenizer="word", val_fraction=0.2)
    assert c.train.numel() + c.val.numel() == 5 * len(LINES)  # 4 words and <eos> a line: no test line among them
    assert c.tokenizer.decode(c.test().tolist()) == "line 3 says <unk>\n"
    (tmp_path / "a.txt").unlink()
    with pytest.raises(DataError, match="without any .txt file besides test.txt"):
        load_text(path=tmp_path)


def test_a_single_file_has_no_test_split_and_asking_for_one_says_how_to_get_it(tmp_path):
    (tmp_path / "a.txt").write_text("".join(LINES))
    c = load_text(path=tmp_path / "a.txt")
    assert not c.has_test
    with pytest.raises(DataError, match="no test split: give data.path a folder with a test.txt"):
        c.test()
    (tmp_path / "test.txt").write_text("\n\n")
    with pytest.raises(DataError, match="test split has 0 tokens"):
        load_text(path=tmp_path).test()
