"""Small line charts of the last hour, drawn server-side as SVG coordinates (no script, no image files).

A chart is a polyline in a `width` x `height` box: x is time over the window, y the value over the largest
one seen (at least `floor`, so that a flat line near zero stays near the bottom instead of filling the box).
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

WIDTH: Final = 240
HEIGHT: Final = 48
#: one point per bucket of this many seconds
BUCKET_S: Final = 60


@dataclass(frozen=True, slots=True)
class Chart:
    #: "x,y x,y …" for an SVG polyline; empty when there is nothing to draw
    points: str
    #: the same points, each drawn as a dot too (a line of one point shows nothing)
    dots: tuple[tuple[float, float], ...]
    #: the value at the top of the box
    top: float
    samples: int
    width: int = WIDTH
    height: int = HEIGHT


def line(samples: Sequence[tuple[float, float]], start: float, end: float, floor: float = 1.0) -> Chart:
    """A chart of (unix time, value) samples between `start` and `end`; samples outside are left out."""
    inside = sorted((t, v) for t, v in samples if start <= t <= end)
    top = max([floor, *(v for _, v in inside)])
    span = max(end - start, 1e-9)
    dots = tuple(
        (round((t - start) / span * WIDTH, 1), round(HEIGHT - v / top * (HEIGHT - 2) - 1, 1)) for t, v in inside
    )
    return Chart(" ".join(f"{x:.1f},{y:.1f}" for x, y in dots), dots, top, len(inside))


def bucketed(
    samples: Sequence[tuple[float, float]], start: float, end: float, quantile: float
) -> list[tuple[float, float]]:
    """One (bucket middle, quantile of its values) per `BUCKET_S` bucket that has values."""
    buckets: dict[int, list[float]] = {}
    for t, v in samples:
        if start <= t <= end:
            buckets.setdefault(int((t - start) // BUCKET_S), []).append(v)
    return [(start + (b + 0.5) * BUCKET_S, _quantile(values, quantile)) for b, values in sorted(buckets.items())]


def _quantile(values: list[float], q: float) -> float:
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[min(98, max(0, round(q * 100) - 1))]
