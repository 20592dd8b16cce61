"""The ``ssl-lightning`` command line: ``fit``/``validate``/``test``/``predict`` through
LightningCLI (:mod:`.app`), ``export`` (:mod:`.export`) and ``evaluate`` (:mod:`.evaluate`);
configuration and runtime errors as one message (:mod:`.errors`); the files a run writes
(:mod:`.run_files`). The console script is :func:`main`."""

from ssl_lightning.cli.app import main

__all__ = ["main"]
