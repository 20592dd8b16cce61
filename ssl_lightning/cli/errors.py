"""Errors of ``ssl-lightning`` as one message: the library's own words and the key or file to
change, instead of a jsonargparse traceback that ends in a ``Namespace`` dump, or a 90-line
traceback in front of the message that says what to do.

Two places produce them: the parser (an unknown key, a value of the wrong type, an unknown
class), handled by :class:`CleanErrorParser`, and the library's own ``raise`` statements,
while the classes are built (``model.temperature must be > 0``) or while the run goes (a
failed download, a missing or truncated file, a non-finite loss), which :func:`user_error`
picks out of the exception chain. Anything else (a bug, an error inside torch) keeps its
traceback. ``SSL_LIGHTNING_TRACEBACK=1`` shows every traceback.
"""

from __future__ import annotations

import difflib
import importlib
import os
import re
import sys
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

from jsonargparse import ArgumentParser
from lightning.pytorch.cli import LightningArgumentParser
from lightning.pytorch.utilities.exceptions import MisconfigurationException

__all__ = [
    "CleanErrorParser",
    "exit_on_user_error",
    "show_tracebacks",
    "suggest_key",
    "summarize",
    "user_error",
]

PACKAGE = Path(__file__).parent.parent  # ssl_lightning: errors raised by any of its code
# The kinds of error the library raises on purpose, with a message that says what to do. Only
# those raised by a `raise` statement of the package count: the same kinds raised inside torch
# or by a call that failed (a bug) keep their traceback, and so does a KeyError or assert.
USER_ERRORS = (ValueError, TypeError, OSError, RuntimeError, FloatingPointError)

_PARSER_KEY = re.compile(r'^Parser key "(?P<key>[^"]+)":\s*(?P<rest>.*)$')
_CLASS_PATH = re.compile(r"^(?:- )?Problem with given class_path '(?P<cls>[^']+)':$")
_NOT_ACCEPTED = re.compile(r"^(?:- )?Option '(?P<key>[^']+)' is not accepted$")
_UNRECOGNIZED = re.compile(r"unrecognized arguments: (?P<args>.+)$")
_NOT_ACCEPTED_BY = re.compile(r"^Subcommand '\w+' does not accept option '(?P<key>[^']+)'$")
_NO_CLASS = re.compile(r"^(?:- )?Expected a dot import path string: (?P<name>\S+)$")
_NOISE = re.compile(
    r"^(?:- )?(?:Given value|Subtypes:|Errors:|Does not validate|Expected a <class 'NoneType'>)"
)


def show_tracebacks() -> bool:
    """Whether ``SSL_LIGHTNING_TRACEBACK`` asks for full tracebacks."""
    return os.environ.get("SSL_LIGHTNING_TRACEBACK", "") not in ("", "0")


class CleanErrorParser(LightningArgumentParser):
    """LightningCLI's parser, printing a parse error as one message with the key to change."""

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        if not self.exit_on_error or show_tracebacks():
            super().error(message, ex)
        parser = getattr(ex, "subcommand_parser", None) or self
        prog = parser.prog.replace(" [options]", "")
        sys.stderr.write(f"{prog}: error: {summarize(message, parser)}\n")
        sys.stderr.write(f"tip: `{prog} --help` lists the accepted keys and values\n")
        self.exit(2)


def summarize(message: str, parser: ArgumentParser | None = None) -> str:
    """One line out of a jsonargparse error: the key at fault and what was wrong with it."""
    for pattern in (_NOT_ACCEPTED_BY, _UNRECOGNIZED):
        match = pattern.search(message.strip())
        if match:
            given = match.groupdict().get("key") or match["args"].split()[0]
            key = given.lstrip("-").split("=")[0]
            valid = _parser_keys(parser) if parser is not None else []
            return f"unknown key {key!r}{_did_you_mean(key, valid)}"
    found = _innermost(message)
    if found is None:
        return _alternatives(message) or message.strip()
    path, class_path, line = found
    key = ".".join(path)
    unknown = _NOT_ACCEPTED.match(line)
    if unknown:
        key = ".".join([*path, unknown["key"]])
        valid = [".".join([*path, k]) for k in _class_keys(class_path)]
        return f"unknown key {key!r}{_did_you_mean(key, valid)}"
    missing = _NO_CLASS.match(line)
    if missing:
        name = missing["name"]
        return f"{key}: no class named {name!r}{_did_you_mean(name, _class_names(message))}"
    wrong = re.match(r"Expected an? (.+?)\. Got value: (.+)$", line)
    if wrong:
        line = f"got {wrong[2]}; expected {wrong[1]}"
    return f"{key}: {_plain_types(line)}" if key else _plain_types(line)


