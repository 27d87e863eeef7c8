import os
import socket
import subprocess
import sys
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

import kbk.data.wikitext2 as wt2
from kbk.data import load_corpus, load_wikitext2
from kbk.errors import DataError

# rows as the hub stores them: one line of the original file per row, "" for blank lines
TRAIN = ["", " = Title = \n", "", " the cat sat \n", " the dog sat on the mat \n", " rare zebra \n", ""]
VALID = [" zebra zebra zebra qux qux \n", "", " the cat \n"]
TEST = [" test only words test only words \n"]
OFFLINE_VARS = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HTTPS_PROXY", "https_proxy")


def write_hub_copy(root):
    folder = root / "wikitext-2-raw-v1"
    folder.mkdir(parents=True)
    for split, rows in (("train", TRAIN), ("validation", VALID), ("test", TEST)):
        pq.write_table(pa.table({"text": rows}), folder / f"{split}-00000-of-00001.parquet")
    return root


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def assert_names_the_alternatives(message: str):
    for alternative in (
        "data.path=",
        "wikitext-2-raw-v1/train-00000-of-00001.parquet",
        "HF_DATASETS_OFFLINE=1",
        "data=text",
        "data=synthetic",
    ):
        assert alternative in message


def test_local_copy_keeps_the_most_frequent_training_words(tmp_path):
    root = write_hub_copy(tmp_path / "wikitext")
    c = load_wikitext2(path=root, max_vocab=3, hf_cache_dir=str(tmp_path / "hf"))
    # train counts: the 3, = 2, sat 2, then 1 each; "=" and "sat" tie and sort alphabetically;
    # zebra (5 times in validation, once in train) and the test split never count
    assert c.tokenizer.itos == ["<unk>", "<eos>", "the", "=", "sat"] and c.vocab_size == 5
    unk, eos, the, eq, sat = range(5)
    assert c.train.tolist() == [
        eq,
        unk,
        eq,
        eos,
        the,
        unk,
        sat,
        eos,
        the,
        unk,
        sat,
        unk,
        the,
        unk,
        eos,
        unk,
        unk,
        eos,
    ]
    assert c.val.tolist() == [unk] * 5 + [eos, the, unk, eos]
    assert c.name == "wikitext2" and c.loss_floor(4) is None


def test_local_copy_full_vocab_and_config_folder_as_path(tmp_path):
    root = write_hub_copy(tmp_path / "wikitext")
    c = load_corpus("wikitext2", path=root / "wikitext-2-raw-v1", hf_cache_dir=str(tmp_path / "hf"))
    words = {w for row in TRAIN for w in row.split()}
    assert set(c.tokenizer.itos) == words | {"<unk>", "<eos>"} and "test" not in c.tokenizer.itos
    assert c.tokenizer.decode(c.train.tolist()) == "".join(
        " ".join(r.split()) + "\n" for r in TRAIN if r.strip()
    )
    no_eos = load_wikitext2(path=root, eos=False, hf_cache_dir=str(tmp_path / "hf"))
    assert no_eos.train.numel() == sum(len(r.split()) for r in TRAIN) and no_eos.vocab_size == len(words) + 1


def test_local_copy_is_cached_by_its_files(tmp_path, monkeypatch):
    root = write_hub_copy(tmp_path / "wikitext")
    kw = dict(cache_dir=tmp_path / "cache", hf_cache_dir=str(tmp_path / "hf"))
    first = load_wikitext2(path=root, **kw)
    monkeypatch.setattr(wt2, "_read_local", lambda *a: pytest.fail("read the parquet files again"))
    second = load_wikitext2(path=root, **kw)
    assert second.from_cache and torch.equal(first.train, second.train) and torch.equal(first.val, second.val)


def test_a_folder_without_the_hub_layout_says_what_it_expects(tmp_path):
    (tmp_path / "wikitext-2-raw-v1").mkdir()
    for path in (tmp_path, tmp_path / "missing"):
        with pytest.raises(DataError) as e:
            load_wikitext2(path=path)
        assert str(path) in str(e.value) and "train-*.parquet" in str(e.value)
        assert_names_the_alternatives(str(e.value))


