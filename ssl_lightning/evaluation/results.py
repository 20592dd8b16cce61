"""Rows of evaluation results as a table cell and as a line of a JSON-lines results file.

A score can be missing: top-5 is NaN with 5 classes or fewer
(:func:`ssl_lightning.labels.has_top5`), and JSON, which has no NaN, stores it as ``null``.
"""

from __future__ import annotations

import json
import math
from typing import Any

__all__ = ["json_line", "percent"]


def percent(value: float | None) -> str:
    """``value`` as a percentage with one decimal; ``-`` for a missing score (NaN or None)."""
    if value is None or math.isnan(value):
        return "-"
    return f"{value:.1%}"


def json_line(row: dict[str, Any]) -> str:
    """``row`` as one line of strict JSON, NaN written ``null``.

    Examples:
        >>> json_line({"top1": 0.5, "top5": float("nan")})
        '{"top1": 0.5, "top5": null}\\n'
    """
    clean = {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in row.items()}
    return json.dumps(clean, allow_nan=False) + "\n"
