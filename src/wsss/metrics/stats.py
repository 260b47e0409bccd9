"""Across-seed summaries: the mean ± standard error of the mean that seed 000's tables report."""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np

__all__ = ["format_mean_sem", "format_pct", "mean_sem"]


def mean_sem(values: Iterable[float]) -> tuple[float, float, int]:
    """(mean, s.e.m., n) over the finite values; s.e.m. uses the sample std (ddof = 1), so it
    is NaN for a single value (one seed says nothing about the spread)."""
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=np.float64)
    if v.size == 0:
        return math.nan, math.nan, 0
    sem = float(v.std(ddof=1) / math.sqrt(v.size)) if v.size > 1 else math.nan
    return float(v.mean()), sem, int(v.size)


def format_mean_sem(
    stats: tuple[float, float, int], scale: float = 100.0, digits: int = 1, *, signed: bool = False
) -> str:
    """``52.2 ± 0.3`` (percent by default); ``52.2`` for one value, ``–`` for none;
    ``signed`` writes the mean's sign (``+3.1 ± 1.2``), for differences."""
    mean, sem, _ = stats
    if not math.isfinite(mean):
        return "–"
    text = f"{scale * mean:{'+' if signed else ''}.{digits}f}"
    return text if not math.isfinite(sem) else f"{text} ± {scale * sem:.{digits}f}"


def format_pct(value: float | None) -> str:
    """A score in [0, 1] as a percent with one decimal; ``–`` for a missing or NaN score."""
    if value is None or not math.isfinite(float(value)):
        return "–"
    return f"{100 * float(value):.1f}"