def _innermost(message: str) -> tuple[list[str], str | None, str] | None:
    """The most nested error line of a jsonargparse message, with its key path and class."""
    stack: list[tuple[int, str, str]] = []  # (indent, "key" | "class", value)
    best: tuple[int, list[str], str | None, str] | None = None
    for raw in message.splitlines():
        text = raw.strip()
        if not text:
            continue
        indent = len(raw) - len(raw.lstrip())
        while stack and stack[-1][0] >= indent:
            stack.pop()
        key = _PARSER_KEY.match(text)
        cls = _CLASS_PATH.match(text)
        if key:
            stack.append((indent, "key", key["key"]))
            text = key["rest"]
            if not text:
                continue
        elif cls:
            stack.append((indent, "class", cls["cls"]))
            continue
        noise = _NOISE.match(text) or text.startswith("- ")
        if noise and not (_NOT_ACCEPTED.match(text) or _NO_CLASS.match(text)):
            continue
        path = [v for _, kind, v in stack if kind == "key"]
        classes = [v for _, kind, v in stack if kind == "class"]
        depth = len(stack)
        if best is None or depth > best[0]:
            best = (depth, path, classes[-1] if classes else None, text)
    return None if best is None else best[1:]


def _alternatives(message: str) -> str | None:
    """``key: got V; expected A or B`` from a value that matched none of a union's types."""
    keys = re.findall(r'Parser key "([^"]+)"', message)
    given = re.findall(r"^\s*Given value: (.+)$", message, re.MULTILINE)
    expected = [
        _plain_types(m)
        for m in re.findall(r"^\s*- Expected a (.+)$", message, re.MULTILINE)
        if "NoneType" not in m
    ]
    if not (keys and given and expected):
        return None
    return f"{'.'.join(keys)}: got {given[-1]}; expected {' or '.join(expected)}"


def _did_you_mean(key: str, valid: list[str]) -> str:
    hint = suggest_key(key, valid)
    return f"; did you mean {hint!r}?" if hint else ""


def suggest_key(key: str, valid: list[str]) -> str | None:
    """The closest valid key (difflib), also when only the first part is misspelled."""
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
    if close:
        return close[0]
    head, dot, rest = key.partition(".")
    if dot:
        roots = sorted({v.split(".")[0] for v in valid})
        close = difflib.get_close_matches(head, roots, n=1, cutoff=0.6)
        if close and close[0] != head:
            return suggest_key(f"{close[0]}.{rest}", valid) or f"{close[0]}.{rest}"
    return None


def _class_keys(class_path: str | None) -> list[str]:
    """The init arguments of a class by import path (inherited ones through ``**kwargs``)."""
    cls = _import(class_path)
    if cls is None:
        return []
    parser = ArgumentParser(exit_on_error=False)
    try:
        parser.add_class_arguments(cls, "x", fail_untyped=False)
    except Exception:
        return []
    keys = (a.dest for a in parser._actions)
    return [k[2:] for k in keys if k.startswith("x.") and not k.endswith(".help")]


def _parser_keys(parser: ArgumentParser) -> list[str]:
    keys = (a.dest for a in parser._actions)
    return [k for k in keys if k not in ("help", "config") and not k.endswith(".help")]


def _class_names(message: str) -> list[str]:
    """Short names of the library's subclasses of the base classes the message lists."""
    names: set[str] = set()
    for path in re.findall(r"<class '([\w.]+)'>", message):
        base = _import(path)
        if isinstance(base, type) and base is not type(None):
            names.update(c.__name__ for c in _subclasses(base) if c.__module__.startswith("ssl"))
    return sorted(names)


def _subclasses(cls: type) -> Iterator[type]:
    sub: type
    for sub in cls.__subclasses__():
        yield sub
        yield from _subclasses(sub)


def _import(path: str | None) -> Any:
    if not path or "." not in path:
        return None
    module, _, name = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        return None


def _plain_types(text: str) -> str:
    text = re.sub(r"typing\.Literal\[(.*)\]", r"one of \1", text)
    return re.sub(r"<class '(?:[\w.]+\.)?(\w+)'>", r"\1", text)


def user_error(err: BaseException) -> BaseException | None:
    """The error, in ``err`` or its causes, that the library raised on purpose, else ``None``.

    That is an error of a kind the library uses for bad settings and inputs, raised by a
    ``raise`` statement of this package (a bug or an error inside torch keeps its traceback),
    or Lightning's own ``MisconfigurationException``.
    """
    seen: set[int] = set()
    current: BaseException | None = err
    found = None
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, MisconfigurationException) or (
            isinstance(current, USER_ERRORS) and _raised_here(current)
        ):
            found = current  # keep going: the innermost is the library's own words
        current = current.__cause__ or current.__context__
    return found


def _raised_here(err: BaseException) -> bool:
    """Whether a ``raise`` statement of this package raised ``err`` (not a call it made)."""
    frames = traceback.extract_tb(err.__traceback__)
    if not frames or isinstance(err, NotImplementedError) or not str(err):
        return False
    last = frames[-1]
    is_raise = (last.line or "").lstrip().startswith("raise ")
    return is_raise and Path(last.filename).resolve().is_relative_to(PACKAGE)


def exit_on_user_error(err: BaseException, prog: str, status: int) -> None:
    """Prints the error the library raised on purpose in ``err``'s chain as ``prog: error:
    message`` and exits with ``status``; returns (for the caller to re-raise) when there is
    none, or when ``SSL_LIGHTNING_TRACEBACK`` asks for tracebacks."""
    cause = None if show_tracebacks() else user_error(err)
    if cause is None:
        return
    sys.stderr.write(f"{prog}: error: {cause}\n")
    sys.stderr.write("(set SSL_LIGHTNING_TRACEBACK=1 to see the traceback)\n")
    sys.exit(status)
