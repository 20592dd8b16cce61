"""Backbone registry: register factories by name, create them, list them with wildcards.

Two kinds of names live here:

- plain names (``"resnet18"``), each a factory function registered with
  :func:`register_backbone`;
- prefixed families (``"torchvision/<name>"``, ``"timm/<name>"``), registered with
  :func:`register_family`, whose names are generated on demand by the family's lister
  rather than stored one by one.

Examples:
    >>> from ssl_lightning.backbones import create_backbone, list_backbones
    >>> list_backbones("resnet*")
    ['resnet18', 'resnet34', 'resnet50']
    >>> backbone = create_backbone("resnet18", width=16)
    >>> backbone.num_features
    128
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar, overload

import torch
from torch import nn

__all__ = [
    "UnknownBackboneError",
    "create_backbone",
    "list_backbones",
    "read_weights",
    "register_backbone",
    "register_family",
]

BackboneFactory = Callable[..., nn.Module]
F = TypeVar("F", bound=BackboneFactory)

_REGISTRY: dict[str, BackboneFactory] = {}
# prefix -> (factory taking the name after "prefix/", lister of those names)
_FAMILIES: dict[str, tuple[Callable[..., nn.Module], Callable[[], list[str]]]] = {}


class UnknownBackboneError(KeyError, ValueError):
    """Raised for a backbone name that is neither registered nor part of a known family.

    It is both a ``KeyError`` (a failed lookup) and a ``ValueError`` (a bad argument value), so
    either ``except`` clause catches it.
    """

    def __str__(self) -> str:
        # KeyError's own __str__ shows the repr of its argument, quotes and escaped newlines.
        return str(self.args[0]) if self.args else ""


@overload
def register_backbone(fn: F, *, name: str | None = None) -> F: ...


@overload
def register_backbone(fn: None = None, *, name: str | None = None) -> Callable[[F], F]: ...


def register_backbone(fn: F | None = None, *, name: str | None = None) -> F | Callable[[F], F]:
    """Register a backbone factory under ``name`` (default: the function's name).

    Usable as ``@register_backbone``, ``@register_backbone(name="...")`` or as a plain call.
    The factory takes typed keyword arguments and returns a module that follows the backbone
    contract (``num_features``, pooled ``forward``, unpooled ``forward_features``).

    Args:
        fn: the factory function.
        name: the registry name; defaults to ``fn.__name__``.

    Returns:
        The factory itself (unchanged), or a decorator when ``fn`` is not given.

    Raises:
        ValueError: if the name is already registered or contains ``/`` (reserved for
            prefixed families such as ``torchvision/``).
    """

    def decorator(factory: F) -> F:
        key = name if name is not None else factory.__name__
        if "/" in key:
            raise ValueError(
                f"backbone name {key!r} contains '/', which is reserved for prefixed families "
                f"({', '.join(sorted(_FAMILIES)) or 'none registered'}); pick another `name`"
            )
        if key in _REGISTRY:
            raise ValueError(
                f"backbone {key!r} is already registered (by {_REGISTRY[key].__module__}); "
                "pass a different `name` to register_backbone"
            )
        _REGISTRY[key] = factory
        return factory

    return decorator if fn is None else decorator(fn)


def register_family(
    prefix: str,
    factory: Callable[..., nn.Module],
    lister: Callable[[], list[str]],
) -> None:
    """Register a family of backbones reachable as ``"<prefix>/<name>"``.

    Args:
        prefix: the family prefix, e.g. ``"torchvision"``.
        factory: builds a backbone from the name after the prefix and keyword arguments.
        lister: returns the names the family can build (without the prefix). It may raise
            ``ImportError`` when the family's library is not installed.

    Raises:
        ValueError: if the prefix is already registered or contains ``/``.
    """
    if "/" in prefix or prefix in _FAMILIES:
        raise ValueError(f"backbone family prefix {prefix!r} is invalid or already registered")
    _FAMILIES[prefix] = (factory, lister)


def create_backbone(name: str, weights: str | Path | None = None, **kwargs: Any) -> nn.Module:
    """Build the backbone registered as ``name``, optionally with exported weights.

    Args:
        name: a registered name (``"resnet18"``) or a family name (``"torchvision/resnet50"``,
            ``"timm/vit_small_patch16_224"``).
        weights: a weights file written by ``ssl-lightning export`` (see
            :mod:`ssl_lightning.export`). Its recorded name must be ``name``; its recorded
            keyword arguments fill in the ones not given, and any given must agree with them.
            The state dict is loaded strictly.
        **kwargs: keyword arguments for the factory (e.g. ``width=32`` for the ResNets).

    Returns:
        An ``nn.Module`` with ``num_features``; ``forward`` maps ``[B, 3, H, W]`` to
        ``[B, num_features]`` and ``forward_features`` returns the unpooled map or tokens.

    Raises:
        UnknownBackboneError: if the name is unknown (the message lists close matches).
        ImportError: if the name's family needs a library that is not installed.
        FileNotFoundError: if ``weights`` does not exist.
        ValueError: if ``weights`` is not an exported backbone, or holds another backbone
            (name or keyword arguments) than the one requested.

    Examples:
        >>> backbone = create_backbone("resnet18", weights="resnet18-simclr.pt")  # doctest: +SKIP
    """
    if weights is None:
        return _build(name, kwargs)
    exported = read_weights(weights)
    _check_request(weights, exported, name, kwargs)
    model = _build(name, {**exported["kwargs"], **kwargs})
    model.load_state_dict(exported["state_dict"], strict=True)
    return model


def read_weights(path: str | Path) -> dict[str, Any]:
    """Reads and validates a weights file written by ``ssl-lightning export``.

    Returns:
        ``{"name": str, "kwargs": dict, "state_dict": dict[str, Tensor]}``.

    Raises:
        FileNotFoundError: if the file does not exist.
        ValueError: if it is not such a file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"backbone weights file {str(path)!r} does not exist; write one with "
            "`ssl-lightning export CHECKPOINT OUT.pt`"
        )
    try:
        exported = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a pickle error, a truncated zip, a file of another kind
        raise ValueError(
            f"{str(path)!r} is not a backbone weights file ({type(err).__name__}: {err}); "
            "write one with `ssl-lightning export CHECKPOINT OUT.pt`"
        ) from err
    keys = {"name", "kwargs", "state_dict"}
    if (
        not isinstance(exported, dict)
        or set(exported) != keys
        or not isinstance(exported["name"], str)
        or not isinstance(exported["kwargs"], dict)
        or not isinstance(exported["state_dict"], dict)
    ):
        found = sorted(exported) if isinstance(exported, dict) else type(exported).__name__
        raise ValueError(
            f"{str(path)!r} is not a backbone weights file: expected a dict with keys "
            f"{sorted(keys)}, found {found}. A Lightning checkpoint (.ckpt) is exported with "
            "`ssl-lightning export CHECKPOINT OUT.pt`"
        )
    return exported


