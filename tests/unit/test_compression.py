"""Compressed gossip: the wire forms, their codec, and the difference form that keeps the sums exact."""

import pytest
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from peer.algorithm.compression import (
    INT8_BLOCK,
    WireDtype,
    compress,
    dequantize_int8,
    quantize_int8,
    round_trip,
    scale_name,
)
from peer.algorithm.mixing import metropolis_hastings_matrix, mix
from peer.transport.codec import DecodeError, decode_factors, encode_factors, schema_of

A, B = "m.lora_A.weight", "m.lora_B.weight"
T = {A: torch.randn(4, 100, generator=torch.Generator().manual_seed(0)), B: torch.zeros(8, 4)}
SCHEMA = schema_of(T)
LOSSY = [WireDtype.BF16, WireDtype.FP16, WireDtype.INT8]


def test_int8_error_is_at_most_half_a_step_of_its_block_and_zero_stays_zero():
    x = torch.randn(3, 130) * torch.logspace(-3, 2, 130)  # blocks of very different magnitudes
    q, scales = quantize_int8(x)
    back = dequantize_int8(q, scales)
    step = torch.nn.functional.pad(scales.repeat_interleave(INT8_BLOCK), (0, 0))[: x.numel()].reshape(x.shape)
    assert (back - x).abs().le(step / 2 + 1e-12).all()
    assert torch.equal(round_trip({"z": torch.zeros(5, 7)}, WireDtype.INT8)["z"], torch.zeros(5, 7))
    assert torch.equal(round_trip({"x": -x}, WireDtype.INT8)["x"], -back)  # symmetric: -x travels as -Q(x)


@pytest.mark.parametrize("wire, relative", [(WireDtype.BF16, 2**-8), (WireDtype.FP16, 2**-11)])
def test_half_forms_round_to_the_nearest_of_their_type(wire, relative):
    x = torch.randn(1000)
    assert ((round_trip({"x": x}, wire)["x"] - x).abs() <= x.abs() * relative).all()


def test_fp16_clamps_instead_of_sending_infinity():
    assert torch.isfinite(compress({"x": torch.tensor([1e6, -1e6])}, WireDtype.FP16)["x"]).all()


@pytest.mark.parametrize("wire", list(WireDtype))
def test_the_receiver_decodes_bit_for_bit_what_the_sender_mixes_with(wire):
    decoded = decode_factors(encode_factors(T, wire), SCHEMA, set(T))
    expected = round_trip(T, wire)
    assert all(decoded[k].dtype == torch.float32 and torch.equal(decoded[k], expected[k]) for k in T)


def test_the_payload_is_a_safetensors_file_that_safetensors_loads():
    for wire in WireDtype:
        loaded = st_load(encode_factors(T, wire))
        assert set(loaded) >= set(T)
    assert all(torch.equal(st_load(encode_factors(T))[k], v) for k, v in T.items())


@pytest.mark.parametrize("wire, at_most", [(WireDtype.BF16, 0.52), (WireDtype.FP16, 0.52), (WireDtype.INT8, 0.30)])
def test_compressed_payloads_are_half_or_a_quarter_of_fp32(wire, at_most):
    big = {f"l{i}.lora_A.weight": torch.randn(8, 384) for i in range(12)}
    assert len(encode_factors(big, wire)) <= at_most * len(encode_factors(big))


def _int8_payload(**replace) -> bytes:
    wire = compress(T, WireDtype.INT8)
    wire.update(replace)
    return st_save({k: v for k, v in wire.items() if v is not None})


@pytest.mark.parametrize(
    "payload, reason",
    [
        (_int8_payload(**{scale_name(A): None}), "tensor-names"),  # an int8 tensor without its scales
        (st_save({A: T[A], scale_name(A): torch.ones(7)}), "tensor-names"),  # scales of a float tensor
        (_int8_payload(**{scale_name(A): torch.ones(3)}), "tensor-shape"),
        (_int8_payload(**{scale_name(A): torch.ones(7, dtype=torch.float64)}), "tensor-shape"),
        (_int8_payload(**{scale_name(A): torch.full((7,), float("nan"))}), "non-finite"),
        (st_save({A: T[A].to(torch.bfloat16).reshape(100, 4), B: T[B]}), "tensor-shape"),
        (st_save({A: T[A].to(torch.int32), B: T[B]}), "tensor-dtype"),
        (st_save({A: T[A].to(torch.bfloat16).fill_(float("inf")), B: T[B]}), "non-finite"),
    ],
)
def test_malformed_compressed_payloads_are_refused_with_a_reason(payload, reason):
    with pytest.raises(DecodeError) as info:
        decode_factors(payload, SCHEMA, set(T))
    assert info.value.reason == reason


