"""The ``ssl-lightning`` command: LightningCLI over every method and datamodule.

``--model`` and ``--data`` take a class by short name (``SimCLR``, ``CIFAR10DataModule``) or,
for a user's own subclass, by import path (``mypackage.MyMethod``).
"""

from __future__ import annotations

import lightning as L
from lightning.pytorch.cli import LightningCLI

import callbacks  # noqa: F401  (registers the callbacks for trainer.callbacks short names)
import datamodules  # noqa: F401  (registers the datamodules for --data short names)
import ssl_lightning.methods  # noqa: F401  (registers the methods for --model short names)


def main(args: list[str] | None = None) -> None:
    """Runs the command line; ``args`` replaces ``sys.argv[1:]`` (for tests)."""
    LightningCLI(
        L.LightningModule,
        L.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        args=args,
        auto_configure_optimizers=False,
    )


if __name__ == "__main__":
    main()
