"""Bar charts drawn on the server: geometry here, SVG in the console's `_charts.html` macro (autoescaped)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

ROW = 24  # pixels per bar
LABEL_WIDTH = 170
BAR_WIDTH = 360
TEXT_WIDTH = 130
MAX_LABEL = 24  # characters; a longer source name is cut with an ellipsis


@dataclass(frozen=True)
class Bar:
    """One bar: its label on the left, its length, and the figure written after it."""

    label: str
    text: str
    y: int
    width: float


@dataclass(frozen=True)
class BarChart:
    """Horizontal bars scaled to the largest value."""

    bars: tuple[Bar, ...]
    label_width: int = LABEL_WIDTH

    @property
    def width(self) -> int:
        return LABEL_WIDTH + BAR_WIDTH + TEXT_WIDTH

    @property
    def height(self) -> int:
        return max(len(self.bars), 1) * ROW


def bar_chart(items: Sequence[tuple[str, float | None, str]]) -> BarChart:
    """Bars for (label, value, text to print) items; a missing value draws no bar."""
    top = max((value or 0 for _, value, _ in items), default=0) or 1
    bars = tuple(
        Bar(_short(label), text, index * ROW, round((value or 0) / top * BAR_WIDTH, 1))
        for index, (label, value, text) in enumerate(items)
    )
    return BarChart(bars)


def _short(label: str) -> str:
    return label if len(label) <= MAX_LABEL else label[: MAX_LABEL - 1] + "…"
