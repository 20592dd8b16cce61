"""Listing and decoding image files: class folders to file lists, files to RGB uint8 arrays.

Decoding converts any PIL mode to RGB and optionally resizes (shorter side) and
center-crops to one size; :func:`decode_images` fills the rows of a ``[N, 3, H, W]``
uint8 tensor (in RAM or memory-mapped) from a thread pool, and :func:`drop_rows_` compacts
out the rows of files that could not be decoded.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from PIL import Image
from torch import Tensor
from tqdm.auto import tqdm

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
# What PIL raises on files it cannot read: unknown format, truncated data, bad headers.
DECODE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


def _images_in(folder: Path) -> list[str]:
    """Image files under ``folder`` (recursively, following links), in path-component order.

    Plain strings from ``os.walk``: for tens of thousands of files, ``Path.rglob`` and
    ``Path`` objects take seconds, which a cached run would otherwise spend before its first
    batch.
    """
    root = str(folder)
    found: list[str] = []
    for dirpath, _, filenames in os.walk(root, followlinks=True):
        found += [
            os.path.join(dirpath, name)
            for name in filenames
            if name.lower().endswith(IMAGE_EXTENSIONS)
        ]
    found.sort(key=lambda path: path.split(os.sep))  # the order of sorted(Path, ...)
    return found


def list_images(split_dir: Path) -> tuple[list[str], list[str], list[int]]:
    """Like :func:`find_images`, with the files as strings."""
    classes = sorted(p.name for p in split_dir.iterdir() if p.is_dir())
    if not classes:
        unlabeled = _images_in(split_dir)
        return unlabeled, [], [-1] * len(unlabeled)
    files: list[str] = []
    labels: list[int] = []
    for label, name in enumerate(classes):
        found = _images_in(split_dir / name)
        files += found
        labels += [label] * len(found)
    return files, classes, labels


def list_split(
    folder: Path, train_classes: list[str] | None = None
) -> tuple[list[str], list[str], list[int]]:
    """:func:`list_images`; with ``train_classes`` (a validation split's), labels index them.

    Raises:
        ValueError: naming the split's classes that are not among ``train_classes``.
    """
    files, classes, labels = list_images(folder)
    if train_classes is None or not classes:
        return files, classes, labels
    unknown = sorted(set(classes) - set(train_classes))
    if unknown:
        raise ValueError(
            f"{folder} has classes not in train/: {unknown[:5]}; the validation split must use "
            "the training class names"
        )
    to_train = [train_classes.index(c) for c in classes]
    return files, train_classes, [to_train[label] for label in labels]


def find_images(split_dir: Path) -> tuple[list[Path], list[str], list[int]]:
    """Lists ``split_dir/<class>/**/<image>``: sorted files, sorted class names, label per file.

    A folder with images directly inside and no class sub-folders is unlabeled (label -1).
    """
    files, classes, labels = list_images(split_dir)
    return [Path(f) for f in files], classes, labels


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode as RGB; 16-bit grayscale keeps its top 8 bits instead of clipping at 255."""
    if img.mode.startswith("I;16") or img.mode == "I":
        high = np.asarray(img).astype(np.int64).clip(0, 65535) >> 8
        img = Image.fromarray(high.astype(np.uint8), mode="L")
    return img.convert("RGB")


def decode_image(path: str | Path, size: tuple[int, int] | None) -> np.ndarray:
    """Decodes one image to RGB ``[H, W, 3]`` uint8.

    Any mode (grayscale, RGBA, palette, CMYK, 16-bit) is converted to RGB. With ``size``
    (h, w) the shorter side is resized (antialiased bilinear) and the center cropped to
    ``size``; without it the image keeps its own size.

    Raises:
        ValueError: naming the file, when it cannot be decoded.
    """
    try:
        with Image.open(path) as img:
            if size is not None:
                img.draft("RGB", (size[1], size[0]))  # JPEG: decode at reduced scale when possible
            img = to_rgb(img)
            if size is not None and img.size != (size[1], size[0]):
                scale = max(size[0] / img.height, size[1] / img.width)
                new_w, new_h = (
                    max(size[1], round(img.width * scale)),
                    max(size[0], round(img.height * scale)),
                )
                img = img.resize((new_w, new_h), Image.Resampling.BILINEAR, reducing_gap=None)
                left, top = (new_w - size[1]) // 2, (new_h - size[0]) // 2
                img = img.crop((left, top, left + size[1], top + size[0]))
            return np.array(img, dtype=np.uint8)  # a writable copy
    except DECODE_ERRORS as err:
        raise ValueError(f"cannot decode image {path}: {err}") from err


def decode_images(
    files: Sequence[str | Path],
    out: Tensor,
    resize: bool,
    workers: int,
    skip_bad_files: bool = False,
    desc: str = "decoding",
) -> list[int]:
    """Decodes ``files`` into the rows of ``out`` (``[N, 3, H, W]`` uint8) with a progress bar.

    With ``resize`` every image is resized and center-cropped to ``H x W``; without it every
    image must already have that size. ``out`` may be memory-mapped.

    Returns:
        Indices of the files that could not be decoded (their rows are left as they were);
        always empty unless ``skip_bad_files``, which otherwise raises on the first one.
    """
    size = (out.shape[2], out.shape[3])
    bad: list[int] = []

    def load(i: int) -> None:
        try:
            array = decode_image(files[i], size if resize else None)
        except ValueError as err:
            if not skip_bad_files:
                raise ValueError(
                    f"{err}; fix or remove the file, or set data.skip_bad_files=true to skip "
                    "files that cannot be decoded"
                ) from err
            bad.append(i)  # list.append is atomic under the GIL
            return
        if array.shape[:2] != size:
            raise ValueError(
                f"image {files[i]} is {array.shape[1]}x{array.shape[0]}, but the first image is "
                f"{size[1]}x{size[0]}; set data.image_size to resize every image to one size"
            )
        out[i] = torch.from_numpy(array).permute(2, 0, 1)

    with ThreadPoolExecutor(workers) as pool:
        for _ in tqdm(pool.map(load, range(len(files))), total=len(files), desc=desc, unit="img"):
            pass
    return sorted(bad)


def first_size(files: list[str], skip_bad_files: bool) -> tuple[int, int]:
    """``(height, width)`` of the first image that can be opened (a bad one is an error
    unless ``skip_bad_files``)."""
    for path in files:
        try:
            with Image.open(path) as img:
                return (img.height, img.width)
        except DECODE_ERRORS as err:
            if not skip_bad_files:
                raise ValueError(f"cannot decode image {path}: {err}") from err
    raise ValueError(f"none of the {len(files)} images could be decoded ({files[0]}, ...)")


def report_bad_files(folder: Path, files: list[str], skip_bad_files: bool) -> list[Path]:
    """Raises an error naming the first files that cannot be decoded, or with
    ``skip_bad_files`` warns (listing up to 20) and returns them all."""
    bad = [Path(f) for f in files]
    if not skip_bad_files:
        raise ValueError(
            f"{len(bad)} image(s) under {folder} cannot be decoded (a cache made with "
            f"skip_bad_files=True lists them): {', '.join(map(str, bad[:5]))}; fix or "
            "remove them, or set data.skip_bad_files=true"
        )
    shown = "\n  ".join(map(str, bad[:20]))
    more = f"\n  ... and {len(bad) - 20} more (all in skipped_files)" if len(bad) > 20 else ""
    rank_zero_warn(
        f"skipped {len(bad)} image(s) under {folder} that cannot be decoded "
        f"(skip_bad_files=True):\n  {shown}{more}"
    )
    return bad


def drop_rows_(images: Tensor, drop: list[int]) -> Tensor:
    """Moves the rows not in ``drop`` to the front, in order, in place; returns that prefix."""
    dropped = set(drop)
    kept = 0
    for row in range(images.shape[0]):
        if row in dropped:
            continue
        if row != kept:
            images[kept] = images[row]  # rows only move forward: never onto an unread row
        kept += 1
    return images[:kept]
