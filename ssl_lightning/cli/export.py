"""``ssl-lightning export CHECKPOINT OUT.pt [--overwrite]``: a checkpoint's backbone as a
weights file (:func:`ssl_lightning.export.export_backbone`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ssl_lightning.cli.errors import exit_on_user_error
from ssl_lightning.export import export_backbone

__all__ = ["main"]


def main(args: list[str] | None = None) -> None:
    """``ssl-lightning export CHECKPOINT OUT.pt [--overwrite]``."""
    parser = argparse.ArgumentParser(
        prog="ssl-lightning export",
        description=(
            "Write the backbone of an SSL checkpoint as a weights file: {name, kwargs, "
            "state_dict}, readable with torch.load(weights_only=True) and loaded by "
            "create_backbone(name, weights=OUT) or LinearEvaluation(backbone_weights=OUT)."
        ),
    )
    parser.add_argument("checkpoint", type=Path, help="Lightning .ckpt of an SSL method")
    parser.add_argument("out", type=Path, help="weights file to write, e.g. backbone.pt")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    ns = parser.parse_args(args)
    try:
        out = export_backbone(ns.checkpoint, ns.out, overwrite=ns.overwrite)
    except Exception as err:
        exit_on_user_error(err, "ssl-lightning export", 2)
        raise
    print(f"wrote {out}")