def _build(name: str, kwargs: dict[str, Any]) -> nn.Module:
    if name in _REGISTRY:
        return _REGISTRY[name](**kwargs)
    prefix, sep, member = name.partition("/")
    if sep and prefix in _FAMILIES:
        factory, lister = _FAMILIES[prefix]
        members = lister()
        if member in members:
            return factory(member, **kwargs)
        candidates = [f"{prefix}/{m}" for m in members]
    else:
        candidates = list_backbones()
    raise UnknownBackboneError(_unknown_message(name, candidates))


def _plain(value: Any) -> Any:
    """Tuples as lists, recursively: a config's ``[16, 32]`` and a saved ``(16, 32)`` agree."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _check_request(
    path: str | Path, exported: dict[str, Any], name: str, kwargs: dict[str, Any]
) -> None:
    saved_name, saved_kwargs = exported["name"], exported["kwargs"]
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


def list_backbones(pattern: str = "*") -> list[str]:
    """Sorted names of all backbones matching an fnmatch ``pattern``.

    Family members are listed with their prefix (``"torchvision/resnet18"``). A family whose
    library is not installed is skipped, unless the pattern starts with its prefix, in which
    case its ``ImportError`` (with the install hint) is raised.

    Args:
        pattern: shell-style wildcard pattern, e.g. ``"resnet*"`` or ``"torchvision/*"``.

    Returns:
        The matching names, sorted.
    """
    names = list(_REGISTRY)
    for prefix, (_, lister) in _FAMILIES.items():
        try:
            members = lister()
        except ImportError:
            if pattern.startswith(f"{prefix}/"):
                raise
            continue
        names.extend(f"{prefix}/{m}" for m in members)
    return sorted(n for n in names if fnmatch.fnmatchcase(n, pattern))


def _unknown_message(name: str, candidates: list[str]) -> str:
    close = difflib.get_close_matches(name, candidates, n=5)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    families = ", ".join(f"'{p}/<name>'" for p in sorted(_FAMILIES))
    return f"unknown backbone {name!r}.{hint} list_backbones() shows all names" + (
        f" (families: {families})." if families else "."
    )


def num_features_of(backbone: nn.Module) -> int:
    """The backbone's ``num_features``, or a ``TypeError`` if it breaks the backbone contract."""
    num_features = getattr(backbone, "num_features", None)
    if not isinstance(num_features, int):
        raise TypeError(
            f"backbone {type(backbone).__name__} has no integer `num_features`; a backbone "
            "must follow the contract in ssl_lightning.backbones (num_features, pooled forward)"
        )
    return num_features
