"""Report figures: matplotlib on an explicit Agg canvas (no display, no global backend switch),
returned as PNG bytes so the page can embed them."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence

import numpy as np

SIZES = ("small", "medium", "large")


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _png(fig) -> bytes:
    buf = io.BytesIO()
    # no "Software" entry: the same numbers give the same bytes, whatever matplotlib's version string
    fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})
    return buf.getvalue()


def _text(s: object) -> str:
    """A label as matplotlib should print it: a ``$`` in a class name must not start mathtext."""
    return str(s).replace("$", r"\$")


def _legend(ax, n: int) -> None:
    """Inside the axes for a few entries; beside them (constrained layout makes room) for many."""
    if n <= 6:
        ax.legend(fontsize=7)
    else:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), ncols=1 + n // 16)


def _colours(n: int) -> list:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def _pct(values: Sequence[float | None]) -> np.ndarray:
    return 100.0 * np.array([np.nan if v is None else float(v) for v in values], dtype=np.float64)


def tau_curves(curves: Mapping[str, Mapping], title: str) -> bytes:
    """mIoU (and precision / recall when every curve has them) against τ, one line per curve.

    ``curves[name]`` holds ``tau`` and per-τ lists ``miou`` / ``precision`` / ``recall`` in [0, 1],
    optionally ``miou_sem`` (a shaded ± band) and ``best_tau`` (dotted line; a star on mIoU).
    """
    panels = [m for m in ("miou", "precision", "recall") if all(m in c for c in curves.values())]
    fig = _figure(max(4.2 * len(panels), 6.5 if len(curves) <= 6 else 9.0), 3.6)
    axes = np.atleast_1d(fig.subplots(1, len(panels), sharex=True))
    for colour, (name, c) in zip(_colours(len(curves)), curves.items(), strict=True):
        tau = np.asarray(c["tau"], dtype=np.float64)
        best = c.get("best_tau")
        label = _text(name)
        if best is not None:
            k = int(np.argmin(np.abs(tau - float(best))))
            label += f" (τ={float(best):g}, {_pct([c['miou'][k]])[0]:.1f})"
        for ax, metric in zip(axes, panels, strict=True):
            y = _pct(c[metric])
            ax.plot(tau, y, marker=".", color=colour, label=label)
            sem = c.get(f"{metric}_sem")
            if sem is not None:
                s = _pct(sem)
                ax.fill_between(tau, y - s, y + s, color=colour, alpha=0.2, linewidth=0)
            if best is not None:
                ax.axvline(float(best), color=colour, linestyle=":", linewidth=1)
        if best is not None:
            axes[0].plot([tau[k]], [_pct([c["miou"][k]])[0]], marker="*", markersize=12, color=colour)
    for ax, metric in zip(axes, panels, strict=True):
        name = "mIoU" if metric == "miou" else metric
        ax.set_xlabel("τ")
        ax.set_ylabel(f"{name} (%)")
        ax.set_title(name)
        ax.grid(alpha=0.3)
    _legend(axes[-1], len(curves))
    fig.suptitle(_text(title), fontsize=10)
    return _png(fig)


def ia_bars(
    values: Mapping[str, Sequence[float]], title: str, errors: Mapping[str, Sequence[float]] | None = None
) -> bytes:
    """IA-mIoU of small / medium / large objects, one bar per output in each size group.

    ``values[name]`` = (S, M, L) in [0, 1], NaN where a size has no instance (no bar);
    ``errors`` the matching s.e.m. for error bars.
    """
    names = list(values)
    fig = _figure(min(12.0, max(5.0, 1.2 + 0.35 * len(names) * len(SIZES))), 3.6)
    ax = fig.subplots()
    width = 0.8 / max(len(names), 1)
    x = np.arange(len(SIZES), dtype=np.float64)
    for i, (colour, name) in enumerate(zip(_colours(len(names)), names, strict=True)):
        err = _pct(errors[name]) if errors and name in errors else None
        if err is not None:
            err = np.nan_to_num(err)
        ax.bar(
            x + (i - (len(names) - 1) / 2) * width,
            _pct(values[name]),
            width,
            yerr=err,
            color=colour,
            label=_text(name),
            capsize=2,
        )
    ax.set_xticks(x, ["S", "M", "L"])
    ax.set_ylabel("IA-mIoU (%)")
    ax.set_ylim(0, 100)
    ax.grid(axis="y", alpha=0.3)
    _legend(ax, len(names))
    ax.set_title(_text(title), fontsize=10)
    return _png(fig)


def class_iou_bars(class_names: Sequence[str], ious: Mapping[str, Sequence[float]], title: str) -> bytes:
    """Per-class IoU, one bar per output for every class (NaN: no bar)."""
    names = list(ious)
    k = len(class_names)
    fig = _figure(min(24.0, max(6.0, 0.25 * k * max(len(names), 1) + 1.5)), 3.8)
    ax = fig.subplots()
    width = 0.8 / max(len(names), 1)
    x = np.arange(k, dtype=np.float64)
    for i, (colour, name) in enumerate(zip(_colours(len(names)), names, strict=True)):
        ax.bar(
            x + (i - (len(names) - 1) / 2) * width, _pct(ious[name]), width, color=colour, label=_text(name)
        )
    ax.set_xticks(
        x, [_text(c) for c in class_names], rotation=45 if k > 8 else 0, ha="right" if k > 8 else "center"
    )
    ax.set_ylabel("IoU (%)")
    ax.set_ylim(0, 100)
    ax.grid(axis="y", alpha=0.3)
    _legend(ax, len(names))
    ax.set_title(_text(title), fontsize=10)
    return _png(fig)
