"""The JPEG shard format: compressed image folders written once, read by byte range.

``ssl-lightning prepare DIR OUT`` (:mod:`ssl_lightning.datamodules.shard_writer`) writes::

    OUT/manifest.json          written last: its presence means every shard is complete
    OUT/<split>/shard-00000.jpgs
    OUT/<split>/shard-00001.jpgs ...

A shard file is the JPEG bytes of its images back to back, then its index as JSON (file
names relative to the split folder, labels, byte offsets, a CRC-32 per image, a SHA-256 of
the JPEG bytes, the digest of the source files it was made from), then 16 bytes: the index's
length (8 bytes, little-endian) and :data:`MAGIC`. Each shard is written under a temporary
name and renamed, so a shard file is complete or absent; the manifest lists the shards and
their lengths and is renamed into place after the last one. A reader reads only folders with
a manifest and only the shards it lists, checks each shard's length at setup and each
image's CRC-32 when it reads the image: a changed byte is an error naming the shard, the
image and its file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import zlib
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

MAGIC = b"SSLJPEG1"
FORMAT = "ssl-lightning jpeg shards"
VERSION = 1
MANIFEST = "manifest.json"


class ShardError(ValueError):
    """A shard that fails its checksum or cannot be read: the message names it."""


def shard_name(split: str, number: int) -> str:
    """The path of shard ``number`` of ``split``, relative to the output folder."""
    return f"{split}/shard-{number:05d}.jpgs"


def shard_bytes(jpegs: list[bytes], index: dict[str, Any]) -> bytes:
    """One shard's content: ``jpegs`` back to back, then ``index`` completed with the byte
    offsets (``[n + 1]``), the CRC-32 of every image and the SHA-256 of all of them."""
    offsets = [0]
    for data in jpegs:
        offsets.append(offsets[-1] + len(data))
    body = b"".join(jpegs)
    full = {
        **index,
        "offsets": offsets,
        "crc32": [zlib.crc32(data) for data in jpegs],
        "sha256": hashlib.sha256(body).hexdigest(),
    }
    footer = json.dumps(full).encode()
    return body + footer + len(footer).to_bytes(8, "little") + MAGIC


def read_index(path: Path) -> dict[str, Any]:
    """The index of a shard file.

    Raises:
        ShardError: naming the file, when it does not end with a shard index.
    """
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            end = f.tell()
            f.seek(max(0, end - 16))
            trailer = f.read(16)
            if len(trailer) < 16 or trailer[8:] != MAGIC:
                raise ShardError(f"shard {path} has no index at its end (not a shard, or cut)")
            length = int.from_bytes(trailer[:8], "little")
            if length > end - 16:
                raise ShardError(f"shard {path} is shorter than its index says")
            f.seek(end - 16 - length)
            index: dict[str, Any] = json.loads(f.read(length))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ShardError(f"cannot read shard {path}: {err}") from err
    if index["offsets"][-1] != end - 16 - length:
        raise ShardError(f"shard {path}: its index does not match its length")
    return index


def body_digest(path: Path, index: dict[str, Any]) -> str:
    """The SHA-256 of a shard's JPEG bytes, computed from the file."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        remaining = index["offsets"][-1]
        while remaining:
            chunk = f.read(min(remaining, 1 << 24))
            if not chunk:
                break
            digest.update(chunk)
            remaining -= len(chunk)
    return digest.hexdigest()


def read_manifest(root: Path) -> dict[str, Any]:
    """The manifest of a shard folder.

    Raises:
        FileNotFoundError: when ``root`` has none (not a shard folder, or ``prepare`` did not
            finish), saying which command completes it.
        ValueError: when it is not a manifest this version reads.
    """
    path = Path(root) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(
            f"{root} holds no {MANIFEST}: it is not a JPEG shard folder, or `ssl-lightning "
            f"prepare` did not finish writing it; run `ssl-lightning prepare SOURCE {root}` "
            "(it resumes where it stopped), or set data.storage=uint8 for an image folder"
        )
    manifest: dict[str, Any] = json.loads(path.read_text())
    if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        raise ValueError(
            f"{path} is not a version-{VERSION} {FORMAT!r} manifest; write the shards again "
            "with `ssl-lightning prepare`"
        )
    return manifest


