import numpy as np
import pytest

from peer.data.partition import label_skew_shares, partition


def _balanced(n, classes, seed=0):
    return np.random.default_rng(seed).permutation(np.arange(n) % classes)


def test_binary_skew_is_the_papers_3_3_4_for_ten_peers():
    shares = label_skew_shares(10, 2).tolist()
    assert shares.count([0.9, 0.1]) == 3 and shares.count([0.1, 0.9]) == 3 and shares.count([0.5, 0.5]) == 4


def test_three_class_skew_is_the_papers_mnli_split():
    shares = label_skew_shares(10, 3)
    dominant = shares.argmax(axis=1).tolist()
    assert [dominant.count(c) for c in range(3)] == [4, 3, 3]
    assert np.allclose(shares.max(axis=1), 0.9) and np.allclose(np.sort(shares, axis=1)[:, 0], 0.05)


@pytest.mark.parametrize("n_peers, classes", [(10, 2), (10, 3), (4, 2), (7, 6)])
def test_label_skew_draws_the_promised_proportions_disjointly(n_peers, classes):
    labels = _balanced(6000, classes)
    parts = partition(labels, n_peers, "label-skew", seed=3)
    shares = label_skew_shares(n_peers, classes)
    all_idx = np.concatenate(parts)
    assert len(all_idx) == len(set(all_idx.tolist()))
    assert len({len(p) for p in parts}) == 1
    for part, share in zip(parts, shares):
        observed = np.bincount(labels[part], minlength=classes) / len(part)
        assert np.allclose(observed, share, atol=0.01)


def test_iid_keeps_the_global_class_mix():
    labels = _balanced(3000, 3)
    for part in partition(labels, 5, "iid", seed=1):
        assert np.allclose(np.bincount(labels[part], minlength=3) / len(part), 1 / 3, atol=0.01)


def test_dirichlet_is_skewed_disjoint_and_seeded():
    labels = _balanced(5000, 2)
    parts = partition(labels, 8, "dirichlet", seed=2, alpha=0.1)
    again = partition(labels, 8, "dirichlet", seed=2, alpha=0.1)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again))
    all_idx = np.concatenate(parts)
    assert len(all_idx) == len(set(all_idx.tolist())) == len(labels)
    fractions = [labels[p].mean() for p in parts]
    assert max(fractions) - min(fractions) > 0.5  # alpha 0.1 is strongly skewed


def test_samples_per_peer_caps_the_shard():
    parts = partition(_balanced(1000, 2), 4, "label-skew", samples_per_peer=50)
    assert [len(p) for p in parts] == [50] * 4


def test_bad_partition_arguments():
    with pytest.raises(ValueError, match="unknown partition"):
        partition([0, 1], 2, "random")
    with pytest.raises(ValueError, match="not enough examples"):
        partition([0, 1], 5, "label-skew")
    with pytest.raises(ValueError, match="alpha"):
        partition([0, 1, 0, 1], 2, "dirichlet", alpha=0)