@pytest.mark.parametrize(
    "payload",
    [
        (10**9).to_bytes(8, "little") + b"{}",  # a header longer than the payload
        (2).to_bytes(8, "little") + b"[]",  # not an object
        (9).to_bytes(8, "little") + b'{"a": 1}',  # an entry that is no tensor entry
        (60).to_bytes(8, "little") + b'{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}}    ' + b"\0" * 8,
        (61).to_bytes(8, "little") + b'{"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}}     ' + b"\0" * 8,
        (59).to_bytes(8, "little") + b'{"a":{"dtype":"XX","shape":[2],"data_offsets":[0,8]}}     ' + b"\0" * 8,
    ],
)
def test_a_malformed_container_is_refused_not_crashed_on(payload):
    with pytest.raises(DecodeError) as info:
        decode_factors(payload, SCHEMA)
    assert info.value.reason == "malformed-payload"


def test_a_writable_buffer_is_read_in_place():
    payload = bytearray(encode_factors(T))
    before = decode_factors(payload, SCHEMA)
    assert torch.equal(before[A], T[A])  # and a bytes payload (read-only) decodes the same
    assert torch.equal(decode_factors(bytes(payload), SCHEMA)[A], T[A])


def _network_sum(states) -> dict[str, float]:
    return {name: sum(float(s[name].double().sum()) for s in states) for name in states[0]}


def _gossip_round(states, wire, difference_form: bool):
    """One mixing round of 6 peers on a fixed graph, each neighbour's factors as the wire delivers them."""
    edges = [(0, 1), (1, 2), (2, 3), (3, 4), (4, 5), (0, 3), (1, 4)]
    w = metropolis_hastings_matrix(len(states), edges)
    sent = [round_trip(s, wire) for s in states]
    out = []
    for i, own in enumerate(states):
        nbs = [j for j in range(len(states)) if j != i and w[i, j] > 0]
        received = {j: sent[j] for j in nbs}
        weights = {j: float(w[i, j]) for j in nbs}
        out.append(mix(own, received, weights, float(w[i, i]), sent[i] if difference_form else None))
    return out


@pytest.mark.parametrize("wire", LOSSY)
def test_the_difference_form_keeps_the_network_sum_exactly_and_plain_quantized_gossip_does_not(wire):
    g = torch.Generator().manual_seed(1)
    start = [{A: torch.randn(4, 100, generator=g, dtype=torch.float64)} for _ in range(6)]
    exact, plain = start, start
    for _ in range(10):
        exact = _gossip_round(exact, wire, difference_form=True)
        plain = _gossip_round(plain, wire, difference_form=False)
    before, scale = _network_sum(start)[A], sum(float(s[A].abs().sum()) for s in start)
    assert abs(_network_sum(exact)[A] - before) <= 1e-12 * scale
    assert abs(_network_sum(plain)[A] - before) > 1e-7 * scale


def test_uncompressed_the_difference_form_is_plain_gossip():
    g = torch.Generator().manual_seed(2)
    states = [{A: torch.randn(4, 100, generator=g, dtype=torch.float64)} for _ in range(6)]
    plain = _gossip_round(states, WireDtype.FP32, difference_form=False)
    differences = _gossip_round(states, WireDtype.FP32, difference_form=True)
    assert all(torch.allclose(p[A], d[A], atol=1e-12) for p, d in zip(plain, differences, strict=True))


@pytest.mark.parametrize("wire", LOSSY)
def test_compressed_gossip_still_reaches_consensus_near_the_average(wire):
    g = torch.Generator().manual_seed(3)
    states = [{A: torch.randn(4, 100, generator=g)} for _ in range(6)]
    average = sum(s[A] for s in states) / 6
    for _ in range(60):
        states = _gossip_round(states, wire, difference_form=True)
    spread = max(float((s[A] - average).abs().max()) for s in states)
    assert spread < 0.05  # within a few quantization steps of the exact average (values ~N(0, 1))
