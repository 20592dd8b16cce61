"""The on-disk cache of decoded image folders: where it lives, its key, reading and writing.

A cache entry is a raw ``[N, 3, H, W]`` uint8 file (``<folder>-<digest>.u8``) plus a small
JSON file (count, skipped files), named by a digest of the folder's file list, sizes and
modification times. It is read back in one sequential read, or memory-mapped when the images
exceed the memory budget. Both files are written under temporary names and renamed, the JSON
last, so a reader never sees a half-written entry; the temporaries of killed runs are removed
by the next :func:`read_cache`. The files get the umask's permissions, like any other.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch
from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from torch import Tensor

from ssl_lightning.files import remove_stale_temporaries, temporary_path

_CACHE_VERSION = 2


def default_cache_dir() -> Path:
    """``$SSL_LIGHTNING_CACHE``, else ``$XDG_CACHE_HOME/ssl_lightning``, else ``~/.cache/...``."""
    if "SSL_LIGHTNING_CACHE" in os.environ:
        return Path(os.environ["SSL_LIGHTNING_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "ssl_lightning"


def default_memory_budget_gb() -> float:
    """Half of the machine's physical memory, in GB (10^9 bytes)."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 8.0
    return total / 2 / 1e9


def cache_path(cache_dir: Path, folder: Path, files: list[str], size: tuple[int, int]) -> Path:
    """The cache file of ``files`` (under ``folder``) decoded to ``size`` (h, w).

    The name digests the cache version, the folder, the size and every file's relative path,
    size and modification time: any change to the folder's contents gives a new entry.
    """
    digest = hashlib.sha1(f"{_CACHE_VERSION}|{folder.resolve()}|{size}".encode())
    prefix = len(str(folder)) + 1
    for f in files:
        stat = os.stat(f)
        digest.update(f"|{f[prefix:]}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return cache_dir / f"{folder.name}-{digest.hexdigest()[:20]}.u8"


def _read_into(path: Path, out: Tensor) -> None:
    """Fills the contiguous uint8 tensor ``out`` with the first bytes of ``path``."""
    view = out.numpy().reshape(-1).data  # a flat, writable memoryview of the tensor
    with open(path, "rb", buffering=0) as f:
        filled = 0
        while filled < len(view):
            n = f.readinto(view[filled:])
            if not n:
                raise OSError(f"{path} ended after {filled} of {len(view)} bytes")
            filled += n


def read_cache(
    path: Path, num_files: int, size: tuple[int, int], in_memory: bool
) -> tuple[Tensor, list[int]] | None:
    """The cached images and the indices of skipped files, or ``None`` without a cache.

    First removes the temporaries that killed runs left in the cache folder (a decode killed
    mid-way leaves one as large as the decoded split).

    Args:
        path: the cache file (:func:`cache_path`).
        num_files: files in the folder; the entry must hold them all, decoded or skipped.
        size: (h, w) of the decoded images.
        in_memory: read the file into RAM; otherwise memory-map it (copy-on-write).

    Returns:
        ``(images [count, 3, h, w] uint8, skipped file indices)``, or ``None`` when there is
        no valid entry.
    """
    remove_stale_temporaries(path.parent)
    meta_path = path.with_suffix(".json")
    try:
        meta = json.loads(meta_path.read_text())
        count, skipped = meta["count"], meta["skipped_rows"]
        shape = (count, 3, *size)
        nbytes = int(np.prod(shape))
        if count + len(skipped) != num_files or path.stat().st_size < nbytes:
            return None
        if in_memory:
            images = torch.empty(shape, dtype=torch.uint8)
            _read_into(path, images)
        else:
            images = torch.from_file(str(path), shared=False, size=nbytes, dtype=torch.uint8)
            images = images.view(shape)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return images, list(skipped)


def create_mapped(path: Path, nbytes: int) -> Path:
    """Creates the temporary of the cache file ``path`` that a decode writes into through a
    memory map: ``nbytes`` long (sparse), with the umask's permissions, which
    ``torch.from_file`` alone would not give (it creates files 0600)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(path)
    with open(tmp, "wb") as f:
        f.truncate(nbytes)
    return tmp


def write_cache(
    path: Path, images: Tensor, bad: list[int], skipped: list[str], mapped: Path | None
) -> None:
    """Writes (or, for a mapped file, renames) the data, then the JSON that validates it.

    Args:
        path: the cache file (:func:`cache_path`).
        images: ``[count, 3, H, W]`` uint8 decoded images, skipped files left out.
        bad: indices of the skipped files in the folder's file list.
        skipped: their paths relative to the folder, for people reading the JSON.
        mapped: the temporary file ``images`` is memory-mapped from, renamed into place
            instead of written again; ``None`` for images in RAM.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if mapped is not None:
            mapped.replace(path)  # the mapping follows the file; its pages reach the disk
        else:
            tmp = temporary_path(path)
            images.numpy().tofile(tmp)
            tmp.replace(path)  # atomic: a reader never sees a half-written cache
        meta_tmp = temporary_path(path.with_suffix(".json"))
        meta = {
            "version": _CACHE_VERSION,
            "count": images.shape[0],
            "skipped_rows": bad,
            "skipped": skipped,
        }
        meta_tmp.write_text(json.dumps(meta))
        meta_tmp.replace(path.with_suffix(".json"))
    except OSError as err:
        rank_zero_warn(f"could not write the image cache {path}: {err}")
