"""Atomic writes and hard links into the image store (instatag.files)."""

from __future__ import annotations

import errno
import os

from instatag.files import link_or_copy, write_atomic


def test_write_atomic_replaces_whole_and_syncs_when_durable(tmp_path, monkeypatch):
    target = tmp_path / "a" / "b.bin"
    write_atomic(target, b"first")
    synced = []
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(fd))
    write_atomic(target, b"second", durable=True)
    assert target.read_bytes() == b"second" and os.listdir(target.parent) == ["b.bin"] and len(synced) == 1


def test_link_or_copy_keeps_the_bytes_that_were_read(tmp_path, monkeypatch):
    src, store = tmp_path / "drop" / "a.jpg", tmp_path / "store"
    src.parent.mkdir()
    src.write_bytes(b"photo")
    data, st = src.read_bytes(), os.stat(src)
    assert link_or_copy(str(store / "ab" / "1"), data, str(src), st) is False  # linked, folder made
    assert os.path.samefile(store / "ab" / "1", src)
    (store / "ab" / "2").write_bytes(b"kept")
    assert link_or_copy(str(store / "ab" / "2"), data, str(src), st) is False  # already there: kept
    assert (store / "ab" / "2").read_bytes() == b"kept"

    with src.open("ab") as fh:  # grew after it was read: the bytes read are written instead
        fh.write(b"+more")
    assert link_or_copy(str(store / "3"), data, str(src), st) is True
    assert (store / "3").read_bytes() == b"photo" and not os.path.samefile(store / "3", src)
    other = tmp_path / "drop" / "b.jpg"  # replaced by another file of the same size
    other.write_bytes(b"PHOTO")
    os.replace(other, src)
    assert link_or_copy(str(store / "4"), data, str(src), st) is True
    assert (store / "4").read_bytes() == b"photo"
    src.unlink()  # gone
    assert link_or_copy(str(store / "5"), data, str(src), st) is True
    assert (store / "5").read_bytes() == b"photo"

    src.write_bytes(b"photo")
    data, st = src.read_bytes(), os.stat(src)
    monkeypatch.setattr(os, "link", lambda *a, **k: (_ for _ in ()).throw(OSError(errno.EXDEV, "cross-device")))
    assert link_or_copy(str(store / "6"), data, str(src), st) is True
    assert (store / "6").read_bytes() == b"photo" and not os.path.samefile(store / "6", src)
    assert not list(store.rglob(".*")), "temporary files left"
