"""A real 2-process DDP run (gloo, CPU): Lightning injects its DistributedSampler into our
loader, each rank trains on its own disjoint shard, and the shards cover every image once per
epoch. (Per-rank augmentation seeds are tested in test_datamodules.py.)"""

from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback

from ssl_lightning import SimCLR
from ssl_lightning.datamodules import SimCLRViews, ViewTransform
from ssl_lightning.datamodules.base import InMemoryDataModule

N, WORLD, BATCH, EPOCHS = 64, 2, 8, 2


class NumberedImages(InMemoryDataModule):
    """Random 16x16 images whose label is their row number, so a batch names its images."""

    def load_split(self, split):
        if split == "val":
            return None
        g = torch.Generator().manual_seed(0)
        return torch.randint(0, 256, (N, 3, 16, 16), dtype=torch.uint8, generator=g), torch.arange(
            N
        )


class SeenImages(Callback):
    """Saves, per rank, the rows of every training batch, by epoch, and the loader's sampler."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir
        self.rows: dict[int, list[int]] = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.rows.setdefault(trainer.current_epoch, []).extend(batch.labels.tolist())

    def on_train_end(self, trainer, pl_module) -> None:
        state = {"rows": self.rows, "sampler": type(trainer.train_dataloader.sampler).__name__}
        torch.save(state, self.out_dir / f"rank{trainer.global_rank}.pt")


@pytest.mark.distributed
def test_ddp_ranks_train_on_disjoint_shards_that_cover_the_dataset(tmp_path: Path) -> None:
    L.seed_everything(0, verbose=False)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=WORLD,
        strategy="ddp_fork",
        max_epochs=EPOCHS,
        default_root_dir=tmp_path,
        logger=False,
        callbacks=[SeenImages(tmp_path)],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    model = SimCLR(backbone="convnet", backbone_kwargs={"width": 8}, proj_hidden_dim=32)
    data = NumberedImages(
        batch_size=BATCH, corruption=SimCLRViews(view=ViewTransform(size=16)), seed=0
    )
    trainer.fit(model, data)

    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]
    assert all(r["sampler"] == "DistributedSampler" for r in ranks)
    for epoch in range(EPOCHS):
        shards = [r["rows"][epoch] for r in ranks]
        assert all(len(s) == N // WORLD for s in shards)
        assert not set(shards[0]) & set(shards[1])
        assert sorted(shards[0] + shards[1]) == list(range(N))  # every image exactly once
    assert ranks[0]["rows"][0] != ranks[0]["rows"][1]  # reshuffled between epochs
