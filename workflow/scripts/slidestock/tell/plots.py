"""The report's plots, drawn with matplotlib as self-contained SVG (same data, same bytes).

Text stays text (``svg.fonttype: none``) so the page is searchable and the browser test can
measure every label; counts get integer ticks; byte axes read "1 MB", never ``1e+06``.
"""

from __future__ import annotations

import functools
import io
import math
from collections.abc import Callable, Sequence
from typing import Any, ParamSpec

import matplotlib
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter, ScalarFormatter

WIDTH_IN, HEIGHT_IN = 4.6, 3.0
MAX_BARS = 25
_STYLE: dict[str, Any] = {
    "svg.fonttype": "none",
    "svg.hashsalt": "slidestock",
    "font.family": "sans-serif",
    "font.size": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
}
_UNITS = ((1e12, "TB"), (1e9, "GB"), (1e6, "MB"), (1e3, "kB"))


P = ParamSpec("P")


def _styled(draw: Callable[P, str]) -> Callable[P, str]:
    """Draw under the report's style, whatever the caller's matplotlib settings."""

    @functools.wraps(draw)
    def styled(*args: P.args, **kwargs: P.kwargs) -> str:
        with matplotlib.rc_context(_STYLE):  # type: ignore[arg-type]  # its keys are checked at run time
            return draw(*args, **kwargs)

    return styled


def byte_label(value: float) -> str:
    """ "2 MB" for 2e6, "500 B" for 500: decimal units, at most three significant figures."""
    for scale, unit in _UNITS:
        if value >= scale:
            return f"{value / scale:.3g} {unit}"
    return f"{value:.3g} B"


@_styled
def scatter_log(title: str, x_label: str, y_label: str, xs: Sequence[float], ys: Sequence[float]) -> str:
    """Bytes against bytes on log axes (zeros and negatives are left out), with the y = x line."""
    points = [(x, y) for x, y in zip(xs, ys, strict=True) if x > 0 and y > 0]
    figure, axes = _figure(title)
    if not points:
        return _empty(figure, axes)
    low = min(min(p) for p in points) / 2
    high = max(max(p) for p in points) * 2
    axes.plot([low, high], [low, high], color="#bbbbbb", linestyle="--", linewidth=1, label="fetched = whole")
    axes.scatter([p[0] for p in points], [p[1] for p in points], s=14, color="#8a3f8f", alpha=0.7)
    axes.set_xscale("log")
    axes.set_yscale("log")
    for axis in (axes.xaxis, axes.yaxis):
        axis.set_major_locator(LogLocator(base=10, numticks=6))
        axis.set_major_formatter(FuncFormatter(lambda v, _pos: byte_label(v)))
        axis.set_minor_formatter(NullFormatter())
    axes.set_xlim(low, high)
    axes.set_ylim(low, high)
    axes.set_xlabel(x_label)
    axes.set_ylabel(y_label)
    axes.legend(loc="upper left", frameon=False)
    return _svg(figure)


@_styled
def histogram(title: str, x_label: str, values: Sequence[float], bins: int = 12) -> str:
    """Slides per bin of ``values``: equal-width bins, one bar when all values are equal."""
    figure, axes = _figure(title)
    if not values:
        return _empty(figure, axes)
    low, high = min(values), max(values)
    if high == low:
        half = max(abs(low) * 0.05, 0.5)
        low, high, bins = low - half, high + half, 1
    axes.hist(values, bins=bins, range=(low, high), color="#c06c9b", edgecolor="white")
    axes.xaxis.set_major_locator(MaxNLocator(nbins=5))
    plain = ScalarFormatter(useOffset=False)
    plain.set_scientific(False)
    axes.xaxis.set_major_formatter(plain)
    _count_axis(axes.yaxis)
    axes.set_xlabel(x_label)
    axes.set_ylabel("slides")
    return _svg(figure)


@_styled
def bars(title: str, labels: Sequence[str], counts: Sequence[int]) -> str:
    """Horizontal bars, one per label, largest first; beyond ``MAX_BARS`` the rest are summed."""
    rows = sorted(zip(labels, counts, strict=True), key=lambda row: (-row[1], row[0]))
    if len(rows) > MAX_BARS:
        rest = rows[MAX_BARS - 1 :]
        rows = [*rows[: MAX_BARS - 1], (f"{len(rest)} others", sum(count for _, count in rest))]
    figure, axes = _figure(title, height_in=max(HEIGHT_IN, 1.2 + 0.22 * len(rows)))
    if not rows:
        return _empty(figure, axes)
    positions = range(len(rows))
    axes.barh(positions, [count for _, count in rows], color="#6c8ec0")
    axes.set_yticks(positions, [label for label, _ in rows])
    axes.invert_yaxis()
    _count_axis(axes.xaxis)
    axes.set_xlabel("slides")
    return _svg(figure)


def _figure(title: str, height_in: float = HEIGHT_IN) -> tuple[Figure, matplotlib.axes.Axes]:
    figure = Figure(figsize=(WIDTH_IN, height_in), layout="constrained")
    axes = figure.add_subplot()
    axes.set_title(title, fontweight="bold")
    return figure, axes


def _count_axis(axis: matplotlib.axis.Axis) -> None:
    axis.set_major_locator(MaxNLocator(nbins=5, integer=True, min_n_ticks=1))
    axis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{math.floor(v + 0.5):,}"))


def _empty(figure: Figure, axes: matplotlib.axes.Axes) -> str:
    axes.set_axis_off()
    axes.text(0.5, 0.5, "no data", ha="center", va="center", transform=axes.transAxes)
    return _svg(figure)


def _svg(figure: Figure) -> str:
    buffer = io.StringIO()
    figure.savefig(buffer, format="svg", metadata={"Date": None})
    text = buffer.getvalue()
    return text[text.index("<svg") :]
