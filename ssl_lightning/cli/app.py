"""The ``ssl-lightning`` command: LightningCLI over every method and datamodule, plus ``export``.

``--model`` and ``--data`` take a class by short name (``SimCLR``, ``LinearEvaluation``,
``CIFAR10DataModule``) or, for a user's own subclass, by import path (``mypackage.MyMethod``,
importable from the working directory).
``ssl-lightning export CHECKPOINT OUT.pt`` writes a checkpoint's backbone as a weights file;
``ssl-lightning evaluate MODEL... --data-dir DIR`` runs the fast frozen evaluation (or, with
``--fine-tune``, the fine-tuning) of checkpoints or weights files
(:mod:`ssl_lightning.cli.evaluate`); ``ssl-lightning prepare DIR OUT --size 256`` writes an
image folder as JPEG shards for ``--data.storage jpeg`` (:mod:`ssl_lightning.cli.prepare`).

Every run writes its checkpoints atomically, saves one at the end of fit and reads them with
``weights_only=True`` (:mod:`ssl_lightning.cli.run_files`); a configuration error prints the
library's message and the key to change (:mod:`ssl_lightning.cli.errors`).
"""

from __future__ import annotations

import os
import sys
import time
import traceback
from typing import Any

import lightning as L
from lightning.pytorch.cli import LightningCLI

import ssl_lightning.callbacks
import ssl_lightning.datamodules
import ssl_lightning.evaluation  # registers LinearEvaluation for --model short names
import ssl_lightning.methods  # noqa: F401  (registers the methods for --model short names)
from ssl_lightning.cli import evaluate, export, prepare
from ssl_lightning.cli.errors import CleanErrorParser, exit_on_user_error
from ssl_lightning.cli.run_files import read_checkpoint, remove_failed_run_log, run_file_defaults

EPILOG = (
    "export: `ssl-lightning export CHECKPOINT OUT.pt [--overwrite]` writes the backbone of an "
    "SSL checkpoint as a weights file for create_backbone(name, weights=OUT.pt) "
    "(`ssl-lightning export --help` for details). evaluate: `ssl-lightning evaluate MODEL... "
    "--data-dir DIR [--random-init] [--stages all] [--label-fraction 0.1]` fits a linear and "
    "a kNN classifier on frozen features, or with --fine-tune --steps N trains the whole "
    "backbone (`ssl-lightning evaluate --help`). prepare: `ssl-lightning prepare DIR OUT "
    "--size 256` writes an image folder as JPEG shards, decoded batch by batch when training "
    "with --data.data_dir OUT (`ssl-lightning prepare --help`)."
)


class SSLLightningCLI(LightningCLI):
    """LightningCLI whose trainers get the library's checkpoint writer and callbacks."""

    def instantiate_trainer(self, **kwargs: Any) -> L.Trainer:
        key = f"{self.subcommand}.trainer" if self.subcommand else "trainer"
        config = {**(self.config_init.get(key) or {}), **kwargs}
        return super().instantiate_trainer(**{**kwargs, **run_file_defaults(config)})

    def _parse_ckpt_path(self) -> None:
        # LightningCLI reads --ckpt_path's hyper-parameters first; when it cannot, say which
        # file and why (truncated, unsafe) rather than torch's bare OSError.
        try:
            super()._parse_ckpt_path()
        except Exception:
            path = self.config[self.config.subcommand].get("ckpt_path")
            read_checkpoint(path)
            raise

    def _run_subcommand(self, subcommand: str) -> None:
        started = time.time()
        try:
            super()._run_subcommand(subcommand)
        except BaseException:
            remove_failed_run_log(self.trainer, started)
            raise


def main(args: list[str] | None = None, clean_errors: bool | None = None) -> None:
    """Runs the command line; ``args`` replaces ``sys.argv[1:]`` (for tests).

    Args:
        args: the arguments; ``None`` reads ``sys.argv``.
        clean_errors: print an error the library raised on purpose (a bad setting, a missing
            file) as its message and exit with status 2 (while configuring) or 1 (while
            running), instead of raising it. Default: only on the console (``args`` is
            ``None``), so callers in Python get the exception.
    """
    argv = sys.argv[1:] if args is None else args
    # A user's own classes (--model mymethods.MyMethod) import from the working directory, as
    # they do under `python -m`; the console script alone would not look there.
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    if argv and argv[0] == "export":
        export.main(argv[1:])
        return
    if argv and argv[0] == "evaluate":
        evaluate.main(argv[1:])
        return
    if argv and argv[0] == "prepare":
        prepare.main(argv[1:])
        return
    if clean_errors is None:
        clean_errors = args is None
    try:
        SSLLightningCLI(
            L.LightningModule,
            L.LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            args=args,
            auto_configure_optimizers=False,
            parser_kwargs={"epilog": EPILOG},
            parser_class=CleanErrorParser,
        )
    except Exception as err:
        if clean_errors:
            exit_on_user_error(err, "ssl-lightning", 1 if _raised_while_running(err) else 2)
        raise


def _raised_while_running(err: BaseException) -> bool:
    """Whether the error came from the trainer's run rather than from building the classes."""
    return any(f.name == "_run_subcommand" for f in traceback.extract_tb(err.__traceback__))
