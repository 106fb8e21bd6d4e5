"""The report's plots as small self-contained SVG, drawn here without a plotting library.

A plotting library's import and layout took two of the report job's four seconds for four
plain plots, a fixed cost on every run. Text stays text, so the page is searchable and the
browser test can measure every label. Counts get integer ticks, and byte axes read "1 MB",
never ``1e+06``. The same data gives the same bytes. Margins are sized from a wide
sans-serif's advance widths (DejaVu Sans, rounded up), so labels fit in any common font.
"""

from __future__ import annotations

import html
import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

WIDTH_PX, HEIGHT_PX = 460, 300
FONT_PX = 12
MAX_BARS = 25
_UNITS = ((1e12, "TB"), (1e9, "GB"), (1e6, "MB"), (1e3, "kB"))
_TICK_PX, _GAP_PX, _EDGE_PX = 4, 4, 8
_TITLE_PX = 34  # the title's band above the axes
_BOTTOM_PX = _EDGE_PX + 2 * FONT_PX + 3 * _GAP_PX + _TICK_PX  # x labels and title

# Advance widths in em, rounded up from DejaVu Sans (wider than Arial, Helvetica or Liberation Sans).
_EM = {
    **dict.fromkeys(" .,:;'|!/ijlIJ", 0.34),
    **dict.fromkeys("ft()[]r-", 0.42),
    **dict.fromkeys("csz", 0.56),
    **dict.fromkeys("kvxy_", 0.6),
    **dict.fromkeys("abdeghnopqu0123456789µS", 0.64),
    **dict.fromkeys("ABCEFKLPRTXYZ", 0.7),
    **dict.fromkeys("DGHNOQUV", 0.79),
    **dict.fromkeys("M=", 0.87),
}


def byte_label(value: float) -> str:
    """ "2 MB" for 2e6, "500 B" for 500: decimal units, at most three significant figures."""
    for scale, unit in _UNITS:
        if value >= scale:
            return f"{value / scale:.3g} {unit}"
    return f"{value:.3g} B"


def text_width_px(text: str) -> float:
    """An upper estimate of ``text``'s width in pixels at the plots' font size (1 em for a character not listed)."""
    return sum(_EM.get(char, 1.0) for char in text) * FONT_PX


@dataclass(frozen=True)
class Axis:
    """One axis: its data range, whether it is logarithmic, its ticks (value, label) and its title."""

    low: float
    high: float
    ticks: tuple[tuple[float, str], ...]
    title: str
    log: bool = False

    def fraction(self, value: float) -> float:
        """Where ``value`` lies along the axis, 0 at ``low`` and 1 at ``high``."""
        if self.log:
            return (math.log10(value) - math.log10(self.low)) / (math.log10(self.high) - math.log10(self.low))
        return (value - self.low) / (self.high - self.low)

    def widest_label_px(self) -> float:
        return max((text_width_px(label) for _, label in self.ticks), default=0.0)


@dataclass(frozen=True)
class Frame:
    """The axes' box in the figure, in pixels, and the axes it maps."""

    left: float
    top: float
    right: float
    bottom: float
    x: Axis
    y: Axis

    def x_px(self, value: float) -> float:
        return self.left + self.x.fraction(value) * (self.right - self.left)

    def y_px(self, value: float) -> float:
        return self.bottom - self.y.fraction(value) * (self.bottom - self.top)