class JpegShards:
    """The images of one split of a shard folder, read one byte range per image.

    Nothing is read at construction beyond the shard indices; :meth:`read` gets one image's
    JPEG bytes with a single positioned read and checks its CRC-32. File handles are opened
    lazily in each process (loader workers included) and not pickled.

    Args:
        root: the shard folder (holding ``manifest.json``).
        entry: the split's entry of the manifest (``{"count", "shards": [...]}``).
    """

    def __init__(self, root: Path, entry: dict[str, Any]) -> None:
        self.root = Path(root)
        self.paths: list[Path] = []
        self.names: list[list[str]] = []  # per shard, its files relative to the split folder
        starts, crcs, shard_of, labels = [], [], [], []
        for number, shard in enumerate(entry["shards"]):
            path = self.root / shard["name"]
            if not path.is_file():
                raise ShardError(f"shard {path} listed in {MANIFEST} is missing")
            if path.stat().st_size != shard["bytes"]:
                raise ShardError(
                    f"shard {path} is {path.stat().st_size} bytes, {MANIFEST} says "
                    f"{shard['bytes']}: it changed after it was written; run `ssl-lightning "
                    "prepare` again to rewrite it"
                )
            index = read_index(path)
            self.paths.append(path)
            self.names.append(index["files"])
            starts.append(torch.as_tensor(index["offsets"], dtype=torch.int64))
            crcs.append(torch.as_tensor(index["crc32"], dtype=torch.int64))
            shard_of.append(torch.full((len(index["files"]),), number, dtype=torch.int32))
            labels.append(torch.as_tensor(index["labels"], dtype=torch.int64))
        self.offsets = torch.cat([s[:-1] for s in starts])  # [N] first byte in its shard
        self.lengths = torch.cat([s.diff() for s in starts])  # [N] bytes
        self.crc32 = torch.cat(crcs)  # [N]
        self.shard_of = torch.cat(shard_of)  # [N]
        self.first = torch.cumsum(torch.tensor([0] + [len(n) for n in self.names]), 0)
        self.labels = torch.cat(labels)  # [N] int64, -1 = unlabeled
        self._files: dict[int, int] = {}

    def __len__(self) -> int:
        return int(self.offsets.shape[0])

    def describe(self, row: int) -> str:
        """``shard <path>, image <i> (<file>)`` of a row, for messages."""
        shard = int(self.shard_of[row])
        i = row - int(self.first[shard])
        return f"shard {self.paths[shard]}, image {i} ({self.names[shard][i]})"

    def read(self, row: int) -> Tensor:
        """The JPEG bytes of ``row`` as a ``[n]`` uint8 tensor, checked against its CRC-32.

        Raises:
            ShardError: naming the shard, the image and its file when the bytes changed.
        """
        shard = int(self.shard_of[row])
        fd = self._files.get(shard)
        if fd is None:
            fd = self._files[shard] = os.open(self.paths[shard], os.O_RDONLY)
        length, offset = int(self.lengths[row]), int(self.offsets[row])
        data = torch.empty(length, dtype=torch.uint8)
        if os.preadv(fd, [data.numpy().data], offset) != length:
            raise ShardError(f"{self.describe(row)}: the file ended early")
        if zlib.crc32(data.numpy().data) != int(self.crc32[row]):
            raise ShardError(
                f"{self.describe(row)} fails its checksum: the shard changed after it was "
                "written; run `ssl-lightning prepare` again to rewrite it"
            )
        return data

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_files": {}}  # each process opens its own handles

    def __del__(self) -> None:
        for fd in getattr(self, "_files", {}).values():
            with contextlib.suppress(OSError):
                os.close(fd)
