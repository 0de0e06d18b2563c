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


WARN_FROM = 0.8  # a budget this far spent shows amber


def spend_bar(spent: float, budget: float, label: str) -> Markup:
    """Spend against a budget as a thin SVG bar: the server sizes it, so no script and no style
    attribute (the CSP allows neither); `label` says it in words for screen readers and tooltips."""
    share = spent / budget if budget > 0 else 1.0
    # A little spend still shows: a sliver, not an empty track that reads as nothing spent.
    width = 0.0 if spent <= 0 else min(100.0, max(share * 100, 1.5))
    level = "over" if share >= 1 else "warn" if share >= WARN_FROM else "ok"
    return Markup(
        f'<svg class="meter meter-{level}" viewBox="0 0 100 8" preserveAspectRatio="none" role="img" '
        f'aria-label="{escape(label)}" xmlns="http://www.w3.org/2000/svg"><title>{escape(label)}</title>'
        f'<rect class="meter-track" width="100" height="8"/>'
        f'<rect class="meter-fill" width="{width:.1f}" height="8"/></svg>'
    )
