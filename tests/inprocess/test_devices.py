"""Received factors meet own factors that live on another device (CUDA in the daemon).

Without a GPU, torch's ``meta`` device stands in for "another device": arithmetic on meta tensors
works and yields meta tensors, and mixing a meta tensor with a CPU one fails exactly as CUDA with
CPU does. Meta tensors have no values, so what needs values (the clipped rule's norms, value
checks) is covered by recording devices instead, and by the same tests on CUDA where there is one.
"""

import numpy as np
import pytest
import torch

from peer.algorithm import robust
from peer.algorithm.mixing import mix, to_like
from peer.algorithm.robust import MixingRule, clipped_mix, trimmed_mean
from peer.algorithm.strategies import available_strategies, make_strategy
from peer.core.local_peer import LocalPeer
from peer.training.adapters import AdapterModel, LoraSettings
from peer.transport.codec import DecodeError, decode_factors, encode_factors, schema_of

OTHER_DEVICES = [
    "meta",
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")),
]
cuda_only = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def factors(seed: int, scale: float = 1.0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "l0.lora_A.weight": torch.randn(4, 8, generator=g) * scale,
        "l0.lora_B.weight": torch.randn(8, 4, generator=g) * scale,
    }


def on(tensors: dict[str, torch.Tensor], device) -> dict[str, torch.Tensor]:
    return {name: t.to(device) for name, t in tensors.items()}


def assert_on(tensors: dict[str, torch.Tensor], device, like: dict[str, torch.Tensor]) -> None:
    for name, t in tensors.items():
        assert t.device.type == torch.device(device).type, name
        assert t.shape == like[name].shape and t.dtype == like[name].dtype, name


def own_and_received(device):
    """Own factors on ``device``, three neighbours' on CPU (as decoded from the wire)."""
    return on(factors(0), device), {n: factors(n) for n in (1, 2, 3)}


WEIGHTS = {1: 0.2, 2: 0.2, 3: 0.2}


def test_meta_reaches_the_bug_mixing_meta_with_cpu_raises():
    """Without ``to_like``, a meta own tensor meets a CPU received one and torch refuses: the same
    failure as CUDA meeting CPU, so the tests below would catch the bug."""
    own, received = own_and_received("meta")
    name = "l0.lora_A.weight"
    with pytest.raises(RuntimeError, match="device"):
        _ = own[name] * 0.4 + received[1][name] * 0.2


def test_to_like_moves_device_and_dtype_and_passes_the_rest_through():
    like = torch.zeros(2, device="meta", dtype=torch.float16)
    moved = to_like(torch.ones(2), like)
    assert moved.device.type == "meta" and moved.dtype == torch.float16
    same = torch.ones(2)
    assert to_like(same, torch.zeros(2)) is same  # already in place: no copy
    array = np.ones(2)
    assert to_like(array, np.zeros(2)) is array  # mixing.py also mixes numpy arrays
    assert to_like(array, like) is array


@pytest.mark.parametrize("device", OTHER_DEVICES)
def test_average_mix_lands_on_the_own_device(device):
    own, received = own_and_received(device)
    assert_on(mix(own, received, WEIGHTS, 0.4), device, own)


@pytest.mark.parametrize("name", available_strategies())
@pytest.mark.parametrize("device", OTHER_DEVICES)
def test_every_strategy_combine_lands_on_the_own_device(name, device):
    own, received = own_and_received(device)
    assert_on(make_strategy(name).combine(own, received, WEIGHTS, 0.4), device, own)


@pytest.mark.parametrize("device", OTHER_DEVICES)
def test_trimmed_mean_lands_on_the_own_device(device):
    own, received = own_and_received(device)
    assert_on(trimmed_mean(own, received, trim=1), device, own)
    rule = MixingRule("trimmed-mean", trim=1)
    assert_on(rule(mix, own, received, WEIGHTS, 0.4), device, own)


