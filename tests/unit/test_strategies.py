import pytest

from peer.algorithm import A, B, PhaseSchedule, available_strategies, make_strategy
from peer.algorithm.schedule import auto_switch_interval

AB = frozenset({A, B})


def test_all_five_strategies_are_registered():
    assert available_strategies() == ["fedsa", "ffa", "lora", "rolora", "tad"]


@pytest.mark.parametrize(
    "name, train, mixed",
    [
        ("lora", AB, AB),
        ("ffa", {B}, {B}),
        ("fedsa", AB, {A}),
    ],
)
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


def test_agreed_schedule_decides_the_same_length_whatever_order_proposals_arrive_in():
    from peer.algorithm.schedule import AgreedSchedule

    proposals = {"p0": 3, "p1": 7, "p2": 2}
    peers = {name: AgreedSchedule(2, gossip_rounds=2) for name in proposals}
    for name, schedule in peers.items():
        schedule.propose(proposals[name])
    # gossip in different orders: p0 hears p1 only via p2, p2 hears everyone late
    peers["p2"].merge(0, peers["p1"].proposal())
    peers["p0"].merge(0, peers["p2"].proposal())
    peers["p1"].merge(0, peers["p0"].proposal())
    for schedule in peers.values():
        schedule.decide(2)
        schedule.decide(2)  # idempotent
    assert {s.interval for s in peers.values()} == {7}
    phases = [[s.phase(r) for r in range(12)] for s in peers.values()]
    assert all(p == list("BBAAAAAAABBB") for p in phases)


def test_agreed_schedule_ignores_proposals_for_another_phase_and_round_trips():
    from peer.algorithm.schedule import AgreedSchedule

    s = AgreedSchedule(3, gossip_rounds=3)
    s.merge(5, 9)  # tagged with a decision this peer did not make
    s.decide(3)
    assert s.interval == 3 and s.phase(3) == "A" and s.phase(6) == "B"


def test_agreed_schedule_decides_only_after_the_gossip_window():
    from peer.algorithm.schedule import AgreedSchedule

    s = AgreedSchedule(2, gossip_rounds=5)
    s.propose(4)
    for r in range(12):
        s.decide(r)
    # boundaries at 2, 4 keep T=2 (window not over); 6 decides T=4
    assert [seg[:2] for seg in s.segments[:4]] == [(0, 2), (2, 2), (4, 2), (6, 4)]
    again = AgreedSchedule.from_state(s.to_state())
    assert [again.phase(r) for r in range(10)] == [s.phase(r) for r in range(10)]


@pytest.mark.parametrize("name", available_strategies())
def test_rounds_after_the_training_rounds_train_nothing_and_mix_as_the_strategy_does(name):
    usual = make_strategy(name, 2, train_head=True)
    consensus = make_strategy(name, 2, train_head=True, training_rounds=5)
    for r in range(10):
        plan, expected = consensus.plan(r), usual.plan(r)
        assert (plan.phase, plan.mix) == (expected.phase, expected.mix)
        assert plan.train == (expected.train if r < 5 else frozenset())
        assert consensus.is_consensus_round(r) == (r >= 5)
