"""Atomic writes leave whole files with the permissions any other new file gets."""
import os
import stat

from utils.io import atomic_write_bytes


def test_atomic_write_gives_the_mode_of_a_plain_new_file(tmp_path):
    plain = tmp_path / "plain"
    plain.write_bytes(b"x")
    atomic_write_bytes(str(tmp_path / "sub" / "atomic"), b"data")
    written = tmp_path / "sub" / "atomic"
    assert written.read_bytes() == b"data"
    assert stat.S_IMODE(os.stat(written).st_mode) == stat.S_IMODE(os.stat(plain).st_mode)
    assert [p for p in os.listdir(tmp_path / "sub") if p.startswith(".tmp-")] == []
