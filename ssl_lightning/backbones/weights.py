"""The backbone weights file: ``{"name": str, "kwargs": dict, "state_dict": dict[str, Tensor]}``.

Written by ``ssl-lightning export`` (:func:`write_weights`), read by
``create_backbone(name, weights=path)`` (:func:`read_weights`, :func:`check_request`). Only plain
types, so ``torch.load(path, weights_only=True)`` reads it anywhere, without this library.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ssl_lightning.files import atomic_write

__all__ = [
    "WEIGHTS_KEYS",
    "check_finite",
    "check_overwrite",
    "check_request",
    "check_weights",
    "is_weights",
    "load_plain",
    "read_weights",
    "write_weights",
]

WEIGHTS_KEYS = frozenset({"name", "kwargs", "state_dict"})
# torch's weights_only refusal: "Unsupported global: GLOBAL <name> was not an allowed global".
_REFUSED_GLOBAL = re.compile(r"GLOBAL (\S+) was not an allowed global")


def load_plain(path: Path, what: str, fix: str, map_location: Any = "cpu") -> Any:
    """``torch.load(path, weights_only=True)``; a missing, truncated or unsafe file is an error
    that names the file, says ``what`` it should be and how to ``fix`` it.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: if it cannot be read: cut short, not a torch file, or holding Python
            objects other than tensors and plain containers (refused, never unpickled).
    """
    if not path.is_file():
        raise FileNotFoundError(f"{what} {str(path)!r} does not exist; {fix}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        # weights_only=True refuses any pickled global that is not a tensor or plain type.
        refused = _REFUSED_GLOBAL.search(str(err))
        if refused is None:
            raise ValueError(
                f"cannot read {str(path)!r} as a {what} ({type(err).__name__}); {fix}"
            ) from err
        raise ValueError(
            f"refusing to load {what} {str(path)!r}: it holds Python objects other than "
            f"tensors and plain data (a pickled {refused[1]!r}), which could run code when "
            f"unpickled. Only load files you trust; {fix}"
        ) from err
    except Exception as err:  # a truncated zip, a file of another kind
        size = path.stat().st_size
        if _is_zip_start(path):
            raise ValueError(
                f"{what} {str(path)!r} is truncated or corrupt ({size} bytes; "
                f"{type(err).__name__}: {err}): it was cut off while being written (a full "
                f"disk, a killed copy); use an earlier file; {fix}"
            ) from err
        raise ValueError(
            f"cannot read {str(path)!r} as a {what} ({type(err).__name__}: {err}); {fix}"
        ) from err


def _is_zip_start(path: Path) -> bool:
    """Whether the file starts like the zip archive ``torch.save`` writes."""
    with open(path, "rb") as f:
        return f.read(4) == b"PK\x03\x04"


def check_finite(state_dict: dict[str, Tensor], source: str, fix: str) -> None:
    """Raises ``ValueError`` naming the tensors of ``state_dict`` that hold NaN or infinity."""
    bad = {}
    for key, value in state_dict.items():
        if isinstance(value, Tensor) and value.is_floating_point():
            count = int((~torch.isfinite(value)).sum())
            if count:
                bad[key] = (count, value.numel())
    if bad:
        shown = ", ".join(f"{k} ({n} of {total})" for k, (n, total) in list(bad.items())[:5])
        more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
        raise ValueError(
            f"{source} has non-finite (NaN or infinite) weights in {len(bad)} tensor(s): "
            f"{shown}{more}; the run that wrote them diverged. {fix}"
        )


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

    The file appears complete or not at all (:func:`~ssl_lightning.files.atomic_write`), with
    the umask's permissions, and an existing file is replaced only with ``overwrite``.

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
    atomic_write(path, lambda f: torch.save(content, f))
    return path


def read_weights(path: str | Path) -> dict[str, Any]:
    """Reads and validates a weights file written by ``ssl-lightning export``.

    Returns:
        ``{"name": str, "kwargs": dict, "state_dict": dict[str, Tensor]}``.

    Raises:
        FileNotFoundError: if the file does not exist.
        ValueError: if it is not such a file, or its weights hold NaN or infinity.
    """
    path = Path(path)
    content = load_plain(
        path, "backbone weights file", "write one with `ssl-lightning export CHECKPOINT OUT.pt`"
    )
    return check_weights(content, path)


def check_weights(content: Any, path: Path) -> dict[str, Any]:
    """``content``, loaded from ``path``, if it is a weights file with finite weights.

    Raises:
        ValueError: as :func:`read_weights`.
    """
    if not is_weights(content):
        found = sorted(content) if isinstance(content, dict) else type(content).__name__
        raise ValueError(
            f"{str(path)!r} is not a backbone weights file: expected a dict with keys "
            f"{sorted(WEIGHTS_KEYS)}, found {found}. A Lightning checkpoint (.ckpt) is exported "
            "with `ssl-lightning export CHECKPOINT OUT.pt`"
        )
    check_finite(
        content["state_dict"],
        f"weights file {str(path)!r}",
        "Export a checkpoint from before the divergence, and lower model.lr (or use a more "
        "stable precision) when training again",
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
