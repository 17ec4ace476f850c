import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from peer.algorithm import consensus_distance, metropolis_hastings_matrix, metropolis_hastings_weights, mix


@st.composite
def graphs(draw):
    n = draw(st.integers(1, 12))
    pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
    edges = draw(st.lists(st.sampled_from(pairs), unique=True)) if pairs else []
    return n, edges


@given(graphs())
@settings(max_examples=200, deadline=None)
def test_mh_matrix_is_symmetric_doubly_stochastic_and_nonnegative(graph):
    n, edges = graph
    w = metropolis_hastings_matrix(n, edges)
    assert np.allclose(w, w.T)
    assert np.allclose(w.sum(axis=1), 1.0)
    assert (w >= -1e-12).all()
    for i, j in edges:
        assert w[i, j] > 0


@given(graphs(), st.integers(0, 2**31 - 1))
@settings(max_examples=100, deadline=None)
def test_a_mixing_step_keeps_the_network_average(graph, seed):
    n, edges = graph
    rng = np.random.default_rng(seed)
    states = [{"x": rng.normal(size=(3, 4)), "y": rng.normal(size=5)} for _ in range(n)]
    w = metropolis_hastings_matrix(n, edges)
    mixed = [
        mix(
            states[i],
            {j: states[j] for j in range(n) if j != i and w[i, j] > 0},
            {j: w[i, j] for j in range(n)},
            w[i, i],
        )
        for i in range(n)
    ]
    for key in ("x", "y"):
        assert np.allclose(sum(s[key] for s in states), sum(m[key] for m in mixed))


def test_row_from_local_degrees_equals_the_matrix_row():
    edges = [(0, 1), (0, 2), (2, 3), (1, 2)]
    w = metropolis_hastings_matrix(4, edges)
    self_w, row = metropolis_hastings_weights(3, {0: 2, 1: 2, 3: 1})  # node 2: degree 3
    assert self_w == pytest.approx(w[2, 2])
    assert row == pytest.approx({0: w[2, 0], 1: w[2, 1], 3: w[2, 3]})


def test_one_mix_on_a_complete_graph_reaches_consensus():
    n = 6
    rng = np.random.default_rng(0)
    states = [{"a": rng.normal(size=(4, 4))} for _ in range(n)]
    w = metropolis_hastings_matrix(n, [(i, j) for i in range(n) for j in range(i + 1, n)])
    assert np.allclose(w, 1.0 / n)
    mixed = [
        mix(states[i], {j: states[j] for j in range(n) if j != i}, {j: w[i, j] for j in range(n)}, w[i, i])
        for i in range(n)
    ]
    assert consensus_distance(states) > 1.0
    assert consensus_distance(mixed) == pytest.approx(0.0, abs=1e-20)


def test_mix_refuses_mismatched_tensor_names():
    with pytest.raises(ValueError, match="do not match"):
        mix({"a": np.ones(2)}, {1: {"b": np.ones(2)}}, {1: 0.5}, 0.5)


@pytest.mark.parametrize("sent", [None, {"a": np.zeros(1, dtype=np.float32)}])
def test_mix_gives_the_same_bits_whatever_order_the_neighbours_arrived_in(sent):
    # in float32 1e8 + 1 is 1e8: a sum taken in another order gives another result
    values = {"p1": 1e8, "p2": 1.0, "p3": -1e8}
    results = set()
    for order in itertools.permutations(values):
        neighbours = {p: {"a": np.array([values[p]], dtype=np.float32)} for p in order}
        own = {"a": np.zeros(1, dtype=np.float32)}
        results.add(mix(own, neighbours, dict.fromkeys(values, np.float32(1)), np.float32(0), sent)["a"].item())
    assert len(results) == 1


def test_mix_works_on_torch_tensors_too():
    torch = pytest.importorskip("torch")
    out = mix({"a": torch.ones(2)}, {1: {"a": torch.zeros(2)}}, {1: 0.25}, 0.75)
    assert torch.allclose(out["a"], torch.full((2,), 0.75))


def test_mix_of_torch_tensors_gives_the_bits_of_the_arithmetic_tensor_by_tensor():
    torch = pytest.importorskip("torch")
    gen = torch.Generator().manual_seed(0)
    shapes = {"a.lora_A": (8, 16), "a.lora_B": (16, 8), "head/w": (3,)}
    own = {name: torch.randn(shape, generator=gen) for name, shape in shapes.items()}
    neighbours = {p: {name: torch.randn(shape, generator=gen) for name, shape in shapes.items()} for p in ("x", "y")}
    weights = {"x": 0.2, "y": 0.3}
    mixed = mix(own, neighbours, weights, 0.5)
    for name, value in own.items():
        expected = value * 0.5 + neighbours["x"][name] * 0.2 + neighbours["y"][name] * 0.3
        assert torch.equal(mixed[name], expected), name
        assert mixed[name].data_ptr() != value.data_ptr()  # a new tensor: the own one stays as it was


def test_mix_of_nothing_is_nothing():
    assert mix({}, {}, {}, 1.0) == {}
