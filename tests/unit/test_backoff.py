from __future__ import annotations

import pytest

from lambdaloop.backoff import Backoff


def test_the_ceiling_doubles_from_the_base_up_to_the_cap() -> None:
    backoff = Backoff(0.05, 1.0)

    assert [backoff.ceiling(n) for n in range(7)] == [0.05, 0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    assert backoff.ceiling(10_000) == 1.0  # no overflow far past the cap


@pytest.mark.parametrize(("draw", "expected"), [(0.0, 0.0), (0.5, 0.2), (0.999, 0.3996)])
def test_full_jitter_waits_a_random_share_of_the_ceiling(draw: float, expected: float) -> None:
    backoff = Backoff(0.1, 10.0, random=lambda: draw)

    assert backoff.delay(2) == pytest.approx(expected)


@pytest.mark.parametrize(("draw", "expected"), [(0.0, 4.0), (0.5, 6.0), (1.0, 8.0)])
def test_a_floor_keeps_its_share_of_the_ceiling(draw: float, expected: float) -> None:
    backoff = Backoff(2.0, 900.0, floor=0.5, random=lambda: draw)

    assert backoff.delay(2) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("base", "cap", "floor"), [(-0.1, 1.0, 0.0), (2.0, 1.0, 0.0), (0.1, 1.0, 1.5), (0.1, 1.0, -1)]
)
def test_nonsensical_delays_are_refused(base: float, cap: float, floor: float) -> None:
    with pytest.raises(ValueError, match="must"):
        Backoff(base, cap, floor=floor)
