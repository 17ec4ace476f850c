import numpy as np
import pytest

from peer.algorithm import make_topology
from peer.algorithm.schedule import auto_switch_interval


def test_complete_and_ring_edges():
    assert len(make_topology("complete", 5).edges(0)) == 10
    ring = make_topology("ring", 5).edges(3)
    assert ring == {(0, 1), (1, 2), (2, 3), (3, 4), (0, 4)}


def test_er_is_seeded_per_round_and_independent_of_query_order():
    t1, t2 = make_topology("er", 10, p=0.3, seed=4), make_topology("er", 10, p=0.3, seed=4)
    forward = [t1.edges(r) for r in range(20)]
    backward = [t2.edges(r) for r in reversed(range(20))][::-1]
    assert forward == backward
    assert forward[0] != forward[1]  # it does vary
    assert make_topology("er", 10, p=0.3, seed=5).edges(0) != forward[0]


def test_er_edge_frequency_matches_p():
    t = make_topology("er", 10, p=0.2, seed=1)
    counts = [len(t.edges(r)) for r in range(500)]
    assert np.mean(counts) / 45 == pytest.approx(0.2, abs=0.02)


def test_pairwise_encounters_form_a_matching():
    t = make_topology("pairwise", 9, p=0.5, seed=2)
    for r in range(50):
        nodes = [v for e in t.edges(r) for v in e]
        assert len(nodes) == len(set(nodes))


def test_contraction_orders_topologies_by_connectivity():
    assert make_topology("complete", 10).contraction() == pytest.approx(0.0, abs=1e-9)
    values = [make_topology("er", 10, p=p, seed=0).contraction() for p in (0.5, 0.1, 0.02)]
    assert values == sorted(values) and values[-1] < 1
    intervals = [auto_switch_interval(v) for v in values]
    assert intervals == sorted(intervals) and intervals[-1] > intervals[0]


def test_bad_topology_arguments():
    with pytest.raises(ValueError, match="unknown topology"):
        make_topology("star", 4)
    with pytest.raises(ValueError, match="edge probability"):
        make_topology("er", 4, p=1.5)