def scatter_log(title: str, x_label: str, y_label: str, xs: Sequence[float], ys: Sequence[float]) -> str:
    """Bytes against bytes on log axes (zeros and negatives are left out), with the y = x line."""
    points = [(x, y) for x, y in zip(xs, ys, strict=True) if x > 0 and y > 0]
    if not points:
        return _empty(title)
    low = min(min(p) for p in points) / 2
    high = max(max(p) for p in points) * 2
    y_axis = Axis(low, high, _log_ticks(low, high, _axis_height_px(HEIGHT_PX), None), y_label, log=True)
    frame = _frame(lambda length: Axis(low, high, _log_ticks(low, high, length, text_width_px), x_label, log=True),
                   y_axis, HEIGHT_PX)  # fmt: skip
    x0, y0, x1, y1 = frame.x_px(low), frame.y_px(low), frame.x_px(high), frame.y_px(high)
    parts = [
        f'<line x1="{x0:.1f}" y1="{y0:.1f}" x2="{x1:.1f}" y2="{y1:.1f}" stroke="#bbbbbb" stroke-dasharray="4 3"/>',
        *(
            f'<circle cx="{frame.x_px(x):.1f}" cy="{frame.y_px(y):.1f}" r="2.8" fill="#8a3f8f" fill-opacity="0.7"/>'
            for x, y in points
        ),
        _legend(frame, "fetched = whole"),
    ]
    return _svg(title, HEIGHT_PX, [*parts, *_axes(frame)])


def histogram(title: str, x_label: str, values: Sequence[float], bins: int = 12) -> str:
    """Slides per bin of ``values``: equal-width bins, one bar when all values are equal."""
    if not values:
        return _empty(title)
    low, high = min(values), max(values)
    if high == low:
        half = max(abs(low) * 0.05, 0.5)
        low, high, bins = low - half, high + half, 1
    width = (high - low) / bins
    counts = [0] * bins
    for value in values:
        counts[min(int((value - low) / width), bins - 1)] += 1
    y_axis = _count_axis(max(counts), _axis_height_px(HEIGHT_PX), "slides", vertical=True)
    start, end = low - (high - low) / 20, high + (high - low) / 20  # the bars clear of the spine
    frame = _frame(lambda length: Axis(start, end, _linear_ticks(start, end, length, text_width_px), x_label),
                   y_axis, HEIGHT_PX)  # fmt: skip
    parts = [
        _rect(frame.x_px(low + k * width), frame.y_px(count), frame.x_px(low + (k + 1) * width), frame.y_px(0),
              "#c06c9b", edge="white")
        for k, count in enumerate(counts)
        if count
    ]  # fmt: skip
    return _svg(title, HEIGHT_PX, [*parts, *_axes(frame)])


def bars(title: str, labels: Sequence[str], counts: Sequence[int]) -> str:
    """Horizontal bars, one per label, largest first; beyond ``MAX_BARS`` the rest are summed."""
    rows = sorted(zip(labels, counts, strict=True), key=lambda row: (-row[1], row[0]))
    if len(rows) > MAX_BARS:
        rest = rows[MAX_BARS - 1 :]
        rows = [*rows[: MAX_BARS - 1], (f"{len(rest)} others", sum(count for _, count in rest))]
    if not rows:
        return _empty(title)
    height = max(HEIGHT_PX, _TITLE_PX + 22 * len(rows) + _BOTTOM_PX)
    # Row k fills k to k + 1 from the top, its label at k + 0.5; no axis title: the labels say it.
    y_axis = Axis(len(rows), 0, tuple((k + 0.5, label) for k, (label, _) in enumerate(rows)), "")
    top = max(count for _, count in rows)
    frame = _frame(lambda length: _count_axis(top, length, "slides", vertical=False), y_axis, height)
    parts = [
        _rect(frame.x_px(0), frame.y_px(k + 0.1), frame.x_px(count), frame.y_px(k + 0.9), "#6c8ec0")
        for k, (_, count) in enumerate(rows)
    ]
    return _svg(title, height, [*parts, *_axes(frame)])


def _nice_step(span: float, count: int, integer: bool = False) -> float:
    """The smallest of 1, 2, 2.5 and 5 times a power of ten that cuts ``span`` into at most ``count`` steps."""
    raw = span / max(count, 1)
    power = 10.0 ** math.floor(math.log10(raw))
    mantissas = (1.0, 2.0, 5.0, 10.0) if integer else (1.0, 2.0, 2.5, 5.0, 10.0)
    step = next(m * power for m in mantissas if raw <= m * power * (1 + 1e-9))
    return max(1.0, float(round(step))) if integer else step


