"""The files the library writes: whole or not at all (a kill while writing keeps the previous
file), with the umask's permissions, no temporaries left by killed runs, no empty log folder
left by a failed run, and a checkpoint at the end of every fit."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from ssl_lightning.files import atomic_write, remove_stale_temporaries, temporary_path


@pytest.fixture
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _dead_pid() -> int:
    """The id of a process that has exited (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_atomic_write_replaces_whole_files_with_the_umasks_mode(
    tmp_path: Path, umask_022: None
) -> None:
    path = tmp_path / "sub" / "file.bin"
    atomic_write(path, lambda f: f.write(b"first"))
    assert path.read_bytes() == b"first" and _mode(path) == 0o644

    def fail_halfway(f) -> None:
        f.write(b"half of the")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, fail_halfway)
    assert path.read_bytes() == b"first"  # the previous content, whole
    assert sorted(p.name for p in path.parent.iterdir()) == ["file.bin"]  # no temporary left


def test_only_temporaries_of_dead_processes_of_this_host_are_removed(tmp_path: Path) -> None:
    host = socket.gethostname().replace("-", "_")
    dead = tmp_path / f".a.ckpt.tmp-{host}-{_dead_pid()}"
    mine = temporary_path(tmp_path / "b.ckpt")  # this process: alive
    other_host = tmp_path / ".c.ckpt.tmp-elsewhere-1"
    unrelated = tmp_path / "d.tmp-notes.txt"
    for path in (dead, mine, other_host, unrelated):
        path.write_bytes(b"x")
    assert mine.name == f".b.ckpt.tmp-{host}-{os.getpid()}"
    assert remove_stale_temporaries(tmp_path) == [dead]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        p.name for p in (mine, other_host, unrelated)
    )
