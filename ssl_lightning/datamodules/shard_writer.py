"""Writing JPEG shards (``ssl-lightning prepare``): resized JPEG bytes, resumable, atomic.

Every image of ``DIR/train`` (and ``DIR/test`` or ``DIR/val``) is decoded once, its shorter
side resized to ``size`` (never enlarged) and encoded as JPEG at ``quality``; a JPEG that
needs no resizing keeps its own bytes. Shards hold ``images_per_shard`` source files each, in
the order of the image listing. A shard is written whole under a temporary name and renamed
(:func:`~ssl_lightning.files.atomic_write`); the manifest goes last. A run that was killed is
resumed by running it again: every finished shard whose source files (names, sizes,
modification times) and settings are unchanged, and whose bytes still match their SHA-256, is
kept, and the rest are written, so the result is byte-identical to an uninterrupted run.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any

from PIL import Image
from tqdm.auto import tqdm

from ssl_lightning.datamodules.decode import DECODE_ERRORS, list_split, to_rgb
from ssl_lightning.datamodules.shards import (
    FORMAT,
    MANIFEST,
    VERSION,
    ShardError,
    body_digest,
    read_index,
    shard_bytes,
    shard_name,
)
from ssl_lightning.files import atomic_write, remove_stale_temporaries

__all__ = ["encode_image", "prepare_shards"]


def encode_image(path: str, size: int, quality: int) -> bytes:
    """The JPEG bytes of one image with its shorter side at most ``size``.

    A baseline RGB or grayscale JPEG already small enough keeps its bytes (re-encoding would
    only lose detail); anything else is converted to RGB, resized (antialiased bilinear, as
    the uint8 cache does) and encoded at ``quality`` with 4:2:0 chroma subsampling.

    Raises:
        ValueError: naming the file, when it cannot be decoded.
    """
    try:
        with Image.open(path) as img:
            if img.format == "JPEG" and img.mode in ("RGB", "L") and min(img.size) <= size:
                img.load()  # a truncated file fails here instead of in training
                with open(path, "rb") as f:
                    return f.read()
            img.draft("RGB", (size, size))  # JPEG: decode at a reduced scale when possible
            img = to_rgb(img)
            scale = size / min(img.size)
            if scale < 1.0:
                new = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
                img = img.resize(new, Image.Resampling.BILINEAR, reducing_gap=None)
            out = io.BytesIO()
            img.save(out, "JPEG", quality=quality, subsampling=2)
            return out.getvalue()
    except DECODE_ERRORS as err:
        raise ValueError(f"cannot decode image {path}: {err}") from err


def _source_digest(files: list[str], folder: Path, settings: str) -> str:
    """Digest of a shard's sources (relative names, sizes, modification times) and settings."""
    digest = hashlib.sha1(settings.encode())
    prefix = len(str(folder)) + 1
    for f in files:
        stat = os.stat(f)
        digest.update(f"|{f[prefix:]}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()


def _kept(path: Path, source: str) -> dict[str, Any] | None:
    """The index of a finished shard made from ``source`` and still intact, else ``None``."""
    if not path.is_file():
        return None
    try:
        index = read_index(path)
    except ShardError:
        return None
    if index.get("source") != source or body_digest(path, index) != index["sha256"]:
        return None
    return index


def _splits(source: Path) -> Iterator[tuple[str, list[str], list[int], list[str]]]:
    """``(split folder name, files, labels, classes)`` of train, then test or val."""
    train = source / "train"
    if not train.is_dir():
        raise FileNotFoundError(
            f"no train/ folder in {source}; expected {source}/train/<class>/<image> (and "
            "optionally test/ or val/)"
        )
    files, classes, labels = list_split(train)
    yield "train", files, labels, classes
    for name in ("test", "val"):
        if (source / name).is_dir():
            yield name, *list_split(source / name, classes)[::2], classes
            return


def prepare_shards(
    source: str | Path,
    out: str | Path,
    size: int = 256,
    quality: int = 90,
    images_per_shard: int = 1000,
    workers: int | None = None,
    skip_bad_files: bool = False,
    progress: bool = True,
) -> Path:
    """Writes (or completes) the JPEG shards of an image folder; returns the manifest's path.

    Args:
        source: folder holding ``train/<class>/<image>`` and optionally ``test/`` or ``val/``.
        out: the shard folder to write (created; a finished one with other settings is
            rewritten shard by shard).
        size: the shorter side of the stored images, in pixels (smaller images keep theirs).
        quality: JPEG quality of re-encoded images, 1 to 95.
        images_per_shard: source files per shard: the unit that is written atomically and
            kept on a resume.
        workers: threads that decode, resize and encode (``None`` = number of CPUs).
        skip_bad_files: leave out files that cannot be decoded (listed in the manifest and
            in each shard's index) instead of stopping at the first one.
        progress: show a progress bar per split.
    """
    if size < 1 or not 1 <= quality <= 95 or images_per_shard < 1:
        raise ValueError(
            f"size={size}, quality={quality}, images_per_shard={images_per_shard}: expected "
            "size >= 1 (--size), quality in [1, 95] (--quality), images_per_shard >= 1 "
            "(--images-per-shard)"
        )
    source, out = Path(source), Path(out)
    if not source.is_dir():
        raise FileNotFoundError(f"source folder {source} does not exist")
    encode = functools.partial(_encode, size=size, quality=quality, skip=skip_bad_files)
    settings = f"{VERSION}|{size}|{quality}"
    manifest: dict[str, Any] = {"format": FORMAT, "version": VERSION, "size": size}
    manifest.update(quality=quality, source=str(source.resolve()), splits={})
    with ThreadPoolExecutor(workers or os.cpu_count() or 1) as pool:
        for split, files, labels, classes in _splits(source):
            manifest["classes"] = classes
            (out / split).mkdir(parents=True, exist_ok=True)
            remove_stale_temporaries(out / split)
            shards: list[dict[str, Any]] = []
            skipped: list[str] = []
            bar = tqdm(total=len(files), desc=f"prepare {split}", unit="img", disable=not progress)
            for number, start in enumerate(range(0, len(files), images_per_shard)):
                chunk = files[start : start + images_per_shard]
                path = out / shard_name(split, number)
                digest = _source_digest(chunk, source / split, settings)
                index = _kept(path, digest)
                if index is None:  # absent, from other sources or settings, or damaged
                    jpegs = list(pool.map(encode, chunk))
                    index = _index(chunk, labels[start:], jpegs, source / split, digest)
                    content = shard_bytes([j for j in jpegs if j is not None], index)
                    atomic_write(path, functools.partial(_write, content))
                    index = read_index(path)
                skipped += index["skipped"]
                shards.append(
                    {"name": shard_name(split, number), "count": len(index["files"])}
                    | {"bytes": path.stat().st_size, "sha256": index["sha256"]}
                    | {"max_side": max(index["sides"], default=0)}
                )
                bar.update(len(chunk))
            bar.close()
            names = {Path(shard["name"]).name for shard in shards}
            for stale in (out / split).glob("shard-*.jpgs"):  # of an earlier, longer listing
                if stale.name not in names:
                    stale.unlink()
            count = sum(shard["count"] for shard in shards)
            side = max((shard["max_side"] for shard in shards), default=0)
            manifest["splits"][split] = {"count": count, "max_side": side, "skipped": skipped}
            manifest["splits"][split]["shards"] = shards
    text = json.dumps(manifest, indent=1).encode()
    return atomic_write(out / MANIFEST, functools.partial(_write, text))


def _write(data: bytes, f: IO[bytes]) -> None:
    f.write(data)


def _encode(path: str, size: int, quality: int, skip: bool) -> bytes | None:
    try:
        return encode_image(path, size, quality)
    except ValueError as err:
        if not skip:
            raise ValueError(
                f"{err}; fix or remove the file, or pass --skip-bad-files to leave it out"
            ) from err.__cause__  # this message, not the inner one, is what the command shows
        return None


def _index(
    files: list[str], labels: list[int], jpegs: list[bytes | None], folder: Path, source: str
) -> dict[str, Any]:
    """A shard's index before offsets and checksums: its files, labels, skipped files and
    the shorter side of each stored image."""
    prefix = len(str(folder)) + 1
    kept = [i for i, data in enumerate(jpegs) if data is not None]
    return {
        "files": [files[i][prefix:] for i in kept],
        "labels": [labels[i] for i in kept],
        "skipped": [files[i][prefix:] for i, data in enumerate(jpegs) if data is None],
        "sides": [min(Image.open(io.BytesIO(jpegs[i])).size) for i in kept],  # type: ignore[arg-type]
        "source": source,
    }