def _decimals(step: float) -> int:
    """Decimals that tell ticks ``step`` apart: 0.25 needs two, 0.2 one, 5 none."""
    for decimals in range(0, 12):
        if abs(round(step, decimals) - step) <= step * 1e-6:
            return decimals
    return 12


def _linear_ticks(
    low: float, high: float, length_px: float, width: Callable[[str], float] | None, integer: bool = False
) -> tuple[tuple[float, str], ...]:
    """Round-numbered ticks within [low, high], as many as fit along ``length_px`` (labels ``width`` apart, or a
    line of text apart when ``width`` is None: a vertical axis)."""
    for count in range(6, 1, -1):
        step = _nice_step(high - low, count, integer)
        decimals = _decimals(step)
        ticks = tuple(
            (k * step, f"{k * step + 0.0:,.{decimals}f}")
            for k in range(math.ceil(low / step - 1e-9), math.floor(high / step + 1e-9) + 1)
        )
        if _fit(ticks, length_px / (high - low) * step, width):
            return ticks
    return ticks


def _log_ticks(
    low: float, high: float, length_px: float, width: Callable[[str], float] | None
) -> tuple[tuple[float, str], ...]:
    """Byte ticks at powers of ten within [low, high] (with 2 and 5 between when fewer than two decades lie
    there), thinned until their labels fit along ``length_px``."""
    decades = range(math.floor(math.log10(low)), math.ceil(math.log10(high)) + 1)
    mantissas = (1,) if sum(low <= 10**d <= high for d in decades) >= 2 else (1, 2, 5)
    values = [m * 10**d for d in decades for m in mantissas if low <= m * 10**d <= high]
    ticks: tuple[tuple[float, str], ...] = ()
    per_decade = length_px / (math.log10(high) - math.log10(low))
    for stride in range(1, len(values) + 1):
        ticks = tuple((v, byte_label(v)) for v in values[::stride])
        gap = min((math.log10(b[0]) - math.log10(a[0]) for a, b in itertools.pairwise(ticks)), default=1)
        if _fit(ticks, per_decade * gap, width):
            return ticks
    return ticks


def _fit(ticks: Sequence[tuple[float, str]], spacing_px: float, width: Callable[[str], float] | None) -> bool:
    """Whether tick labels ``spacing_px`` apart keep clear of each other."""
    if len(ticks) < 2:
        return True
    needed = FONT_PX * 1.6 if width is None else max(width(label) for _, label in ticks) + 3 * _GAP_PX
    return spacing_px >= needed


def _count_axis(top: int, length_px: float, title: str, vertical: bool) -> Axis:
    """An axis of slides from 0, integer ticks, ending on the tick at or above ``top``."""
    ticks = _linear_ticks(0, max(top, 1), length_px, None if vertical else text_width_px, integer=True)
    step = ticks[1][0] - ticks[0][0] if len(ticks) > 1 else 1.0
    high = math.ceil(max(top, 1) / step) * step
    if ticks[-1][0] < high:
        ticks = (*ticks, (high, f"{round(high):,}"))
    return Axis(0, high, ticks, title)


def _axis_height_px(height: float) -> float:
    return height - _TITLE_PX - _BOTTOM_PX


def _frame(x_of: Callable[[float], Axis], y: Axis, height: float) -> Frame:
    """The axes' box: room on the left for the y labels and title, below for the x labels and title, and at
    each end for half an x label. ``x_of`` gives the x axis for an axis length (its ticks thinned to fit)."""
    y_title = FONT_PX + _GAP_PX if y.title else 0
    y_side = _EDGE_PX + y_title + y.widest_label_px() + _GAP_PX + _TICK_PX
    left, right = y_side, float(WIDTH_PX - _EDGE_PX - 2 * FONT_PX)
    x = x_of(right - left)
    for _ in range(3):  # wide x labels shorten the axis, and its ticks are chosen again
        half = x.widest_label_px() / 2
        wanted = max(y_side, _EDGE_PX + half), min(WIDTH_PX - _EDGE_PX - 2 * FONT_PX, WIDTH_PX - _EDGE_PX - half)
        if wanted == (left, right):
            break
        left, right = wanted
        x = x_of(right - left)
    return Frame(left, _TITLE_PX, right, height - _BOTTOM_PX, x, y)


