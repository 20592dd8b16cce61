"""In-memory uint8 datamodule: whole-batch indexing on the host, corruption on the device.

The dataset it serves is in :mod:`ssl_lightning.datamodules.dataset`; the seeded shuffle
and mid-epoch resume of its training loader are in :mod:`ssl_lightning.datamodules.resume`.
"""

from __future__ import annotations

from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.utilities.rank_zero import rank_zero_info
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from ssl_lightning.corruptions import Batch, CleanView, Corruption, PretextModel, corrupt_batch
from ssl_lightning.datamodules.dataset import InMemoryDataset, keep_batch
from ssl_lightning.datamodules.resume import EpochPosition, EpochShuffleSampler, ResumableDataLoader
from ssl_lightning.splits import class_interleaved, label_subset, mix_seed, stratified_holdout

Split = Literal["train", "val"]
PredictSplit = Literal["train", "val", "test"]
_NO_TEST = (
    "the dataset has no test split (an image folder needs data_dir/test/ or data_dir/val/); "
    "embed another one with data.predict_split=train"
)


class InMemoryDataModule(L.LightningDataModule):
    """Base of the datamodules: the whole dataset in host memory as uint8, corrupted on device.

    Subclasses implement :meth:`load_split` (and ``prepare_data`` if they download).
    Training batches get the ``corruption`` (when ``None``, the ``default_corruption()`` of a
    model that is a :class:`~ssl_lightning.corruptions.PretextModel`) on the training device
    in ``on_after_batch_transfer``; validation batches are only normalized. Random
    parameters come from a generator seeded by ``(seed, global rank, batch number)``, so
    ranks differ, runs repeat, and a resumed run continues the same stream. The shuffle
    order depends on ``(seed, epoch)`` only, and the training loader resumes mid-epoch, so a
    run resumed from any checkpoint sees the same batches and views as an uninterrupted one.

    Validation uses the dataset's own test split where it has one. ``val_fraction > 0`` holds
    out that share of the training images instead (stratified by class, chosen by
    ``split_seed``, logged), e.g. for image folders without a test split, or to keep a test
    split untouched while tuning. Either way the validation rows come in a seeded
    class-interleaved order (``split_seed``): every prefix, so any ``limit_val_batches``, is a
    fixed class-balanced sample.

    Args:
        batch_size: images per batch and per process.
        corruption: training corruption; ``None`` uses the model's default.
        seed: augmentation and shuffle seed; ``None`` takes the global seed (``seed_everything``).
        num_workers: loader worker processes (0 suits uint8 batches: one tensor index each).
        val_fraction: share of the training images to hold out for validation, in ``[0, 1)``.
        split_seed: seed of the hold-out choice and of the validation order (not ``seed``).
        predict_split: the split ``trainer.predict`` embeds (clean images, in order):
            ``"train"``, ``"val"`` (the validation set) or ``"test"`` (the dataset's own test
            split, which ``trainer.test`` scores too).
        label_fraction: train on this class-balanced share of the labelled training images
            (chosen by ``split_seed``, after the validation hold-out: the two never overlap),
            for evaluation with few labels; ``1`` keeps them all, unlabelled ones included.
    """

    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)

    def __init__(
        self,
        batch_size: int = 256,
        corruption: Corruption | None = None,
        seed: int | None = None,
        num_workers: int = 0,
        val_fraction: float = 0.0,
        split_seed: int = 0,
        predict_split: PredictSplit = "test",
        label_fraction: float = 1.0,
    ) -> None:
        super().__init__()
        if predict_split not in ("train", "val", "test"):
            raise ValueError(
                f"predict_split must be 'train', 'val' or 'test', got {predict_split!r} "
                "(set data.predict_split)"
            )
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size} (set data.batch_size)")
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(
                f"val_fraction={val_fraction!r} is invalid: expected a share of the training "
                "images in [0, 1) (set data.val_fraction; 0 keeps them all for training)"
            )
        if not 0.0 < label_fraction <= 1.0:
            raise ValueError(
                f"label_fraction={label_fraction!r} is invalid: expected a share of the "
                "labelled training images in (0, 1] (set data.label_fraction; 1 trains on all)"
            )
        self.batch_size = batch_size
        self.corruption = corruption
        self.label_fraction = label_fraction
        self.seed = seed
        self.num_workers = num_workers
        self.val_fraction = val_fraction
        self.split_seed = split_seed
        self.predict_split = predict_split
        self.train_set: InMemoryDataset | None = None
        self.val_set: InMemoryDataset | None = None
        self.test_set: InMemoryDataset | None = None
        self._resolved_corruption: Corruption | None = None
        self._base_seed: int | None = None
        self._batches_drawn = 0
        self._position = EpochPosition()

    def load_split(self, split: Split) -> tuple[Tensor, Tensor] | None:
        """Returns ``(images uint8 [N, 3, H, W], labels int64 [N])`` of a split, or ``None``."""
        raise NotImplementedError

    def make_dataset(self, images: Any, labels: Tensor, rows: Tensor | None) -> InMemoryDataset:
        """The dataset of ``rows`` of a split's ``images`` (what :meth:`load_split` returned:
        a uint8 tensor here; a subclass with another storage serves its own)."""
        return InMemoryDataset(images, labels, rows=rows)

    def train_loader_dataset(self) -> Dataset[Any]:
        """What the training loader indexes: the training set (a subclass may encode it)."""
        assert self.train_set is not None, "call setup() first"
        return self.train_set

    @property
    def num_classes(self) -> int:
        """Number of classes (0 when unlabeled)."""
        if self.train_set is None:
            self.setup("fit")
        assert self.train_set is not None
        return int(self.train_set.source_labels.max().item()) + 1

    def setup(self, stage: str) -> None:
        if stage == "fit" and self.trainer is not None:
            self.train_corruption()  # a corruption that disagrees with the model fails here
        if self.train_set is not None:
            return
        loaded = self.load_split("train")
        if loaded is None:
            raise ValueError(f"{type(self).__name__} has no training split")
        images, labels = loaded
        if self.val_fraction == 0.0:
            self.train_set = self.make_dataset(images, labels, self._labelled_share(labels))
            val = self.load_split("val")
            if val is not None:
                order = class_interleaved(val[1].long(), self.split_seed)
                self.val_set = self.make_dataset(*val, rows=order)
            return
        keep, held = stratified_holdout(labels.long(), self.val_fraction, self.split_seed)
        if held.numel() == 0 or keep.numel() == 0:
            raise ValueError(
                f"val_fraction={self.val_fraction} of {labels.shape[0]} training images holds "
                f"out {held.numel()} of them; set data.val_fraction so that both parts keep "
                "at least one image"
            )
        share = self._labelled_share(labels[keep])
        self.train_set = self.make_dataset(images, labels, keep if share is None else keep[share])
        held = held[class_interleaved(labels[held].long(), self.split_seed)]
        self.val_set = self.make_dataset(images, labels, rows=held)
        classes = int(torch.unique(labels).numel())
        rank_zero_info(
            f"{type(self).__name__}: held out {held.numel()} of {labels.shape[0]} training "
            f"images ({self.val_fraction:.1%}, stratified over {classes} "
            f"{'class' if classes == 1 else 'classes'}, split_seed={self.split_seed}) as the "
            f"validation split; training uses the other {len(self.train_set)}. The dataset's "
            "own test split, if any, is not used."
        )

    def _labelled_share(self, labels: Tensor) -> Tensor | None:
        """Rows of ``labels`` that ``label_fraction`` keeps (``None``: all of them)."""
        if self.label_fraction == 1.0:
            return None
        rows = label_subset(labels.long(), self.label_fraction, self.split_seed)
        if rows.numel() == 0:
            raise ValueError(
                f"label_fraction={self.label_fraction} of {labels.shape[0]} training images "
                "keeps none of them (or none is labelled); raise data.label_fraction"
            )
        rank_zero_info(
            f"{type(self).__name__}: training on {rows.numel()} of {labels.shape[0]} training "
            f"images ({self.label_fraction:.1%} of the labelled ones, class-balanced, "
            f"split_seed={self.split_seed})"
        )
        return rows

    def train_dataloader(self) -> DataLoader[Any]:
        assert self.train_set is not None, "call setup() first"
        if len(self.train_set) < self.batch_size:
            raise ValueError(
                f"the training split has {len(self.train_set)} images, fewer than one batch of "
                f"{self.batch_size}; lower data.batch_size"
            )
        return ResumableDataLoader(
            self.train_loader_dataset(),
            batch_size=self.batch_size,
            sampler=EpochShuffleSampler(self.train_set, self._resolve_seed()),
            drop_last=True,
            position=self._position,
            **self._loader_kwargs(),
        )

    def val_dataloader(self) -> DataLoader[Any] | list[Any]:
        if self.val_set is None:
            return []
        return DataLoader(self.val_set, batch_size=self.batch_size, **self._loader_kwargs())

    def test_dataloader(self) -> DataLoader[Any]:
        return self._eval_loader(self._test_split(), "test", _NO_TEST)

    def predict_dataloader(self) -> DataLoader[Any]:
        split = self.predict_split
        dataset = self._test_split() if split == "test" else getattr(self, f"{split}_set")
        hint = _NO_TEST if split == "test" else "set data.val_fraction (e.g. 0.1) to hold one out"
        return self._eval_loader(dataset, f"data.predict_split={split!r}", hint)

    def _test_split(self) -> InMemoryDataset | None:
        """The dataset's own test split: the validation set unless a hold-out replaced it."""
        if self.train_set is None:
            self.setup("test")
        if self.val_fraction == 0.0:
            return self.val_set
        if self.test_set is None:
            with torch.inference_mode(False):  # Lightning asks for the test loader inside it
                loaded = self.load_split("val")
            if loaded is not None:
                order = class_interleaved(loaded[1].long(), self.split_seed)
                self.test_set = self.make_dataset(*loaded, rows=order)
        return self.test_set

    def _eval_loader(
        self, dataset: InMemoryDataset | None, what: str, hint: str
    ) -> DataLoader[Any]:
        if dataset is None:
            raise ValueError(f"{type(self).__name__} has no split for {what}: {hint}")
        return DataLoader(dataset, batch_size=self.batch_size, **self._loader_kwargs())

    def _loader_kwargs(self) -> dict[str, Any]:
        return {
            "collate_fn": keep_batch,
            "num_workers": self.num_workers,
            "persistent_workers": self.num_workers > 0,
            "pin_memory": torch.cuda.is_available(),
        }

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Batch:
        images, labels = batch  # [B, 3, H, W] uint8, on the device
        trainer = self.trainer
        if trainer is not None and trainer.training:
            self._position.count(getattr(trainer, "current_epoch", 0))
            corruption, generator = self.train_corruption(), self._next_generator()
        else:
            corruption, generator = CleanView(), torch.Generator()
        return corrupt_batch(corruption, images, labels, generator, self.mean, self.std)

    def train_corruption(self) -> Corruption:
        """The corruption of training batches, resolved once: the configured one (checked by
        the model's ``check_corruption`` against the settings the model owns), else the model's
        ``default_corruption()``. It is logged, given to the loggers as the ``corruption``
        hyper-parameter and saved in checkpoints (``state_dict()["corruption"]``)."""
        if self._resolved_corruption is None:
            model = self.trainer.lightning_module if self.trainer is not None else None
            owner = model if isinstance(model, PretextModel) else None
            if self.corruption is not None:
                if owner is not None:
                    owner.check_corruption(self.corruption)
                corruption = self.corruption
            else:
                corruption = owner.default_corruption() if owner is not None else CleanView()
            self._resolved_corruption = corruption
            rank_zero_info(f"{type(self).__name__}: training corruption {corruption!r}")
            for logger in self.trainer.loggers if self.trainer is not None else []:
                logger.log_hyperparams({"corruption": repr(corruption)})
        return self._resolved_corruption

    def _resolve_seed(self) -> int:
        if self._base_seed is None:
            self._base_seed = self.seed if self.seed is not None else torch.initial_seed()
        return self._base_seed

    def _next_generator(self) -> torch.Generator:
        rank = self.trainer.global_rank if self.trainer is not None else 0
        seed = mix_seed(self._resolve_seed(), rank, self._batches_drawn)
        self._batches_drawn += 1
        return torch.Generator().manual_seed(seed)

    def state_dict(self) -> dict[str, Any]:
        return {
            "seed": self._base_seed,
            "batches_drawn": self._batches_drawn,
            "position": self._position.state_dict(),
            "corruption": repr(self._resolved_corruption),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._base_seed = state_dict["seed"]
        self._batches_drawn = state_dict["batches_drawn"]
        if "position" in state_dict:
            self._position.load_state_dict(state_dict["position"])
