"""Robust mixing rules (no model): what a hostile neighbour can and cannot do to a peer's factors."""

import pytest
import torch

from peer.algorithm.mixing import mix
from peer.algorithm.robust import MixingRule, clipped_mix, trimmed_mean


def factors(seed: int, scale: float = 1.0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"l0.lora_A": torch.randn(4, 8, generator=g) * scale, "l1.lora_A": torch.randn(4, 8, generator=g) * scale}


def norm(t):
    return sum(float(v.pow(2).sum()) for v in t.values()) ** 0.5


def diff(x, y):
    return norm({k: x[k] - y[k] for k in x})


def test_clipped_mix_equals_plain_gossip_when_nothing_is_clipped():
    own, received = factors(0), {1: factors(1), 2: factors(2)}
    weights = {1: 0.25, 2: 0.25}
    mixed, info = clipped_mix(own, received, weights, radius=1e9)
    plain = mix(own, received, weights, 0.5)
    assert diff(mixed, plain) < 1e-5 and all(s == 1.0 for s in info["scales"].values())


def test_clipping_bounds_how_far_any_neighbour_moves_a_peer():
    own = factors(0)
    for attack in (1e2, 1e6):
        received = {1: factors(1), 2: factors(2), "evil": factors(3, scale=attack)}
        weights = {p: 0.25 for p in received}
        mixed, info = clipped_mix(own, received, weights, radius=3.0)
        # each neighbour moves own by at most weight x radius
        assert diff(mixed, own) <= sum(weights.values()) * 3.0 + 1e-4
        assert info["scales"]["evil"] < 1.0


def test_rule_radius_follows_the_honest_median_and_ignores_one_outlier():
    rule = MixingRule("clipped", clip_multiplier=2.0)
    own = factors(0)
    honest = {i: factors(i) for i in (1, 2, 3)}
    for _ in range(5):
        rule(mix, own, honest, {i: 0.2 for i in honest}, 0.4)
    radius_before = rule.last["radius"]
    attacked = {**honest, "evil": factors(9, scale=1e4)}
    out = rule(mix, own, attacked, {i: 0.2 for i in attacked}, 0.2)
    assert rule.last["clipped"] == ["evil"]
    assert rule.last["radius"] == pytest.approx(radius_before, rel=0.3)
    assert diff(out, own) < 0.8 * radius_before + 1e-6  # four neighbours x 0.2 x radius at most
    plain = mix(own, attacked, {i: 0.2 for i in attacked}, 0.2)
    assert diff(plain, own) > 100 * diff(out, own)


def test_trimmed_mean_drops_the_extremes_coordinate_by_coordinate():
    own = {"w": torch.tensor([1.0, 10.0])}
    received = {
        1: {"w": torch.tensor([2.0, 11.0])},
        2: {"w": torch.tensor([3.0, 12.0])},
        "evil": {"w": torch.tensor([1e9, -1e9])},
    }
    out = trimmed_mean(own, received, trim=1)
    assert torch.allclose(out["w"], torch.tensor([2.5, 10.5]))
    # too few values to outvote anyone: the peer keeps its own
    assert torch.equal(trimmed_mean(own, {"evil": received["evil"]}, trim=1)["w"], own["w"])
    everything = torch.stack([own["w"], *(r["w"] for r in received.values())])
    assert torch.allclose(trimmed_mean(own, received, trim=0)["w"], everything.mean(dim=0))


def test_average_rule_is_the_strategy_combine_and_bad_settings_are_refused():
    own, received = factors(0), {1: factors(1)}
    rule = MixingRule("average")
    assert diff(rule(mix, own, received, {1: 0.5}, 0.5), mix(own, received, {1: 0.5}, 0.5)) == 0
    with pytest.raises(ValueError, match="not one of"):
        MixingRule("median-of-means")
    with pytest.raises(ValueError, match="clip multiplier"):
        MixingRule("clipped", clip_multiplier=0)


def _honest_factor_norm(out) -> float:
    from safetensors.torch import load_file

    norms = []
    for folder in sorted((out / "peers").iterdir())[1:]:  # peer 0 is the faulty one
        tensors = load_file(str(folder / "adapter" / "adapter_model.safetensors"))
        norms.append(norm({k: v for k, v in tensors.items() if "lora_" in k}))
    return max(norms)


@pytest.mark.parametrize("rule", ["clipped", "trimmed-mean"])
def test_in_the_simulator_a_robust_rule_keeps_a_scaling_attacker_out(tmp_path, tiny_cfg, rule):
    """Peer 0 sends its factors x1000 every round; plain gossip lets that into every honest peer,
    the robust rules keep the honest peers' factors at the scale of honest training."""
    from peer.sim import simulate

    def attack(index, round_, factors):
        return {k: v * 1000 for k, v in factors.items()} if index == 0 else factors

    tiny_cfg.peers, tiny_cfg.topology, tiny_cfg.rounds, tiny_cfg.strategy = 5, "complete", 4, "lora"
    tiny_cfg.eval_samples = 16
    norms = {}
    for name in ("average", rule):
        tiny_cfg.mixing_rule = name
        simulate(tiny_cfg, out=tmp_path / name, progress=False, tamper=attack)
        norms[name] = _honest_factor_norm(tmp_path / name)
    tiny_cfg.mixing_rule = "average"
    simulate(tiny_cfg, out=tmp_path / "honest", progress=False)
    honest = _honest_factor_norm(tmp_path / "honest")
    assert norms["average"] > 50 * honest
    assert norms[rule] < 3 * honest
