"""``ssl-lightning evaluate``: the fast frozen evaluation of checkpoints and weights files.

Each model (a ``.ckpt`` of any SSL method or ``LinearEvaluation``, or a weights file written by
``ssl-lightning export``) is evaluated with :func:`~ssl_lightning.evaluation.evaluate_stages`
on a dataset's train split (fitted) and test split (scored), for each ``--stages`` selection;
``--random-init`` adds the same architecture untrained, read the same way. One table is
printed; ``--out`` appends one JSON line per row, so earlier results are kept.

    ssl-lightning evaluate last.ckpt --data-dir ../shared/data/cifar10-jpeg --random-init
    ssl-lightning evaluate simclr.pt rotation.pt --data CIFAR10DataModule --data-dir data \\
        --stages last --stages all --out frozen.jsonl
"""

from __future__ import annotations

import argparse
import json
import time
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
from ssl_lightning.evaluation import evaluate_stages
from ssl_lightning.export import BackboneCheckpoint

__all__ = ["DATAMODULES", "main"]

DATAMODULES: dict[str, type[InMemoryDataModule]] = {
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
    parser.add_argument(
        "--device", default="cuda" if torch.cuda.is_available() else "cpu", help="feature device"
    )
    parser.add_argument("--out", type=Path, help="a JSON-lines file to append the rows to")
    return parser


def _table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| model | features | labels | linear top-1 | linear top-5 | kNN top-1 | weight decay |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['stages']} | {r['label_fraction']:.0%} | "
            f"{r['linear_top1']:.1%} | {r['linear_top5']:.1%} | {r['knn_top1']:.1%} | "
            f"{r['weight_decay']:g} |"
        )
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
                f.write(json.dumps({**row, "data_dir": str(ns.data_dir)}) + "\n")
    return rows


def _evaluate(ns: argparse.Namespace) -> list[dict[str, Any]]:
    sources = [(str(path), BackboneCheckpoint.read_any(path)) for path in ns.models]
    data = DATAMODULES[ns.data](
        ns.data_dir, val_fraction=ns.val_fraction, label_fraction=ns.label_fraction
    )
    models = [(name, source.build()) for name, source in sources]
    if ns.random_init:
        torch.manual_seed(ns.seed)
        first = sources[0][1]
        models.append((f"random init ({first.name})", create_backbone(first.name, **first.kwargs)))
    stages = tuple(ns.stages or ["last"])
    rows = []
    for name, backbone in models:
        start = time.perf_counter()
        results = evaluate_stages(backbone.to(ns.device), data, stages, progress=True)
        seconds = round(time.perf_counter() - start, 1)
        for label, result in results.items():
            rows.append(
                {
                    "model": name,
                    "stages": label,
                    "label_fraction": ns.label_fraction,
                    **asdict(result),
                    "seconds": seconds,
                }
            )
    return rows
