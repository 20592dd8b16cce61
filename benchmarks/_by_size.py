"""The command line of the benchmarks that time two CPU paths of one op, a table row per size."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from typing import Any

import torch

Row = dict[str, Any]


def run_by_size(
    description: str,
    measure: Callable[[int, int, int, int], Row],
    shapes: Sequence[tuple[int, int, int]],
    header: str,
    cells: Callable[[Row], str],
    argv: list[str] | None = None,
) -> list[Row]:
    """Parses ``--threads`` and ``--repeats``, runs ``measure(side, size, batch, repeats)`` for
    every ``(input side, output side, batch)`` of ``shapes`` and prints a markdown table:
    ``header`` is its first line, ``cells(row)`` a row's columns after the shape."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(header)
    print("|---" * (header.count("|") - 1) + "|")
    rows = []
    for side, size, batch in shapes:
        row = measure(side, size, batch, args.repeats)
        rows.append(row)
        print(f"| {side} -> {size} ({batch}) | {cells(row)} |", flush=True)
    return rows
