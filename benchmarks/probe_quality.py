"""Does pretraining help? SimCLR on real CIFAR-10, then linear evaluation against random init.

1. Pretrains SimCLR for a short CPU budget on the CIFAR-10 JPEG tree (``--pretrain-steps``
   batches, online linear probe attached).
2. Runs the same :class:`LinearEvaluation` protocol (frozen backbone, BatchNorm + linear head,
   SGD + cosine, crop + flip) on the pretrained backbone and on a randomly initialized
   backbone of the same architecture, and scores both on the full 10,000-image test split.

The defaults fit in about 15 minutes on 2 CPU cores and use a subset of the training data
(printed with the results); on a GPU raise the steps and epochs.

    python benchmarks/probe_quality.py --data-dir ../shared/data/cifar10-jpeg
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import lightning as L

from ssl_lightning import LinearEvaluation, SimCLR
from ssl_lightning.callbacks import OnlineLinearProbe
from ssl_lightning.datamodules import ImageFolderDataModule


def trainer(root: Path, **kwargs: object) -> L.Trainer:
    defaults: dict[str, object] = dict(
        accelerator="auto",
        devices=1,
        default_root_dir=root,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    return L.Trainer(**{**defaults, **kwargs})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", default="../shared/data/cifar10-jpeg")
    parser.add_argument("--out", default="benchmark_logs/probe_quality", help="run folder")
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--width", type=int, default=8, help="backbone width")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--pretrain-steps", type=int, default=150)
    parser.add_argument("--lr", type=float, default=0.6, help="SimCLR LARS lr per 256 images")
    parser.add_argument("--temperature", type=float, default=0.2)
    parser.add_argument("--eval-epochs", type=int, default=4)
    parser.add_argument(
        "--eval-train-batches", type=int, default=40, help="training batches per eval epoch"
    )
    parser.add_argument("--eval-lr", type=float, default=0.5, help="linear eval lr per 256")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    root = Path(args.out)
    backbone_kwargs = {"width": args.width}

    def data() -> ImageFolderDataModule:
        return ImageFolderDataModule(args.data_dir, batch_size=args.batch_size)

    L.seed_everything(args.seed)
    start = time.perf_counter()
    dm = data()
    dm.setup("fit")  # decodes (or reads the cache) before the clock of the pretraining starts
    assert dm.train_set is not None and dm.val_set is not None
    num_train, num_test = len(dm.train_set), len(dm.val_set)
    print(f"data: {num_train} train / {num_test} test images ({time.perf_counter() - start:.0f} s)")

    start = time.perf_counter()
    simclr = SimCLR(
        backbone=args.backbone,
        backbone_kwargs=backbone_kwargs,
        proj_hidden_dim=512,
        temperature=args.temperature,
        lr=args.lr,
        warmup_epochs=0.1,
    )
    probe = OnlineLinearProbe()
    pretrain = trainer(
        root / "pretrain",
        max_steps=args.pretrain_steps,
        limit_val_batches=0,
        callbacks=[probe],
    )
    pretrain.fit(simclr, dm)
    ckpt = root / "simclr.ckpt"
    pretrain.save_checkpoint(ckpt)
    pretrain_s = time.perf_counter() - start
    probe_acc = float(pretrain.callback_metrics.get("probe/train_acc", float("nan")))
    print(f"pretrained {args.pretrain_steps} steps in {pretrain_s:.0f} s")

    results = []
    for label, model_kwargs in (
        ("SimCLR pretrained", {"backbone_checkpoint": str(ckpt)}),
        ("random init", {"backbone": args.backbone, "backbone_kwargs": backbone_kwargs}),
    ):
        L.seed_everything(args.seed)
        start = time.perf_counter()
        model = LinearEvaluation(lr=args.eval_lr, **model_kwargs)  # type: ignore[arg-type]
        evaluation = trainer(
            root / "linear",
            max_epochs=args.eval_epochs,
            limit_train_batches=args.eval_train_batches,
            check_val_every_n_epoch=args.eval_epochs,
            enable_checkpointing=False,
        )
        evaluation.fit(model, data())
        metrics = evaluation.callback_metrics
        results.append(
            (
                label,
                float(metrics["val/acc_top1"]),
                float(metrics["val/acc_top5"]),
                time.perf_counter() - start,
            )
        )
        print(f"{label}: top-1 {results[-1][1]:.2%} ({results[-1][3]:.0f} s)")

    eval_images = args.eval_epochs * args.eval_train_batches * args.batch_size
    print()
    print(
        f"CIFAR-10 JPEG, {args.backbone} width {args.width}, SimCLR {args.pretrain_steps} steps "
        f"x {args.batch_size} images ({args.pretrain_steps * args.batch_size / num_train:.2f} "
        f"epochs, {pretrain_s:.0f} s, online probe train acc at the end {probe_acc:.1%})"
    )
    print(
        f"linear evaluation: {args.eval_epochs} epochs x {args.eval_train_batches} batches of "
        f"{args.batch_size} ({eval_images} augmented images: a subset, not the full 90-epoch "
        f"protocol), tested on all {num_test} test images"
    )
    print()
    print(f"| {'backbone':<18} | {'top-1':>7} | {'top-5':>7} | {'eval time':>9} |")
    print(f"|{'-' * 20}|{'-' * 9}|{'-' * 9}|{'-' * 11}|")
    for label, top1, top5, seconds in results:
        print(f"| {label:<18} | {top1:>7.2%} | {top5:>7.2%} | {seconds:>7.0f} s |")
    gain = results[0][1] - results[1][1]
    print(f"\npretraining gain: {100 * gain:+.2f} points top-1")


if __name__ == "__main__":
    main()
