"""Bar charts drawn on the server as SVG: no script, no chart library, nothing from a CDN."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from datetime import date

from markupsafe import Markup, escape

WIDTH, HEIGHT = 480, 210
LEFT, RIGHT, TOP, BOTTOM = 58, 8, 10, 26
MAX_X_LABELS = 6


def nice_step(top: float, ticks: int = 4) -> float:
    """A round step (1, 2, 2.5 or 5 times a power of ten) so that `ticks` steps reach `top`."""
    if top <= 0:
        return 1.0
    raw = top / ticks
    power = 10 ** math.floor(math.log10(raw))
    for factor in (1, 2, 2.5, 5, 10):
        if factor * power >= raw:
            return factor * power
    return 10 * power


def _label_every(n: int) -> int:
    return max(1, math.ceil(n / MAX_X_LABELS))


def bar_chart(
    points: Sequence[tuple[date, float]],
    title: str,
    fmt: Callable[[float], str],
    css_class: str = "",
) -> Markup:
    """An accessible SVG bar chart of one value per day; each bar has a tooltip with its figure."""
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    top = max((value for _, value in points), default=0.0)
    step = nice_step(top)
    ceiling = step * max(1, math.ceil(top / step)) if top > 0 else step * 4
    parts = [
        f'<svg class="chart {escape(css_class)}" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'aria-label="{escape(title)}" xmlns="http://www.w3.org/2000/svg">',
        f"<title>{escape(title)}</title>",
    ]
    for k in range(round(ceiling / step) + 1):
        tick = k * step
        y = TOP + plot_h - tick / ceiling * plot_h
        parts.append(f'<line class="grid" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y:.1f}" y2="{y:.1f}"/>')
        parts.append(
            f'<text class="axis" x="{LEFT - 8}" y="{y + 4:.1f}" text-anchor="end">{escape(fmt(tick))}</text>'
        )
    n = len(points)
    if n:
        slot = plot_w / n
        bar_w = max(1.0, min(slot * 0.7, 40.0))
        every = _label_every(n)
        for i, (day, value) in enumerate(points):
            x = LEFT + i * slot + (slot - bar_w) / 2
            h = value / ceiling * plot_h if ceiling else 0
            y = TOP + plot_h - h
            parts.append(
                f'<rect class="bar" x="{x:.1f}" y="{y:.1f}" width="{bar_w:.1f}" height="{h:.1f}">'
                f"<title>{day.isoformat()}: {escape(fmt(value))}</title></rect>"
            )
            if i % every == 0 or i == n - 1 and n <= MAX_X_LABELS:
                cx = LEFT + i * slot + slot / 2
                parts.append(
                    f'<text class="axis" x="{cx:.1f}" y="{HEIGHT - 8}" text-anchor="middle">'
                    f"{day.strftime('%b %d')}</text>"
                )
    parts.append(
        f'<line class="baseline" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{TOP + plot_h}" y2="{TOP + plot_h}"/>'
    )
    parts.append("</svg>")
    return Markup("".join(parts))
