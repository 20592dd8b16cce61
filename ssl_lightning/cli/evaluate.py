"""``ssl-lightning evaluate``: frozen or fine-tuned evaluation of checkpoints and weights files.

Each model (a ``.ckpt`` of any SSL method or ``LinearEvaluation``, or a weights file written by
``ssl-lightning export``) is evaluated on a dataset's train split (fitted) and test split
(scored): by default with :func:`~ssl_lightning.evaluation.evaluate_stages` (frozen features,
for each ``--stages`` selection), with ``--fine-tune`` by
:func:`~ssl_lightning.evaluation.fine_tune` for ``--steps`` steps. ``--label-fraction`` fits
on a class-balanced share of the labels; ``--random-init`` adds the same architecture from a
random initialization, evaluated the same way (for fine-tuning: trained from scratch with
the same recipe and steps). One table is printed; ``--out`` appends one JSON line per row, so
earlier results are kept.

    ssl-lightning evaluate last.ckpt --data-dir ../shared/data/cifar10-jpeg --random-init
    ssl-lightning evaluate simclr.pt rotation.pt --data CIFAR10DataModule --data-dir data \\
        --stages last --stages all --out frozen.jsonl
    ssl-lightning evaluate simclr.pt --data-dir ../shared/data/cifar10-jpeg --fine-tune \\
        --steps 1000 --label-fraction 0.1 --random-init --out finetune.jsonl
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from ssl_lightning.backbones import create_backbone
from ssl_lightning.backbones.stages import Stages
from ssl_lightning.cli.errors import exit_on_user_error
from ssl_lightning.datamodules import (
    CIFAR10DataModule,
    CIFAR100DataModule,
    ImageFolderDataModule,
    InMemoryDataModule,
)
from ssl_lightning.evaluation import FrozenResult, evaluate_stages, fine_tune
from ssl_lightning.evaluation.results import json_line, percent
from ssl_lightning.export import BackboneCheckpoint

__all__ = ["DATAMODULES", "main"]

# Each takes the data folder first, then keyword arguments.
DATAMODULES: dict[str, Callable[..., InMemoryDataModule]] = {
    "ImageFolderDataModule": ImageFolderDataModule,
    "CIFAR10DataModule": CIFAR10DataModule,
    "CIFAR100DataModule": CIFAR100DataModule,
}


def _stages(value: str) -> Stages:
    if value in ("last", "all"):
        return value  # type: ignore[return-value]
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected 'last', 'all' or a stage index, got {value!r}"
        ) from None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ssl-lightning evaluate",
        description=(
            "Fast frozen evaluation: features of the clean train and test images computed "
            "once, then a linear classifier (standardized features, weight decay chosen on a "
            "held-out 10% of the train features) and a kNN classifier (k=200, T=0.1)."
        ),
    )
    parser.add_argument(
        "models", nargs="*", type=Path, help="SSL .ckpt files or weights files from export"
    )
    parser.add_argument("--data-dir", required=True, help="the dataset's folder")
    parser.add_argument(
        "--data", choices=sorted(DATAMODULES), default="ImageFolderDataModule", help="its kind"
    )
    parser.add_argument(
        "--val-fraction",
        type=float,
        default=0.0,
        help="score on this held-out share of the training images instead of the test split",
    )
    parser.add_argument(
        "--label-fraction",
        type=float,
        default=1.0,
        help="fit the classifiers on this class-balanced share of the labelled training "
        "images (seeded, disjoint from --val-fraction's hold-out), e.g. 0.01 or 0.1",
    )
    parser.add_argument(
        "--stages",
        action="append",
        type=_stages,
        help="features to evaluate, repeatable: 'last' (default), 'all' stages pooled and "
        "concatenated, or one stage's index",
    )
    parser.add_argument(
        "--random-init",
        action="store_true",
        help="also evaluate the first model's architecture untrained (seeded by --seed)",
    )
    parser.add_argument("--seed", type=int, default=0)
    tune = parser.add_argument_group("fine-tuning (--fine-tune)")
    tune.add_argument(
        "--fine-tune",
        action="store_true",
        help="train the whole backbone with a linear head (crop + flip, AdamW, cosine) for "
        "--steps steps instead of the frozen evaluation",
    )
    tune.add_argument("--steps", type=int, default=500, help="optimizer steps of each model")
    tune.add_argument("--batch-size", type=int, default=256, help="images per step")
    tune.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate")
    tune.add_argument("--weight-decay", type=float, default=0.05, help="AdamW weight decay")
    tune.add_argument(
        "--layer-decay",
        type=float,
        help="layer-wise learning-rate decay, e.g. 0.75 (default: none)",
    )
    parser.add_argument(
        "--device", default="cuda" if torch.cuda.is_available() else "cpu", help="feature device"
    )
    parser.add_argument("--out", type=Path, help="a JSON-lines file to append the rows to")
    return parser


def _table(rows: list[dict[str, Any]]) -> str:
    if rows and rows[0]["protocol"] == "fine-tune":
        lines = ["| model | labels | steps | top-1 | top-5 |", "|---|---|---|---|---|"]
        lines += [
            f"| {r['model']} | {r['label_fraction']:.0%} | {r['steps']} | {r['top1']:.1%} | "
            f"{percent(r['top5'])} |"
            for r in rows
        ]
        return "\n".join(lines)
    lines = [
        "| model | features | labels | linear top-1 | linear top-5 | kNN top-1 | weight decay |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['model']} | {r['stages']} | {r['label_fraction']:.0%} | "
        f"{r['linear_top1']:.1%} | {percent(r['linear_top5'])} | {r['knn_top1']:.1%} | "
        f"{r['weight_decay']:g} |"
        for r in rows
    ]
    return "\n".join(lines)


def main(args: list[str] | None = None) -> list[dict[str, Any]]:
    """Runs ``ssl-lightning evaluate`` with ``args``; returns the rows it printed."""
    parser = _parser()
    ns = parser.parse_args(args)
    if not ns.models:
        parser.error("give at least one checkpoint or weights file to evaluate")
    try:
        rows = _evaluate(ns)
    except Exception as err:
        exit_on_user_error(err, "ssl-lightning evaluate", 2)
        raise
    print(_table(rows))
    if ns.out is not None:
        ns.out.parent.mkdir(parents=True, exist_ok=True)
        with ns.out.open("a") as f:
            for row in rows:
                f.write(json_line({**row, "data_dir": str(ns.data_dir)}))
    return rows


def _evaluate(ns: argparse.Namespace) -> list[dict[str, Any]]:
    sources: list[tuple[str, BackboneCheckpoint | None]] = [
        (str(path), BackboneCheckpoint.read_any(path)) for path in ns.models
    ]
    first = sources[0][1]
    assert first is not None
    if ns.random_init:
        sources.append((f"random init ({first.name})", None))
    data = DATAMODULES[ns.data](
        ns.data_dir,
        batch_size=ns.batch_size,
        val_fraction=ns.val_fraction,
        label_fraction=ns.label_fraction,
    )
    rows = []
    for name, source in sources:
        start = time.perf_counter()
        # The split and the recipe, so a row says what it was scored on and can be rerun.
        common = {
            "model": name,
            "label_fraction": ns.label_fraction,
            "val_fraction": ns.val_fraction,
            "batch_size": ns.batch_size,
            "seed": ns.seed,
        }
        if ns.fine_tune:
            common |= {"lr": ns.lr, "weight_decay": ns.weight_decay, "layer_decay": ns.layer_decay}
            result = fine_tune(
                source,
                data,
                ns.steps,
                backbone=(first.name, first.kwargs),
                lr=ns.lr,
                weight_decay=ns.weight_decay,
                layer_decay=ns.layer_decay,
                seed=ns.seed,
                progress=True,
            )
            found = [{"protocol": "fine-tune", **common, **asdict(result)}]
        else:
            found = [
                {"protocol": "frozen", **common, "stages": label, **asdict(frozen)}
                for label, frozen in _frozen(ns, source, first, data).items()
            ]
        seconds = round(time.perf_counter() - start, 1)
        rows += [{**row, "seconds": seconds} for row in found]
    return rows


def _frozen(
    ns: argparse.Namespace,
    source: BackboneCheckpoint | None,
    first: BackboneCheckpoint,
    data: InMemoryDataModule,
) -> dict[str, FrozenResult]:
    """The frozen evaluation of ``source`` (``None``: ``first``'s architecture, untrained)."""
    if source is None:
        torch.manual_seed(ns.seed)
        backbone = create_backbone(first.name, **first.kwargs)
    else:
        backbone = source.build()
    stages = tuple(ns.stages or ["last"])
    return evaluate_stages(backbone.to(ns.device), data, stages, progress=True)
