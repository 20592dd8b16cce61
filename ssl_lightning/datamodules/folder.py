"""A user's own image folders, decoded once into a uint8 tensor and cached on disk.

The cache is a raw ``[N, 3, H, W]`` uint8 file plus a small JSON file (shape, skipped files),
named by a digest of the folder's file list, sizes and modification times. A second run
reads it back in one sequential read, or memory-maps it when the images exceed the memory
budget: folders larger than RAM decode straight into the mapped file and train from it.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn
from PIL import Image
from torch import Tensor
from tqdm.auto import tqdm

from ssl_lightning.datamodules.base import InMemoryDataModule, Split
from ssl_lightning.datamodules.corruptions import Corruption

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
_CACHE_VERSION = 2
# What PIL raises on files it cannot read: unknown format, truncated data, bad headers.
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


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


def find_images(split_dir: Path) -> tuple[list[Path], list[str], list[int]]:
    """Lists ``split_dir/<class>/**/<image>``: sorted files, sorted class names, label per file.

    A folder with images directly inside and no class sub-folders is unlabeled (label -1).
    """
    files, classes, labels = list_images(split_dir)
    return [Path(f) for f in files], classes, labels


def _to_rgb(img: Image.Image) -> Image.Image:
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
            img = _to_rgb(img)
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
    except _DECODE_ERRORS as err:
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


def _drop_rows_(images: Tensor, drop: list[int]) -> Tensor:
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


class ImageFolderDataModule(InMemoryDataModule):
    """Images from ``data_dir/train/<class>/...`` (and ``data_dir/test`` or ``data_dir/val``).

    Images are decoded once (converted to RGB, optionally resized) into a uint8 tensor that
    is cached under ``cache_dir`` keyed by the folder's file list, sizes and modification
    times, so a second run starts from the cache. A ``train`` folder without class
    sub-folders is unlabeled (labels -1, ``num_classes`` 0). Without a ``test``/``val``
    folder, ``val_fraction`` holds out a stratified share of ``train`` for validation.

    Images that do not fit in ``memory_budget_gb`` stay on disk: they are decoded straight
    into the cache file and memory-mapped from it (the operating system pages them in as
    batches touch them), so folders larger than RAM train instead of failing.

    Args:
        data_dir: root folder holding ``train/`` and optionally ``test/`` or ``val/``.
        image_size: resize (shorter side) and center-crop every image to this square size;
            ``None`` keeps the images' own size, which must then be the same for all.
        batch_size: images per batch and per process.
        corruption: training corruption; ``None`` uses the model's default.
        seed: augmentation seed; ``None`` takes the global seed.
        num_workers: loader worker processes.
        mean: per-channel normalization mean (ImageNet's by default).
        std: per-channel normalization std.
        cache_dir: where decoded tensors are cached; ``None`` = :func:`default_cache_dir`.
        use_cache: read and write the decoded-image cache. Without it, images over the
            memory budget are decoded into a temporary file in ``cache_dir``.
        decode_workers: threads that decode images (``None`` = number of CPUs).
        val_fraction: share of ``train`` to hold out for validation when there is no
            ``test``/``val`` folder (see :class:`InMemoryDataModule`).
        split_seed: seed of the hold-out choice.
        memory_budget_gb: most decoded bytes (10^9) to hold in RAM per process, train and
            validation together; beyond it splits are memory-mapped. ``None`` = half the RAM.
        skip_bad_files: skip files that cannot be decoded (listed in a warning and in
            ``skipped_files``) instead of raising an error that names the first one.

    Examples:
        >>> dm = ImageFolderDataModule("path/to/images", image_size=64, batch_size=256)
    """

    def __init__(
        self,
        data_dir: str | Path,
        image_size: int | None = None,
        batch_size: int = 256,
        corruption: Corruption | None = None,
        seed: int | None = None,
        num_workers: int = 0,
        mean: tuple[float, float, float] = (0.485, 0.456, 0.406),
        std: tuple[float, float, float] = (0.229, 0.224, 0.225),
        cache_dir: str | Path | None = None,
        use_cache: bool = True,
        decode_workers: int | None = None,
        val_fraction: float = 0.0,
        split_seed: int = 0,
        memory_budget_gb: float | None = None,
        skip_bad_files: bool = False,
    ) -> None:
        super().__init__(batch_size, corruption, seed, num_workers, val_fraction, split_seed)
        if image_size is not None and image_size < 1:
            raise ValueError(f"image_size must be >= 1 or None, got {image_size}")
        if memory_budget_gb is not None and memory_budget_gb < 0:
            raise ValueError(
                f"memory_budget_gb={memory_budget_gb!r} is invalid: expected >= 0 (0 maps "
                "every split from disk) or None for half the RAM"
            )
        self.data_dir = Path(data_dir)
        self.image_size = image_size
        self.mean, self.std = tuple(mean), tuple(std)  # type: ignore[assignment]
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self.use_cache = use_cache
        self.decode_workers = decode_workers or os.cpu_count() or 1
        self.memory_budget_gb = memory_budget_gb
        self.skip_bad_files = skip_bad_files
        self.classes: list[str] = []
        self.skipped_files: list[Path] = []
        self.memory_mapped: dict[Split, bool] = {}
        self._bytes_in_memory = 0

    @property
    def num_classes(self) -> int:
        if not self.classes and self.train_set is None:
            self.setup("fit")
        return len(self.classes)

    def split_dir(self, split: Split) -> Path | None:
        """The folder of a split: ``train``; ``test`` or else ``val`` for validation."""
        names = ["train"] if split == "train" else ["test", "val"]
        return next((self.data_dir / n for n in names if (self.data_dir / n).is_dir()), None)

    def load_split(self, split: Split) -> tuple[Tensor, Tensor] | None:
        folder = self.split_dir(split)
        if folder is None:
            if split == "val":
                return None
            if not self.data_dir.is_dir():
                raise FileNotFoundError(
                    f"data_dir={str(self.data_dir)!r} does not exist; set data.data_dir"
                )
            raise FileNotFoundError(
                f"no train/ folder in data_dir={str(self.data_dir)!r}; expected "
                f"{self.data_dir}/train/<class>/<image> (and optionally test/ or val/)"
            )
        files, classes, labels = list_images(folder)
        if not files:
            raise ValueError(
                f"no images found under {folder} (extensions {', '.join(IMAGE_EXTENSIONS)}); "
                f"set data.data_dir to a folder with train/<class>/<image> files"
            )
        if split == "train":
            self.classes = classes
        elif classes:
            unknown = sorted(set(classes) - set(self.classes))
            if unknown:
                raise ValueError(
                    f"{folder} has classes not in train/: {unknown[:5]}; the validation split "
                    "must use the training class names"
                )
            to_train = [self.classes.index(c) for c in classes]
            labels = [to_train[label] for label in labels]

        size = self._target_size(files)
        nbytes = len(files) * 3 * size[0] * size[1]
        in_memory = nbytes <= self._memory_budget_bytes() - self._bytes_in_memory
        self.memory_mapped[split] = not in_memory
        cache = self._cache_path(folder, files, size)
        loaded = self._read_cache(cache, len(files), size, in_memory) if cache else None
        if loaded is None:
            images, bad = self._decode(folder, files, size, in_memory, cache)
        else:
            images, bad = loaded
        if bad:
            self._report_bad_files(folder, [Path(files[i]) for i in bad])
            dropped = set(bad)
            labels = [label for i, label in enumerate(labels) if i not in dropped]
        if in_memory:
            self._bytes_in_memory += images.numel()
        else:
            rank_zero_info(
                f"{folder}: {nbytes / 1e9:.2f} GB of decoded images exceed the memory budget "
                f"({self._memory_budget_bytes() / 1e9:.2f} GB, data.memory_budget_gb): "
                "memory-mapped from the cache file"
            )
        return images, torch.as_tensor(labels, dtype=torch.long)

    def _memory_budget_bytes(self) -> float:
        budget = self.memory_budget_gb
        return (default_memory_budget_gb() if budget is None else budget) * 1e9

    def _target_size(self, files: list[str]) -> tuple[int, int]:
        if self.image_size is not None:
            return (self.image_size, self.image_size)
        for path in files:
            try:
                with Image.open(path) as img:
                    return (img.height, img.width)
            except _DECODE_ERRORS as err:
                if not self.skip_bad_files:
                    raise ValueError(f"cannot decode image {path}: {err}") from err
        raise ValueError(f"none of the {len(files)} images could be decoded ({files[0]}, ...)")

    def _decode(
        self,
        folder: Path,
        files: list[str],
        size: tuple[int, int],
        in_memory: bool,
        cache: Path | None,
    ) -> tuple[Tensor, list[int]]:
        """Decodes into RAM, or straight into a memory-mapped (cache or temporary) file."""
        shape = (len(files), 3, *size)
        tmp: Path | None = None
        if in_memory:
            images = torch.empty(shape, dtype=torch.uint8)
        else:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            if cache is not None:
                tmp = cache.with_suffix(f".tmp{os.getpid()}")
            else:
                fd, name = tempfile.mkstemp(prefix="decoded-", suffix=".u8", dir=self.cache_dir)
                os.close(fd)
                tmp = Path(name)
            size_bytes = int(np.prod(shape))
            images = torch.from_file(str(tmp), shared=True, size=size_bytes, dtype=torch.uint8)
            images = images.view(shape)
            if cache is None:
                tmp.unlink()  # the mapping stays valid; the disk space goes with the process
        try:
            bad = decode_images(
                files,
                images,
                self.image_size is not None,
                self.decode_workers,
                self.skip_bad_files,
                f"decoding {folder}",
            )
        except BaseException:
            if tmp is not None and cache is not None:
                tmp.unlink(missing_ok=True)
            raise
        images = _drop_rows_(images, bad) if bad else images
        if cache is not None:
            skipped = [os.path.relpath(files[i], folder) for i in bad]
            self._write_cache(cache, images, bad, skipped, tmp)
        return images, bad

    def _report_bad_files(self, folder: Path, bad: list[Path]) -> None:
        if not self.skip_bad_files:
            raise ValueError(
                f"{len(bad)} image(s) under {folder} cannot be decoded (a cache made with "
                f"skip_bad_files=True lists them): {', '.join(map(str, bad[:5]))}; fix or "
                "remove them, or set data.skip_bad_files=true"
            )
        self.skipped_files += bad
        shown = "\n  ".join(map(str, bad[:20]))
        more = f"\n  ... and {len(bad) - 20} more (all in skipped_files)" if len(bad) > 20 else ""
        rank_zero_warn(
            f"skipped {len(bad)} image(s) under {folder} that cannot be decoded "
            f"(skip_bad_files=True):\n  {shown}{more}"
        )

    def _cache_path(self, folder: Path, files: list[str], size: tuple[int, int]) -> Path | None:
        if not self.use_cache:
            return None
        digest = hashlib.sha1(f"{_CACHE_VERSION}|{folder.resolve()}|{size}".encode())
        prefix = len(str(folder)) + 1
        for f in files:
            stat = os.stat(f)
            digest.update(f"|{f[prefix:]}:{stat.st_size}:{stat.st_mtime_ns}".encode())
        return self.cache_dir / f"{folder.name}-{digest.hexdigest()[:20]}.u8"

    @staticmethod
    def _read_cache(
        path: Path, num_files: int, size: tuple[int, int], in_memory: bool
    ) -> tuple[Tensor, list[int]] | None:
        """The cached images and the indices of skipped files, or ``None`` without a cache."""
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

    @staticmethod
    def _write_cache(
        path: Path, images: Tensor, bad: list[int], skipped: list[str], mapped: Path | None
    ) -> None:
        """Writes (or, for a mapped file, renames) the data, then the JSON that validates it."""
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            if mapped is not None:
                mapped.replace(path)  # the mapping follows the file; its pages reach the disk
            else:
                tmp = path.with_suffix(f".tmp{os.getpid()}")
                images.numpy().tofile(tmp)
                tmp.replace(path)  # atomic: a reader never sees a half-written cache
            meta_tmp = path.parent / f"{path.stem}.json.tmp{os.getpid()}"
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
