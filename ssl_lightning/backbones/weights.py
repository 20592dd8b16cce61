"""The backbone weights file: ``{"name": str, "kwargs": dict, "state_dict": dict[str, Tensor]}``.

Written by ``ssl-lightning export`` (:func:`write_weights`), read by
``create_backbone(name, weights=path)`` (:func:`read_weights`, :func:`check_request`). Only plain
types, so ``torch.load(path, weights_only=True)`` reads it anywhere, without this library.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "WEIGHTS_KEYS",
    "check_overwrite",
    "check_request",
    "is_weights",
    "load_plain",
    "read_weights",
    "write_weights",
]

WEIGHTS_KEYS = frozenset({"name", "kwargs", "state_dict"})


def load_plain(path: Path, what: str, fix: str) -> Any:
    """``torch.load(path, weights_only=True)`` onto the CPU; a missing or unreadable file is an
    error that says ``what`` the file should be and how to ``fix`` it."""
    if not path.is_file():
        raise FileNotFoundError(f"{what} {str(path)!r} does not exist; {fix}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a pickle error, a truncated zip, a file of another kind
        raise ValueError(
            f"cannot read {str(path)!r} as a {what} ({type(err).__name__}: {err}); {fix}"
        ) from err


def is_weights(content: Any) -> bool:
    """Whether a loaded object has the weights file's layout."""
    return (
        isinstance(content, dict)
        and set(content) == WEIGHTS_KEYS
        and isinstance(content["name"], str)
        and isinstance(content["kwargs"], dict)
        and isinstance(content["state_dict"], dict)
    )


def check_overwrite(path: Path, overwrite: bool) -> None:
    """Raises ``FileExistsError`` if ``path`` exists and ``overwrite`` is false."""
    if path.exists() and not overwrite:
        raise FileExistsError(
            f"{str(path)!r} already exists; pass --overwrite (overwrite=True) to replace it, or "
            "choose another path"
        )


def write_weights(
    path: str | Path,
    name: str,
    kwargs: dict[str, Any],
    state_dict: dict[str, Tensor],
    overwrite: bool = False,
) -> Path:
    """Saves a backbone's registry ``name``, factory ``kwargs`` and ``state_dict`` to ``path``.

    The file appears complete or not at all (a temporary file in the same folder, then a
    rename), and an existing file is replaced only with ``overwrite``.

    Raises:
        FileExistsError: if ``path`` exists and ``overwrite`` is false.
    """
    path = Path(path)
    check_overwrite(path, overwrite)
    content = {
        "name": name,
        "kwargs": dict(kwargs),
        # Own storage per tensor: a view would save the whole storage it points into.
        "state_dict": {k: v.detach().clone() for k, v in state_dict.items()},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        torch.save(content, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_weights(path: str | Path) -> dict[str, Any]:
    """Reads and validates a weights file written by ``ssl-lightning export``.

    Returns:
        ``{"name": str, "kwargs": dict, "state_dict": dict[str, Tensor]}``.

    Raises:
        FileNotFoundError: if the file does not exist.
        ValueError: if it is not such a file.
    """
    path = Path(path)
    content = load_plain(
        path, "backbone weights file", "write one with `ssl-lightning export CHECKPOINT OUT.pt`"
    )
    if not is_weights(content):
        found = sorted(content) if isinstance(content, dict) else type(content).__name__
        raise ValueError(
            f"{str(path)!r} is not a backbone weights file: expected a dict with keys "
            f"{sorted(WEIGHTS_KEYS)}, found {found}. A Lightning checkpoint (.ckpt) is exported "
            "with `ssl-lightning export CHECKPOINT OUT.pt`"
        )
    return content


def _plain(value: Any) -> Any:
    """Tuples as lists, recursively: a config's ``[16, 32]`` and a saved ``(16, 32)`` agree."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def check_request(
    path: str | Path, content: dict[str, Any], name: str, kwargs: dict[str, Any]
) -> None:
    """Raises unless the file's backbone is ``name`` and agrees with every given ``kwargs``."""
    saved_name, saved_kwargs = content["name"], content["kwargs"]
    if saved_name != name:
        raise ValueError(
            f"weights file {str(path)!r} holds a {saved_name!r} backbone (kwargs "
            f"{saved_kwargs}), not {name!r}; call create_backbone({saved_name!r}, "
            f"weights={str(path)!r})"
        )
    differ = {
        k: v
        for k, v in kwargs.items()
        if k not in saved_kwargs or _plain(saved_kwargs[k]) != _plain(v)
    }
    if differ:
        raise ValueError(
            f"weights file {str(path)!r} was exported from {name!r} with kwargs "
            f"{saved_kwargs}, but the request asks for {differ}; drop those arguments (the "
            "file's kwargs are used) or export a backbone built with them"
        )
