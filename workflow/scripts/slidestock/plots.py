"""Small, dependency-free SVG plots for the report (deterministic: same data, same bytes)."""

from __future__ import annotations

import html
import math
from collections.abc import Sequence

WIDTH, HEIGHT = 420, 280
LEFT, RIGHT, TOP, BOTTOM = 64, 16, 28, 44
_FONT = 'font-family="sans-serif" font-size="11"'


def _frame(title: str, x_label: str, y_label: str, body: list[str]) -> str:
    x0, y0, x1, y1 = LEFT, HEIGHT - BOTTOM, WIDTH - RIGHT, TOP
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{html.escape(title)}">',
        f'<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>',
        f'<text x="{WIDTH / 2}" y="16" text-anchor="middle" {_FONT} font-weight="bold">{html.escape(title)}</text>',
        f'<line x1="{x0}" y1="{y0}" x2="{x1}" y2="{y0}" stroke="black"/>',
        f'<line x1="{x0}" y1="{y0}" x2="{x0}" y2="{y1}" stroke="black"/>',
        f'<text x="{(x0 + x1) / 2}" y="{HEIGHT - 8}" text-anchor="middle" {_FONT}>{html.escape(x_label)}</text>',
        f'<text x="14" y="{(y0 + y1) / 2}" text-anchor="middle" {_FONT} '
        f'transform="rotate(-90 14 {(y0 + y1) / 2})">{html.escape(y_label)}</text>',
        *body,
        "</svg>",
    ]
    return "\n".join(parts) + "\n"


def _scale(value: float, low: float, high: float, out_low: float, out_high: float) -> float:
    if high <= low:
        return (out_low + out_high) / 2
    return out_low + (value - low) / (high - low) * (out_high - out_low)


def _tick(value: float) -> str:
    return f"{value:.4g}"


def _axis_ticks(low: float, high: float, horizontal: bool, log: bool = False) -> list[str]:
    marks = []
    for i in range(5):
        value = low + (high - low) * i / 4
        label = _tick(10**value if log else value)
        if horizontal:
            x = _scale(value, low, high, LEFT, WIDTH - RIGHT)
            marks.append(f'<text x="{x:.1f}" y="{HEIGHT - BOTTOM + 14}" text-anchor="middle" {_FONT}>{label}</text>')
        else:
            y = _scale(value, low, high, HEIGHT - BOTTOM, TOP)
            marks.append(f'<text x="{LEFT - 4}" y="{y + 4:.1f}" text-anchor="end" {_FONT}>{label}</text>')
    return marks


def scatter_log(title: str, x_label: str, y_label: str, xs: Sequence[float], ys: Sequence[float]) -> str:
    """A log-log scatter plot (zeros and negatives are left out), with the y = x line."""
    points = [(math.log10(x), math.log10(y)) for x, y in zip(xs, ys, strict=True) if x > 0 and y > 0]
    if not points:
        return _frame(title, x_label, y_label, [_empty()])
    low = min(min(p) for p in points) - 0.2
    high = max(max(p) for p in points) + 0.2
    body = _axis_ticks(low, high, True, log=True) + _axis_ticks(low, high, False, log=True)
    body.append(
        f'<line x1="{LEFT}" y1="{HEIGHT - BOTTOM}" x2="{WIDTH - RIGHT}" y2="{TOP}" '
        'stroke="#bbb" stroke-dasharray="4 3"/>'
    )
    for x, y in points:
        cx = _scale(x, low, high, LEFT, WIDTH - RIGHT)
        cy = _scale(y, low, high, HEIGHT - BOTTOM, TOP)
        body.append(f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="3" fill="#8a3f8f" fill-opacity="0.7"/>')
    return _frame(title, x_label, y_label, body)


def histogram(title: str, x_label: str, values: Sequence[float], bins: int = 12) -> str:
    """A histogram of ``values`` in equal-width bins."""
    if not values:
        return _frame(title, x_label, "slides", [_empty()])
    low, high = min(values), max(values)
    if high == low:
        low, high = low - 0.5, high + 0.5
    counts = [0] * bins
    for value in values:
        counts[min(bins - 1, int((value - low) / (high - low) * bins))] += 1
    body = _axis_ticks(low, high, True) + _axis_ticks(0, max(counts), False)
    width = (WIDTH - RIGHT - LEFT) / bins
    for i, count in enumerate(counts):
        top = _scale(count, 0, max(counts), HEIGHT - BOTTOM, TOP)
        body.append(
            f'<rect x="{LEFT + i * width + 1:.1f}" y="{top:.1f}" width="{width - 2:.1f}" '
            f'height="{HEIGHT - BOTTOM - top:.1f}" fill="#c06c9b"/>'
        )
    return _frame(title, x_label, "slides", body)


def bars(title: str, labels: Sequence[str], counts: Sequence[int]) -> str:
    """Horizontal bars, one per label."""
    if not labels:
        return _frame(title, "slides", "", [_empty()])
    body = _axis_ticks(0, max(counts), True)
    step = (HEIGHT - BOTTOM - TOP) / len(labels)
    for i, (label, count) in enumerate(zip(labels, counts, strict=True)):
        y = TOP + i * step
        right = _scale(count, 0, max(counts), LEFT, WIDTH - RIGHT)
        body.append(
            f'<rect x="{LEFT}" y="{y + 2:.1f}" width="{right - LEFT:.1f}" '
            f'height="{max(step - 4, 1):.1f}" fill="#6c8ec0"/>'
        )
        body.append(f'<text x="{LEFT + 4}" y="{y + step / 2 + 4:.1f}" {_FONT}>{html.escape(label)} ({count})</text>')
    return _frame(title, "slides", "", body)


def _empty() -> str:
    return f'<text x="{WIDTH / 2}" y="{HEIGHT / 2}" text-anchor="middle" {_FONT}>no data</text>'
