"""The ``ssl-lightning`` command: LightningCLI over every method and datamodule, plus ``export``.

``--model`` and ``--data`` take a class by short name (``SimCLR``, ``LinearEvaluation``,
``CIFAR10DataModule``) or, for a user's own subclass, by import path (``mypackage.MyMethod``,
importable from the working directory).
``ssl-lightning export CHECKPOINT OUT.pt`` writes a checkpoint's backbone as a weights file.
"""

from __future__ import annotations

import os
import sys

import lightning as L
from lightning.pytorch.cli import LightningCLI

import ssl_lightning.callbacks
import ssl_lightning.datamodules
import ssl_lightning.evaluation  # registers LinearEvaluation for --model short names
import ssl_lightning.methods  # noqa: F401  (registers the methods for --model short names)
from ssl_lightning import export

EPILOG = (
    "export: `ssl-lightning export CHECKPOINT OUT.pt [--overwrite]` writes the backbone of an "
    "SSL checkpoint as a weights file for create_backbone(name, weights=OUT.pt) "
    "(`ssl-lightning export --help` for details)."
)


def main(args: list[str] | None = None) -> None:
    """Runs the command line; ``args`` replaces ``sys.argv[1:]`` (for tests)."""
    argv = sys.argv[1:] if args is None else args
    # A user's own classes (--model mymethods.MyMethod) import from the working directory, as
    # they do under `python -m`; the console script alone would not look there.
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    if argv and argv[0] == "export":
        export.main(argv[1:])
        return
    LightningCLI(
        L.LightningModule,
        L.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        args=args,
        auto_configure_optimizers=False,
        parser_kwargs={"epilog": EPILOG},
    )


if __name__ == "__main__":
    main()
