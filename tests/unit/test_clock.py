"""The round clock (``peer.daemon.clock.AdaptiveDeadline``) on its own.

Pins what the module docstring promises: before anything is observed the deadline is the maximum;
afterwards it is ``clamp(max(factor × p90(recent settle times), stretch), minimum, maximum)``, where
only the last ``window`` settle times count; a round in which nothing counted doubles the allowance
(up to the maximum) and the first round in which a link counts drops that stretch again.
"""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from peer.daemon.clock import SETTLE_WINDOW_ROUNDS, STRETCH_FACTOR, AdaptiveDeadline, quantile


@pytest.mark.parametrize("minimum, maximum", [(0.0, 5.0), (-1.0, 5.0), (6.0, 5.0)])
def test_bounds_other_than_zero_below_minimum_at_most_maximum_are_refused(minimum, maximum):
    with pytest.raises(ValueError, match="minimum <= maximum"):
        AdaptiveDeadline(minimum, maximum)


def test_equal_bounds_are_allowed_and_fix_the_deadline():
    deadline = AdaptiveDeadline(3.0, 3.0)
    deadline.observe(100.0)
    assert deadline.current() == 3.0
    deadline.observe(0.001)
    assert deadline.current() == 3.0


def test_before_anything_is_observed_the_deadline_is_the_maximum_even_after_a_round_without_links():
    deadline = AdaptiveDeadline(2.0, 60.0)
    assert deadline.current() == 60.0
    deadline.nothing_counted()
    assert deadline.current() == 60.0
    assert deadline.stretch == 60.0  # capped at the maximum, not 2 × 60


def test_the_deadline_is_the_factor_times_the_ninetieth_percentile_of_settle_times():
    deadline = AdaptiveDeadline(1.0, 100.0)
    for seconds in range(1, 11):  # 1 .. 10 s: the p90 (linear interpolation) is 9.1 s
        deadline.observe(float(seconds))
    assert deadline.current() == pytest.approx(2.0 * 9.1)


def test_a_custom_factor_scales_the_learned_deadline():
    deadline = AdaptiveDeadline(1.0, 100.0, factor=3.0)
    deadline.observe(5.0)
    assert deadline.current() == pytest.approx(15.0)


def test_the_learned_deadline_is_clamped_to_the_minimum_and_the_maximum():
    fast, slow = AdaptiveDeadline(2.0, 60.0), AdaptiveDeadline(2.0, 60.0)
    fast.observe(0.1)  # 2 × 0.1 = 0.2 s, below the minimum
    slow.observe(45.0)  # 2 × 45 = 90 s, above the maximum
    assert fast.current() == 2.0 and slow.current() == 60.0


def test_faster_exchanges_shrink_the_deadline_and_slower_ones_grow_it_within_the_window():
    deadline = AdaptiveDeadline(1.0, 100.0, window=5)
    for _ in range(5):
        deadline.observe(10.0)
    assert deadline.current() == pytest.approx(20.0)
    for _ in range(5):  # the window now holds only the fast rounds
        deadline.observe(2.0)
    assert deadline.current() == pytest.approx(4.0)
    for _ in range(5):
        deadline.observe(30.0)
    assert deadline.current() == pytest.approx(60.0)


def test_one_slow_round_in_twenty_does_not_move_the_deadline():
    deadline = AdaptiveDeadline(1.0, 100.0)  # window 20: the p90 lies between the 18th and 19th
    for _ in range(19):
        deadline.observe(3.0)
    deadline.observe(40.0)
    assert deadline.current() == pytest.approx(6.0)


def test_reading_the_deadline_changes_nothing():
    deadline = AdaptiveDeadline(2.0, 60.0)
    deadline.observe(4.0)
    deadline.nothing_counted()
    assert [deadline.current() for _ in range(5)] == [16.0] * 5


def test_each_round_without_links_doubles_the_allowance_up_to_the_maximum():
    deadline = AdaptiveDeadline(2.0, 60.0)
    deadline.observe(0.5)  # learned: 2 × 0.5 = 1 s, clamped to 2 s
    seen = []
    for _ in range(7):
        deadline.nothing_counted()
        seen.append(deadline.current())
    assert STRETCH_FACTOR == 2.0
    assert seen == [4.0, 8.0, 16.0, 32.0, 60.0, 60.0, 60.0]


def test_the_first_round_in_which_a_link_counts_drops_the_stretch():
    deadline = AdaptiveDeadline(2.0, 60.0)
    deadline.observe(3.0)
    for _ in range(3):
        deadline.nothing_counted()
    assert deadline.current() == 48.0
    deadline.observe(3.0)
    assert deadline.stretch == 0.0 and deadline.current() == pytest.approx(6.0)


def test_a_stretch_starts_from_the_learned_deadline_when_that_is_larger():
    deadline = AdaptiveDeadline(2.0, 60.0)
    deadline.observe(10.0)  # learned 20 s
    deadline.nothing_counted()
    assert deadline.current() == 40.0


@given(st.lists(st.floats(0, 1e4), min_size=1, max_size=SETTLE_WINDOW_ROUNDS), st.floats(0, 1))
def test_the_quantile_is_numpys_default(values, q):
    assert quantile(values, q) == pytest.approx(float(np.quantile(values, q)), rel=1e-12, abs=1e-12)