def _axes(frame: Frame) -> list[str]:
    """The left and bottom spines, their ticks and labels, and the axis titles."""
    left, top, right, bottom = frame.left, frame.top, frame.right, frame.bottom
    out = [f'<path d="M{left:.1f} {top:.1f}V{bottom:.1f}H{right:.1f}" fill="none" stroke="#333333"/>']
    for value, label in frame.x.ticks:
        x = frame.x_px(value)
        out.append(
            f'<g class="xtick"><line x1="{x:.1f}" y1="{bottom:.1f}" x2="{x:.1f}" y2="{bottom + _TICK_PX:.1f}" '
            f'stroke="#333333"/>{_text(x, bottom + _TICK_PX + _GAP_PX + FONT_PX, label, "middle")}</g>'
        )
    for value, label in frame.y.ticks:
        y = frame.y_px(value)
        out.append(
            f'<g class="ytick"><line x1="{left - _TICK_PX:.1f}" y1="{y:.1f}" x2="{left:.1f}" y2="{y:.1f}" '
            f'stroke="#333333"/>{_text(left - _TICK_PX - _GAP_PX, y + FONT_PX * 0.35, label, "end")}</g>'
        )
    out.append(_text((left + right) / 2, bottom + _TICK_PX + 2 * _GAP_PX + FONT_PX * 2, frame.x.title, "middle"))
    if frame.y.title:
        x, y = _EDGE_PX + FONT_PX * 0.8, (top + bottom) / 2
        out.append(
            f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="middle" transform="rotate(-90 {x:.1f} {y:.1f})">'
            f"{html.escape(frame.y.title)}</text>"
        )
    return out


def _legend(frame: Frame, label: str) -> str:
    x, y = frame.left + 10, frame.top + 10
    return (
        f'<line x1="{x:.1f}" y1="{y:.1f}" x2="{x + 22:.1f}" y2="{y:.1f}" stroke="#bbbbbb" stroke-dasharray="4 3"/>'
        + _text(x + 28, y + FONT_PX * 0.35, label, "start")
    )


def _rect(left: float, top: float, right: float, bottom: float, fill: str, edge: str | None = None) -> str:
    stroke = f' stroke="{edge}"' if edge else ""
    return (
        f'<rect x="{left:.1f}" y="{top:.1f}" width="{max(right - left, 0):.1f}" height="{max(bottom - top, 0):.1f}" '
        f'fill="{fill}"{stroke}/>'
    )


def _text(x: float, y: float, text: str, anchor: str) -> str:
    return f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}">{html.escape(text)}</text>'


def _empty(title: str) -> str:
    return _svg(title, HEIGHT_PX, [_text(WIDTH_PX / 2, HEIGHT_PX / 2, "no data", "middle")])


def _svg(title: str, height: float, parts: Sequence[str]) -> str:
    """The figure: its size, the title centred above, and ``parts``."""
    head = (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH_PX}" height="{height:.0f}" '
        f'viewBox="0 0 {WIDTH_PX} {height:.0f}" font-family="sans-serif" font-size="{FONT_PX}" role="img" '
        f'aria-label="{html.escape(title)}">'
    )
    heading = (
        f'<text x="{WIDTH_PX / 2:.1f}" y="{_EDGE_PX + FONT_PX:.1f}" text-anchor="middle" font-weight="bold">'
        f"{html.escape(title)}</text>"
    )
    return "\n".join([head, heading, *parts, "</svg>"]) + "\n"
