"""runtime/atomic.py: a rewrite is all or nothing, and a failed one leaves the old file and no debris."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from inference_server.runtime import atomic
from inference_server.runtime.atomic import write_bytes_atomic


@pytest.mark.parametrize("durable", [False, True])
def test_replaces_the_file_with_the_requested_mode(tmp_path: Path, durable: bool) -> None:
    target = tmp_path / "f.json"
    target.write_bytes(b"old")
    write_bytes_atomic(target, b"new", mode=0o644, durable=durable)
    assert target.read_bytes() == b"new"
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["f.json"]


def test_a_failed_write_keeps_the_old_file_and_removes_the_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "f.json"
    target.write_bytes(b"old")

    def refuse(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(atomic.os, "replace", refuse)
    with pytest.raises(OSError, match="disk full"):
        write_bytes_atomic(target, b"new")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.json"]


def test_a_rewrite_keeps_the_replaced_files_mode_and_a_new_file_follows_the_umask(tmp_path: Path) -> None:
    # mkstemp creates 0600: a shared registry or dataset manifest locked other users out after one rewrite.
    shared = tmp_path / "registry.json"
    shared.write_bytes(b"old")
    shared.chmod(0o664)
    write_bytes_atomic(shared, b"new", durable=True)
    assert stat.S_IMODE(shared.stat().st_mode) == 0o664
    fresh = tmp_path / "manifest.json"
    write_bytes_atomic(fresh, b"{}")
    opened = tmp_path / "opened.json"
    opened.write_bytes(b"{}")  # what a plain open() gives a new file under this process's umask
    assert stat.S_IMODE(fresh.stat().st_mode) == stat.S_IMODE(opened.stat().st_mode)
