"""Backbones out of SSL checkpoints: read one, rebuild it, export it as a plain weights file.

The exported module is the method's ``export_module`` (the backbone; a teacher for methods
that evaluate it), recorded in the checkpoint. The file format lives in
:mod:`ssl_lightning.backbones.weights`; ``create_backbone(name, weights=path)`` rebuilds the
backbone from it.

Examples:
    >>> export_backbone("version_0/checkpoints/last.ckpt", "simclr.pt")  # doctest: +SKIP
    >>> create_backbone("resnet18", weights="simclr.pt")  # doctest: +SKIP

From the command line: ``ssl-lightning export CHECKPOINT OUT.pt [--overwrite]``
(:mod:`ssl_lightning.cli.export`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from ssl_lightning.backbones import create_backbone
from ssl_lightning.backbones.weights import (
    check_finite,
    check_overwrite,
    check_weights,
    is_weights,
    load_plain,
    write_weights,
)

__all__ = ["BackboneCheckpoint", "backbone_from_checkpoint", "export_backbone"]


@dataclass
class BackboneCheckpoint:
    """The backbone part of an SSL checkpoint.

    Attributes:
        name: the registered backbone name (the method's ``backbone`` hyper-parameter).
        kwargs: its ``backbone_kwargs``.
        state_dict: the weights of the method's ``export_module`` (``backbone.*`` unless the
            checkpoint names another), without that prefix.
    """

    name: str
    kwargs: dict[str, Any]
    state_dict: dict[str, Tensor]

    @classmethod
    def read(cls, path: str | Path) -> BackboneCheckpoint:
        """Reads the backbone of a Lightning checkpoint of any :class:`SSLMethod`.

        Raises:
            FileNotFoundError: if the file does not exist.
            ValueError: if it is not a Lightning checkpoint, not one of an SSL method (or a
                ``LinearEvaluation``) built from a registered backbone name, or its backbone
                weights hold NaN or infinity.
        """
        path = Path(path)
        ckpt = load_plain(
            path,
            "Lightning checkpoint",
            "pass the .ckpt an SSL pretraining run wrote "
            "(lightning_logs/version_N/checkpoints/*.ckpt)",
        )
        return cls.parse(ckpt, path)

    @classmethod
    def read_any(cls, path: str | Path) -> BackboneCheckpoint:
        """Reads the backbone of an SSL checkpoint or of an exported weights file.

        Raises:
            FileNotFoundError: if the file does not exist.
            ValueError: if it is neither (see :meth:`read` and
                :func:`~ssl_lightning.backbones.weights.read_weights`).
        """
        path = Path(path)
        content = load_plain(
            path,
            "checkpoint or weights file",
            "pass the .ckpt of an SSL run or a weights file from `ssl-lightning export`",
        )
        if is_weights(content):
            weights = check_weights(content, path)
            return cls(weights["name"], dict(weights["kwargs"]), weights["state_dict"])
        return cls.parse(content, path)

    @classmethod
    def parse(cls, ckpt: Any, path: Path) -> BackboneCheckpoint:
        """The backbone of ``ckpt``, a checkpoint loaded from ``path`` (see :meth:`read`)."""
        if is_weights(ckpt):
            raise ValueError(
                f"{str(path)!r} is an exported weights file, not a Lightning checkpoint; load it "
                "with create_backbone(name, weights=...) or LinearEvaluation(backbone_weights=...)"
            )
        if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
            raise ValueError(
                f"{str(path)!r} is not a Lightning checkpoint (no 'state_dict'); pass the .ckpt "
                "an SSL pretraining run wrote"
            )
        hparams = ckpt.get("hyper_parameters") or {}
        name = hparams.get("backbone")
        if not isinstance(name, str):
            raise ValueError(
                f"{str(path)!r} is not a checkpoint of an SSL method with a registered "
                f"backbone: its hyper-parameters have no backbone name (found "
                f"{sorted(hparams)}). Use the checkpoint of an SSLMethod subclass built with "
                "`backbone=<registered name>`, or export the backbone yourself with "
                "create_backbone(...).state_dict()"
            )
        module = ckpt.get("export_module", "backbone")
        prefix = f"{module}."
        state = {k[len(prefix) :]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
        if not state:
            raise ValueError(
                f"{str(path)!r} has a backbone name ({name!r}) but no '{module}.*' weights in "
                "its state_dict; it was not written by an SSLMethod"
            )
        check_finite(
            state,
            f"checkpoint {str(path)!r}",
            "Use a checkpoint from before the divergence (an earlier one in the same folder), "
            "and lower model.lr (or use a more stable precision) when training again",
        )
        kwargs = dict(hparams.get("backbone_kwargs") or {})
        return cls(name=name, kwargs=kwargs, state_dict=state)

    def build(self) -> nn.Module:
        """The backbone with these weights (loaded strictly)."""
        model = create_backbone(self.name, **self.kwargs)
        model.load_state_dict(self.state_dict, strict=True)
        return model


def backbone_from_checkpoint(path: str | Path) -> nn.Module:
    """Rebuilds the backbone of an SSL checkpoint from its hyper-parameters and weights."""
    return BackboneCheckpoint.read(path).build()


def export_backbone(checkpoint: str | Path, out: str | Path, overwrite: bool = False) -> Path:
    """Writes the backbone of an SSL checkpoint as a plain weights file.

    The file appears complete or not at all (see
    :func:`~ssl_lightning.backbones.weights.write_weights`).

    Args:
        checkpoint: a Lightning ``.ckpt`` of any :class:`SSLMethod`.
        out: the weights file to write (conventionally ``.pt``).
        overwrite: replace ``out`` if it exists.

    Returns:
        ``out`` as a path.

    Raises:
        FileExistsError: if ``out`` exists and ``overwrite`` is false.
        FileNotFoundError, ValueError: see :meth:`BackboneCheckpoint.read`.
    """
    out = Path(out)
    check_overwrite(out, overwrite)  # before reading a large checkpoint
    source = BackboneCheckpoint.read(checkpoint)
    source.build()  # fail here, not at load time, if the weights do not fit the backbone
    write_weights(out, source.name, source.kwargs, source.state_dict, overwrite=overwrite)
    return out