def test_unreachable_hub_fails_fast_with_one_message_naming_the_alternatives(tmp_path, monkeypatch):
    for var in OFFLINE_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{closed_port()}")
    start = time.monotonic()
    with pytest.raises(DataError) as e:
        load_corpus("wikitext2", cache_dir=tmp_path / "cache")
    assert time.monotonic() - start < 5
    assert "cannot be reached" in str(e.value)
    assert_names_the_alternatives(str(e.value))


def test_offline_mode_without_a_cache_stops_with_the_same_advice(tmp_path):
    # a fresh interpreter: `datasets` reads HF_*_OFFLINE and HF_HOME once, at import
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", HF_HOME=str(tmp_path / "hf_home"))
    code = (
        "from kbk.data import load_corpus\nfrom kbk.errors import DataError\n"
        "try:\n    load_corpus('wikitext2')\nexcept DataError as e:\n    print('DataError:', e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("DataError:") and "offline mode is set" in out.stdout
    assert_names_the_alternatives(out.stdout)


def test_a_cached_hub_corpus_loads_without_the_hub(tmp_path, monkeypatch):
    for var in OFFLINE_VARS:
        monkeypatch.delenv(var, raising=False)
    text = "".join(r if r.endswith("\n") else r + "\n" for r in TRAIN)
    monkeypatch.setattr(wt2, "_read_hub", lambda *a: (text, text))  # stands in for one successful download
    first = load_wikitext2(cache_dir=tmp_path / "cache")
    monkeypatch.undo()
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{closed_port()}")
    for var in OFFLINE_VARS:
        monkeypatch.delenv(var, raising=False)
    second = load_wikitext2(cache_dir=tmp_path / "cache")
    assert second.from_cache and torch.equal(first.train, second.train)


def test_the_test_parquet_is_the_test_split_in_the_training_vocabulary(tmp_path, monkeypatch):
    root = write_hub_copy(tmp_path / "wikitext")
    kw = dict(max_vocab=3, cache_dir=tmp_path / "cache", hf_cache_dir=str(tmp_path / "hf"))
    c = load_wikitext2(path=root, **kw)
    unk, eos, the, eq, sat = range(5)
    assert c.has_test and c.test().tolist() == [unk] * 6 + [eos]  # no test word is a training word
    reads = []
    monkeypatch.setattr(wt2, "_read_local", lambda files, cache, splits=wt2.TRAINING_SPLITS: reads.append(splits)
                        or tuple(" the = \n" for _ in splits))
    cached = load_wikitext2(path=root, **kw)
    assert reads == []  # training data from the cache: no split read at all
    assert cached.test().tolist() == [the, eq, eos] and reads == [("test",)]  # the test split alone, on demand


def test_a_local_copy_without_test_parquet_has_no_test_split(tmp_path):
    root = write_hub_copy(tmp_path / "wikitext")
    (root / "wikitext-2-raw-v1" / "test-00000-of-00001.parquet").unlink()
    c = load_wikitext2(path=root, hf_cache_dir=str(tmp_path / "hf"))
    assert not c.has_test and c.train.numel() > 0
    with pytest.raises(DataError, match="no test split"):
        c.test()


def test_the_hub_corpus_reads_its_test_split_from_the_hub(tmp_path, monkeypatch):
    text = "".join(r if r.endswith("\n") else r + "\n" for r in TRAIN)
    asked = []
    monkeypatch.setattr(wt2, "_read_hub", lambda cache, timeout, splits: asked.append(splits) or (text,) * len(splits))
    c = load_wikitext2(cache_dir=tmp_path / "cache")
    assert asked == [("train", "validation")] and c.has_test
    assert torch.equal(c.test(), c.train) and asked[-1] == ("test",)
