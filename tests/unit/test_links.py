"""Which neighbours a peer attempts (``peer.daemon.links``) on its own.

Pins the seeded synthetic drops (``synthetic_link_up``: the same answer at both ends, all or nothing
at p = 1 and p = 0) and the back-off (``LinkBackoff``): periods 1, 1, 2, 4, 8 after 0 .. 4 failures in
a row, dormant after ``DORMANT_AFTER_FAILURES``, attempts aligned on the round number so that both
ends meet, a counted link or a Status answer (both ``outcome(counted=True)``) ending it at once, and
the README's bound: "A known peer that stops answering is attempted in at most 5 rounds (over its
first 16 rounds of absence, with back-off), then it is dormant".
"""

import pytest

from peer.daemon.links import (
    DORMANT_AFTER_FAILURES,
    MAX_BACKOFF_ROUNDS,
    SUSPECT_AFTER_FAILURES,
    LinkBackoff,
    synthetic_link_up,
)


def failed(times: int, peer: str = "x") -> LinkBackoff:
    backoff = LinkBackoff()
    for _ in range(times):
        backoff.outcome(peer, counted=False)
    return backoff


def test_a_synthetic_link_is_always_up_at_p_one_and_never_at_p_zero():
    rounds = range(50)
    assert all(synthetic_link_up(7, r, "a", "b", p) for r in rounds for p in (1.0, 1.5))
    assert not any(synthetic_link_up(7, r, "a", "b", p) for r in rounds for p in (0.0, -0.5))


def test_both_ends_draw_the_same_synthetic_link_and_the_draw_depends_on_seed_and_round():
    draws = [synthetic_link_up(3, r, "p0", "p1", 0.5) for r in range(200)]
    assert draws == [synthetic_link_up(3, r, "p1", "p0", 0.5) for r in range(200)]
    assert draws == [synthetic_link_up(3, r, "p0", "p1", 0.5) for r in range(200)]  # no hidden state
    assert draws != [synthetic_link_up(4, r, "p0", "p1", 0.5) for r in range(200)]
    assert 0 < sum(draws) < 200


def test_the_share_of_synthetic_links_kept_is_about_p():
    kept = sum(synthetic_link_up(0, r, "a", "b", 0.3) for r in range(2000))
    assert abs(kept / 2000 - 0.3) < 0.03


def test_an_unknown_or_healthy_neighbour_is_attempted_every_round():
    backoff = LinkBackoff()
    backoff.outcome("healthy", counted=True)
    assert all(backoff.attempt(p, r) for p in ("never-seen", "healthy") for r in range(20))


@pytest.mark.parametrize("failures, period", [(0, 1), (1, 1), (2, 2), (3, 4), (4, 8), (5, 16), (40, 16)])
def test_the_period_doubles_per_failure_from_the_second_and_is_capped(failures, period):
    assert SUSPECT_AFTER_FAILURES == 2 and MAX_BACKOFF_ROUNDS == 16
    assert failed(failures).period("x") == period


@pytest.mark.parametrize("failures", [2, 3, 4])
def test_a_suspect_neighbour_is_attempted_only_in_rounds_divisible_by_its_period(failures):
    backoff = failed(failures)
    period = 2 ** (failures - 1)
    assert [r for r in range(50) if backoff.attempt("x", r)] == list(range(0, 50, period))


def test_a_neighbour_that_fails_five_times_becomes_dormant_and_a_probe_answer_wakes_it():
    assert DORMANT_AFTER_FAILURES == 5
    backoff = failed(4)
    assert not backoff.dormant("x") and backoff.attempt("x", 8)
    backoff.outcome("x", counted=False)
    assert backoff.dormant("x")
    assert not any(backoff.attempt("x", r) for r in range(200))  # not even round 0, divisible by all
    backoff.outcome("x", counted=True)  # the Status probe answered
    assert not backoff.dormant("x") and all(backoff.attempt("x", r) for r in range(1, 10))


@pytest.mark.parametrize("failures", range(1, 9))
def test_a_success_at_any_level_resets_the_backoff(failures):
    backoff = failed(failures)
    backoff.outcome("x", counted=True)
    assert backoff.period("x") == 1 and not backoff.dormant("x") and "x" not in backoff.failures


def test_one_failing_neighbour_does_not_slow_the_others():
    backoff = failed(DORMANT_AFTER_FAILURES, peer="ghost")
    assert all(backoff.attempt("alive", r) for r in range(20))


@pytest.mark.parametrize("mine", range(5))
@pytest.mark.parametrize("theirs", range(5))
def test_both_ends_of_a_link_meet_in_every_round_divisible_by_the_larger_period(mine, theirs):
    a, b = failed(mine), failed(theirs)
    both = [r for r in range(64) if a.attempt("x", r) and b.attempt("x", r)]
    assert both == list(range(0, 64, max(a.period("x"), b.period("x"))))


@pytest.mark.parametrize("vanished_at", range(32))
def test_a_vanished_peer_is_attempted_in_at_most_five_of_its_first_sixteen_rounds_then_never(vanished_at):
    backoff, attempts = LinkBackoff(), []
    for r in range(vanished_at, vanished_at + 300):
        if backoff.attempt("ghost", r):
            attempts.append(r - vanished_at)  # rounds of absence, 0 = the first
            backoff.outcome("ghost", counted=False)
    assert len(attempts) == DORMANT_AFTER_FAILURES == 5
    assert attempts[:2] == [0, 1] and attempts[-1] < 16 and backoff.dormant("ghost")


def test_the_sixteen_round_bound_is_tight():
    # vanishing one round after a multiple of 8: attempts in absence rounds 0, 1, 3, 7 and 15
    backoff, attempts = LinkBackoff(), []
    for r in range(9, 60):
        if backoff.attempt("ghost", r):
            attempts.append(r - 9)
            backoff.outcome("ghost", counted=False)
    assert attempts == [0, 1, 3, 7, 15]
