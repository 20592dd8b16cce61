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
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar, overload

from torch import nn

from ssl_lightning.backbones.weights import check_request, read_weights

__all__ = [
    "UnknownBackboneError",
    "create_backbone",
    "list_backbones",
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
            `ssl_lightning.backbones.weights`). Its recorded name must be ``name``; its recorded
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
    content = read_weights(weights)
    check_request(weights, content, name, kwargs)
    model = _build(name, {**content["kwargs"], **kwargs})
    model.load_state_dict(content["state_dict"], strict=True)
    return model


def _build(name: str, kwargs: dict[str, Any]) -> nn.Module:
    if name in _REGISTRY:
        _check_kwargs(name, _REGISTRY[name], kwargs)
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


def _check_kwargs(name: str, factory: BackboneFactory, kwargs: dict[str, Any]) -> None:
    """Raises ``ValueError`` for a keyword the factory does not take, with the closest one."""
    params = inspect.signature(factory).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    for key in kwargs:
        if key not in params:
            close = difflib.get_close_matches(key, list(params), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else "."
            raise ValueError(
                f"backbone {name!r} takes no argument {key!r}{hint} Its arguments: "
                f"{', '.join(params) or 'none'} (set model.backbone_kwargs)"
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
