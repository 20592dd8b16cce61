"""Files written whole or not at all, with the permissions the user's umask gives.

Every file the library writes (exported weights, checkpoints, the image cache) goes through a
temporary in the destination's folder, named after the writing host and process
(:func:`temporary_path`), and is renamed into place once complete: a crash or a kill while
writing leaves the previous file intact. A killed process cannot delete its temporary, so
:func:`remove_stale_temporaries` deletes those whose process is gone before a folder is
written again.

Examples:
    >>> atomic_write("weights.pt", lambda f: torch.save(state, f))  # doctest: +SKIP
"""

from __future__ import annotations

import errno
import os
import re
import socket
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

__all__ = ["atomic_write", "remove_stale_temporaries", "temporary_path"]

# "<name>.tmp-<host>-<pid>": the host and process that may still be writing it.
_TEMPORARY = re.compile(r"^\.?(?P<name>.+)\.tmp-(?P<host>[^/]*)-(?P<pid>\d+)$")


def _host() -> str:
    return socket.gethostname().replace("-", "_") or "localhost"


def temporary_path(path: str | Path) -> Path:
    """A hidden temporary beside ``path`` owned by this process: ``.<name>.tmp-<host>-<pid>``."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp-{_host()}-{os.getpid()}")


def _process_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError as err:
        return err.errno == errno.ESRCH
    return False


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Deletes the temporaries in ``folder`` left by killed processes of this host.

    A temporary of another host (a shared file system) is kept: its process cannot be checked
    from here, and it may still be writing.

    Returns:
        The deleted paths.
    """
    folder = Path(folder)
    removed: list[Path] = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    host = _host()
    for entry in entries:
        match = _TEMPORARY.match(entry.name)
        if match is None or match["host"] != host or not _process_gone(int(match["pid"])):
            continue
        try:
            os.unlink(entry.path)
        except OSError:
            continue  # removed meanwhile by another process, or not ours to remove
        removed.append(Path(entry.path))
    return removed


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], Any]) -> Path:
    """Writes ``path`` by ``write(file)`` into a temporary beside it, then renames it into place.

    The temporary is created like any new file (mode ``0o666`` less the umask), flushed to disk
    before the rename, and deleted if ``write`` fails; the folder is created if needed.

    Args:
        path: the destination; replaced if it exists.
        write: writes the whole content to the binary file it is given.

    Returns:
        ``path`` as a ``Path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path.parent)
    tmp = temporary_path(path)
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _sync_folder(path.parent)
    return path


def _sync_folder(folder: Path) -> None:
    """Flushes a rename to disk (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