@pytest.fixture
def norms_without_values(monkeypatch):
    """Meta tensors have no values to take a norm of: stand in for ``robust._norm`` with a fixed
    norm, and record the device of every deviation it sees (they must be on the own device)."""
    seen = []

    def fake_norm(tensors):
        seen.extend(t.device.type for t in tensors.values())
        return 1.0 + len(seen)  # distinct norms, so that the radius clips some neighbours

    monkeypatch.setattr(robust, "_norm", fake_norm)
    return seen


def test_clipped_mix_lands_on_the_own_device(norms_without_values):
    own, received = own_and_received("meta")
    mixed, info = clipped_mix(own, received, WEIGHTS, radius=4.0)
    assert_on(mixed, "meta", own)
    assert set(norms_without_values) == {"meta"} and min(info["scales"].values()) < 1.0


def test_clipped_rule_lands_on_the_own_device(norms_without_values):
    own, received = own_and_received("meta")
    rule = MixingRule("clipped")
    for _ in range(2):  # the second call also uses the remembered norms
        assert_on(rule(mix, own, received, WEIGHTS, 0.4), "meta", own)
    assert set(norms_without_values) == {"meta"}


@cuda_only
@pytest.mark.parametrize("rule", ["average", "clipped", "trimmed-mean"])
def test_every_rule_on_cuda_equals_the_cpu_result(rule):
    own, received = own_and_received("cpu")
    expected = MixingRule(rule)(mix, own, received, WEIGHTS, 0.4)
    got = MixingRule(rule)(mix, on(own, "cuda"), received, WEIGHTS, 0.4)
    assert_on(got, "cuda", own)
    assert all(torch.allclose(got[k].cpu(), expected[k], atol=1e-6) for k in expected)


@pytest.mark.parametrize("device", OTHER_DEVICES)
def test_decode_factors_returns_tensors_on_the_asked_device(device):
    sent = factors(0)
    schema = schema_of(sent)
    back = decode_factors(encode_factors(sent), schema, set(sent), device=device)
    assert_on(back, device, sent)
    assert_on(decode_factors(encode_factors(sent), schema), "cpu", sent)  # no device: CPU as before


def test_decode_factors_still_validates_when_a_device_is_asked():
    bad = {"l0.lora_A.weight": torch.full((4, 8), float("nan"))}
    with pytest.raises(DecodeError) as info:
        decode_factors(encode_factors(bad), schema_of(factors(0)), device="meta")
    assert info.value.reason == "non-finite"


@pytest.fixture(scope="module")
def meta_adapter():
    """A tiny model whose parameters live on the stand-in device."""
    return AdapterModel("tiny-bert", 2, ["p"], LoraSettings(r=2, alpha=4), seed=3, device="meta")["p"]


def test_a_cpu_state_loads_into_an_adapter_on_another_device(meta_adapter):
    """A checkpoint is read with ``map_location="cpu"``: its state must load into the adapter
    wherever the adapter lives, and leave the parameters there."""
    cpu_state = {k: torch.zeros(v.shape, dtype=v.dtype) for k, v in meta_adapter.state().items()}
    meta_adapter.load_state(cpu_state)
    assert {p.device.type for p in meta_adapter.lora_params.values()} == {"meta"}
    assert {p.device.type for p in meta_adapter.head_params.values()} == {"meta"}


def test_a_peer_mixes_cpu_factors_into_an_adapter_on_another_device(meta_adapter):
    """The daemon's first mix with a neighbour: own factors on the adapter's device, received ones
    decoded to CPU."""
    peer = LocalPeer("p", meta_adapter, trainer=None, strategy=make_strategy("lora"), local_steps=1)
    own = peer.outgoing(0)
    received = {"n": {k: torch.zeros(v.shape, dtype=v.dtype) for k, v in own.items()}}
    peer.mix(0, received, {"n": 0.5}, 0.5)
    assert {p.device.type for p in meta_adapter.lora_params.values()} == {"meta"}
