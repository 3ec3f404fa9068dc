"""Inline SVG charts: time-series polylines and horizontal bars. Output is markup; every label is escaped."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

Point = tuple[float, float | None]


@dataclass(frozen=True)
class Series:
    label: str
    css: str  # class name that sets the stroke colour
    points: Sequence[Point]  # (x = UNIX seconds, y); y None breaks the line


def nice_max(value: float) -> float:
    """The smallest 1/2/5 x 10^k at or above ``value`` (axis top)."""
    if value <= 0:
        return 1.0
    power = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 5, 10):
        if value <= step * power + 1e-12:
            return float(step * power)
    return float(10 * power)


def _clock(ts: float) -> str:
    return time.strftime("%H:%M:%S", time.gmtime(ts))


def _segments(points: Sequence[Point]) -> list[list[tuple[float, float]]]:
    runs: list[list[tuple[float, float]]] = [[]]
    for x, y in points:
        if y is None or not math.isfinite(y):
            if runs[-1]:
                runs.append([])
            continue
        runs[-1].append((x, y))
    return [r for r in runs if r]


def line_chart(series: Sequence[Series], *, title: str, unit: str, width: int = 640, height: int = 200,
               y_floor: float | None = None) -> str:
    """A line chart with a y axis from 0 to a round maximum, time labels at both ends and a legend.
    Each unbroken run of a series is one ``<polyline>``."""
    left, right, top, bottom = 48, 12, 28, 26
    plot_w, plot_h = width - left - right, height - top - bottom
    xs = [x for s in series for x, y in s.points if y is not None]
    ys = [y for s in series for _, y in s.points if y is not None and math.isfinite(y)]
    parts = [f'<svg class="chart" role="img" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
             f'xmlns="http://www.w3.org/2000/svg"><title>{escape(title)}</title>',
             f'<text class="chart-title" x="{left}" y="16">{escape(title)}</text>']
    if not xs:
        parts.append(f'<text class="empty" x="{left + plot_w / 2:.0f}" y="{top + plot_h / 2:.0f}" '
                     f'text-anchor="middle">no telemetry yet</text></svg>')
        return "".join(parts)
    x0, x1 = min(xs), max(xs)
    span = (x1 - x0) or 1.0
    y_top = nice_max(max(max(ys), y_floor or 0.0))

    def px(x: float) -> float:
        return left + (x - x0) / span * plot_w

    def py(y: float) -> float:
        return top + plot_h - max(0.0, min(y, y_top)) / y_top * plot_h

    for fraction in (0.0, 0.25, 0.5, 0.75, 1.0):
        gy = top + plot_h - fraction * plot_h
        parts.append(f'<line class="grid" x1="{left}" x2="{left + plot_w}" y1="{gy:.1f}" y2="{gy:.1f}"/>')
        parts.append(f'<text class="tick" x="{left - 6}" y="{gy + 4:.1f}" text-anchor="end">'
                     f'{y_top * fraction:g}</text>')
    parts.append(f'<text class="tick" x="{left - 6}" y="{top - 10}" text-anchor="end">{escape(unit)}</text>')
    parts.append(f'<text class="tick" x="{left}" y="{height - 8}">{_clock(x0)}</text>')
    parts.append(f'<text class="tick" x="{left + plot_w}" y="{height - 8}" text-anchor="end">{_clock(x1)} UTC</text>')
    legend_x = width - right
    for s in reversed(series):
        label = escape(s.label)
        legend_x -= 14 + 7 * len(s.label)
        parts.append(f'<line class="{s.css}" x1="{legend_x}" x2="{legend_x + 10}" y1="12" y2="12"/>'
                     f'<text class="legend" x="{legend_x + 13}" y="16">{label}</text>')
    for s in series:
        for run in _segments(s.points):
            if len(run) == 1:
                x, y = run[0]
                parts.append(f'<circle class="{s.css} dot" cx="{px(x):.1f}" cy="{py(y):.1f}" r="2.5"/>')
                continue
            points = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in run)
            parts.append(f'<polyline class="{s.css}" data-series="{escape(s.label)}" points="{points}"/>')
    parts.append("</svg>")
    return "".join(parts)


def bar(fractions: Sequence[tuple[float, str]], *, width: int = 160, height: int = 10, title: str = "") -> str:
    """A horizontal stacked bar: (fraction of the whole, css class) pieces from the left."""
    parts = [f'<svg class="bar" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
             f'xmlns="http://www.w3.org/2000/svg">']
    if title:
        parts.append(f"<title>{escape(title)}</title>")
    parts.append(f'<rect class="bar-bg" x="0" y="0" width="{width}" height="{height}" rx="3"/>')
    x = 0.0
    for fraction, css in fractions:
        w = max(0.0, min(1.0, fraction)) * width
        if w > 0:
            parts.append(f'<rect class="{css}" x="{x:.1f}" y="0" width="{w:.1f}" height="{height}"/>')
            x += w
    parts.append("</svg>")
    return "".join(parts)
