import os

import pytest

from kbk.files import write_atomic


def test_write_atomic_text_bytes_and_writer(tmp_path):
    target = tmp_path / "sub" / "a.txt"
    write_atomic(target, "héllo")
    assert target.read_text() == "héllo"
    write_atomic(target, b"\x00\x01")
    assert target.read_bytes() == b"\x00\x01"
    write_atomic(target, lambda f: f.write(b"streamed"), fsync=True)
    assert target.read_bytes() == b"streamed"
    assert [p.name for p in target.parent.iterdir()] == ["a.txt"]  # no temporary file left behind


def test_write_atomic_keeps_the_old_file_when_the_writer_fails(tmp_path):
    target = tmp_path / "a.txt"
    target.write_text("old")

    def fails(f):
        f.write(b"half")
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError):
        write_atomic(target, fails)
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["a.txt"]
