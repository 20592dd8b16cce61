"""A user's own image folders, decoded once into a uint8 tensor and cached on disk."""

from __future__ import annotations

import hashlib
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from tqdm.auto import tqdm

from datamodules.base import InMemoryDataModule, Split
from datamodules.corruptions import Corruption

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
_CACHE_VERSION = 1


def default_cache_dir() -> Path:
    """``$SSL_LIGHTNING_CACHE``, else ``$XDG_CACHE_HOME/ssl_lightning``, else ``~/.cache/...``."""
    if "SSL_LIGHTNING_CACHE" in os.environ:
        return Path(os.environ["SSL_LIGHTNING_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "ssl_lightning"


def find_images(split_dir: Path) -> tuple[list[Path], list[str], list[int]]:
    """Lists ``split_dir/<class>/**/<image>``: sorted files, sorted class names, label per file.

    A folder with images directly inside and no class sub-folders is unlabeled (label -1).
    """

    def images_in(folder: Path) -> list[Path]:
        return sorted(
            p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
        )

    classes = sorted(p.name for p in split_dir.iterdir() if p.is_dir())
    if not classes:
        files = images_in(split_dir)
        return files, [], [-1] * len(files)
    files, labels = [], []
    for label, name in enumerate(classes):
        found = images_in(split_dir / name)
        files += found
        labels += [label] * len(found)
    return files, classes, labels


def decode_image(path: Path, size: tuple[int, int] | None) -> np.ndarray:
    """Decodes one image to RGB ``[H, W, 3]`` uint8.

    With ``size`` (h, w) the shorter side is resized (antialiased bilinear) and the center
    cropped to ``size``; without it the image keeps its own size.
    """
    try:
        with Image.open(path) as img:
            if size is not None:
                img.draft("RGB", (size[1], size[0]))  # JPEG: decode at reduced scale when possible
            img = img.convert("RGB")
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
    except (OSError, ValueError) as err:
        raise ValueError(f"cannot decode image {path}: {err}") from err


def decode_images(
    files: list[Path], size: tuple[int, int], resize: bool, workers: int, desc: str = "decoding"
) -> Tensor:
    """Decodes ``files`` into one uint8 tensor ``[N, 3, *size]`` with a progress bar.

    With ``resize`` every image is resized and center-cropped to ``size``; without it every
    image must already have that size.
    """
    out = torch.empty(len(files), 3, *size, dtype=torch.uint8)

    def load(i: int) -> None:
        array = decode_image(files[i], size if resize else None)
        if array.shape[:2] != size:
            raise ValueError(
                f"image {files[i]} is {array.shape[1]}x{array.shape[0]}, but the first image is "
                f"{size[1]}x{size[0]}; set data.image_size to resize every image to one size"
            )
        out[i] = torch.from_numpy(array).permute(2, 0, 1)

    with ThreadPoolExecutor(workers) as pool:
        for _ in tqdm(pool.map(load, range(len(files))), total=len(files), desc=desc, unit="img"):
            pass
    return out


class ImageFolderDataModule(InMemoryDataModule):
    """Images from ``data_dir/train/<class>/...`` (and ``data_dir/test`` or ``data_dir/val``).

    Images are decoded once (converted to RGB, optionally resized) into a uint8 tensor that
    is cached under ``cache_dir`` keyed by the folder's file list, sizes and modification
    times, so a second run starts from the cache. A ``train`` folder without class
    sub-folders is unlabeled (labels -1).

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
            Set ``use_cache=False`` to decode every time.
        use_cache: read and write the decoded-image cache.
        decode_workers: threads that decode images (``None`` = number of CPUs).

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
    ) -> None:
        super().__init__(batch_size, corruption, seed, num_workers)
        if image_size is not None and image_size < 1:
            raise ValueError(f"image_size must be >= 1 or None, got {image_size}")
        self.data_dir = Path(data_dir)
        self.image_size = image_size
        self.mean, self.std = tuple(mean), tuple(std)  # type: ignore[assignment]
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self.use_cache = use_cache
        self.decode_workers = decode_workers or os.cpu_count() or 1
        self.classes: list[str] = []

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
        files, classes, labels = find_images(folder)
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

        size = self._target_size(files[0])
        cache = self._cache_path(folder, files, size)
        if cache is not None and cache.is_file():
            images = torch.load(cache, weights_only=True)
        else:
            images = decode_images(
                files, size, self.image_size is not None, self.decode_workers, f"decoding {folder}"
            )
            if cache is not None:
                self._write_cache(cache, images)
        return images, torch.as_tensor(labels, dtype=torch.long)

    def _target_size(self, first: Path) -> tuple[int, int]:
        if self.image_size is not None:
            return (self.image_size, self.image_size)
        with Image.open(first) as img:
            return (img.height, img.width)

    def _cache_path(self, folder: Path, files: list[Path], size: tuple[int, int]) -> Path | None:
        if not self.use_cache:
            return None
        digest = hashlib.sha1(f"{_CACHE_VERSION}|{folder.resolve()}|{size}".encode())
        for f in files:
            stat = f.stat()
            digest.update(f"|{f.relative_to(folder)}:{stat.st_size}:{stat.st_mtime_ns}".encode())
        return self.cache_dir / f"{folder.name}-{digest.hexdigest()[:20]}.pt"

    @staticmethod
    def _write_cache(path: Path, images: Tensor) -> None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".tmp{os.getpid()}")
            torch.save(images, tmp)
            tmp.replace(path)  # atomic: a reader never sees a half-written cache
        except OSError as err:
            warnings.warn(f"could not write the image cache {path}: {err}", stacklevel=2)
