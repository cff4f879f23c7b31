"""Atomic files: a reader sees the old content or the new, never a part."""

from __future__ import annotations

from pathlib import Path

import pytest

from aetrain.atomic import write_atomic


def test_a_write_that_fails_half_way_leaves_the_old_file_and_no_debris(tmp_path: Path) -> None:
    target = tmp_path / "last.pt"
    write_atomic(target, b"complete checkpoint", durable=True)

    def dies_half_way(f) -> None:
        f.write(b"half a ")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        write_atomic(target, dies_half_way, durable=True)
    assert target.read_bytes() == b"complete checkpoint"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


def test_text_bytes_and_writer_functions_all_land_whole_in_a_new_folder(tmp_path: Path) -> None:
    write_atomic(tmp_path / "a" / "t.json", "{}\n")
    write_atomic(tmp_path / "a" / "b.bin", b"\x00\x01")
    write_atomic(tmp_path / "a" / "f.txt", lambda f: f.write(b"written by a function"))
    assert (tmp_path / "a" / "t.json").read_text() == "{}\n"
    assert (tmp_path / "a" / "b.bin").read_bytes() == b"\x00\x01"
    assert (tmp_path / "a" / "f.txt").read_bytes() == b"written by a function"
