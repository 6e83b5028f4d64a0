"""The bench's bound on bulk copies: what the CPU per megabyte of a run allows on the machine's cores."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.bench.report import bulk_bound


def test_bench_of_12_05_could_not_reach_90_percent_on_two_cores() -> None:
    # 1.78 cores busy for 90.6 MB/s against a 138.9 MB/s ceiling (bench/results.json of 2026-12-05 08:00)
    needed, best = bulk_bound(1.778, 90.6, 138.9, cores=2)
    assert needed == pytest.approx(2.45, abs=0.01)
    assert best == pytest.approx(0.73, abs=0.01)


@given(
    busy=st.floats(0.1, 8.0),
    mb_s=st.floats(1.0, 2000.0),
    ceiling=st.floats(1.0, 2000.0),
    cores=st.integers(1, 64),
    target=st.floats(0.1, 1.0),
)
def test_the_target_is_within_reach_exactly_when_the_cores_it_needs_are_there(
    busy: float, mb_s: float, ceiling: float, cores: int, target: float
) -> None:
    needed, best = bulk_bound(busy, mb_s, ceiling, cores, target)
    if abs(needed - cores) > 1e-9 * cores:  # away from the boundary, where rounding decides
        assert (needed <= cores) == (best >= target)
    # All cores copying at this cost: the throughput reached is the busy cores' throughput scaled up.
    assert best * ceiling == pytest.approx(mb_s * cores / busy)
