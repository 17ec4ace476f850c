import pytest

from peer.algorithm import A, B, PhaseSchedule, available_strategies, make_strategy
from peer.algorithm.schedule import auto_switch_interval

AB = frozenset({A, B})


def test_all_five_strategies_are_registered():
    assert available_strategies() == ["fedsa", "ffa", "lora", "rolora", "tad"]


@pytest.mark.parametrize("name, train, mixed", [
    ("lora", AB, AB),
    ("ffa", {B}, {B}),
    ("fedsa", AB, {A}),
])
def test_fixed_plans(name, train, mixed):
    strategy = make_strategy(name)
    for r in range(12):
        plan = strategy.plan(r)
        assert plan.train == frozenset(train) and plan.mix == frozenset(mixed)


def test_tad_alternates_every_T_rounds_starting_with_B_and_mixes_both():
    strategy = make_strategy("tad", 3)
    phases = [strategy.plan(r).phase for r in range(12)]
    assert phases == list("BBBAAABBBAAA")
    for r in range(12):
        plan = strategy.plan(r)
        assert plan.train == {plan.phase}
        assert plan.mix == AB


def test_rolora_defaults_to_T1_and_mixes_only_the_trained_factor():
    strategy = make_strategy("rolora")
    assert strategy.switch_interval == 1
    assert [strategy.plan(r).phase for r in range(4)] == ["B", "A", "B", "A"]
    for r in range(6):
        plan = strategy.plan(r)
        assert plan.mix == plan.train == {plan.phase}


def test_tad_default_interval_is_5():
    assert make_strategy("tad").switch_interval == 5


def test_schedule_switch_rounds():
    s = PhaseSchedule(4)
    assert [r for r in range(13) if s.is_switch(r)] == [4, 8, 12]
    with pytest.raises(ValueError):
        PhaseSchedule(0)
    with pytest.raises(ValueError):
        s.phase(-1)


def test_unknown_strategy_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown strategy 'nope'"):
        make_strategy("nope")


def test_auto_interval_grows_as_the_gap_shrinks_and_is_clipped():
    values = [auto_switch_interval(rho) for rho in (0.0, 0.5, 0.9, 0.99, 0.999, 1.0)]
    assert values == sorted(values)
    assert values[0] >= 1 and values[-1] == 20
    with pytest.raises(ValueError):
        auto_switch_interval(1.5)
