"""Compressed gossip: the wire forms, their codec, and the difference form that keeps the sums exact."""

import pytest
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from peer.algorithm.compression import (
    INT8_BLOCK,
    INT8_SCALES,
    INT8_VALUES,
    WireDtype,
    compress,
    decompress,
    dequantize_int8,
    quantize_int8,
    round_trip,
)
from peer.algorithm.mixing import metropolis_hastings_matrix, mix
from peer.transport.codec import DecodeError, decode_factors, encode_factors, schema_of

A, B = "m.lora_A.weight", "m.lora_B.weight"
T = {A: torch.randn(4, 100, generator=torch.Generator().manual_seed(0)), B: torch.zeros(8, 4)}
SCHEMA = schema_of(T)
LOSSY = [WireDtype.BF16, WireDtype.FP16, WireDtype.INT8]


def test_int8_error_is_at_most_half_a_step_of_its_block_and_zero_stays_zero():
    g = torch.Generator().manual_seed(4)
    x = (torch.randn(3, 130, generator=g) * torch.logspace(-3, 2, 130)).reshape(-1)  # blocks of unlike magnitudes
    q, scales = quantize_int8(x)
    back = dequantize_int8(q, scales)
    step = scales.float().repeat_interleave(INT8_BLOCK)[: x.numel()]
    assert (back - x).abs().le(step / 2 + 1e-12).all()
    largest = torch.nn.functional.pad(x.abs(), (0, -x.numel() % INT8_BLOCK)).view(-1, INT8_BLOCK).amax(dim=1)
    assert (scales.float() * 127 >= largest).all()  # each bf16 scale rounded up: no block's largest clips
    assert torch.equal(round_trip({"z": torch.zeros(5, 7)}, WireDtype.INT8)["z"], torch.zeros(5, 7))
    assert torch.equal(round_trip({"x": -x}, WireDtype.INT8)["x"], -back)  # symmetric: -x travels as -Q(x)


def test_int8_packs_every_factor_into_two_tensors_in_the_order_of_their_names():
    tensors = {"b": torch.randn(3, 50), "a": torch.randn(2, 90), "c": torch.zeros(0)}
    wire = compress(tensors, WireDtype.INT8)
    assert set(wire) == {INT8_VALUES, INT8_SCALES} and wire[INT8_VALUES].shape == (330,)
    assert wire[INT8_SCALES].dtype == torch.bfloat16 and wire[INT8_SCALES].shape == (4,)  # 2 + 2 + 0 blocks
    back = decompress(wire, {name: tuple(t.shape) for name, t in tensors.items()})
    assert all(back[k].shape == t.shape and torch.allclose(back[k], t, atol=0.05) for k, t in tensors.items())
    with pytest.raises(ValueError, match="names and shapes"):
        decompress(wire)
    with pytest.raises(ValueError, match="330 values and 4 scales for factors of 280 values in 3 blocks"):
        decompress(wire, {"a": (2, 90), "b": (2, 50)})


def test_int8_blocks_never_span_two_factors():
    # a small bias beside a large weight keeps its own scale, so its own precision
    tensors = {"head.bias": torch.full((6,), 1e-3), "head.weight": torch.randn(2, 384)}
    back = round_trip(tensors, WireDtype.INT8)
    assert torch.allclose(back["head.bias"], tensors["head.bias"], rtol=1e-2)


@pytest.mark.parametrize(
    "wire, dtype, relative", [(WireDtype.BF16, torch.bfloat16, 2**-8), (WireDtype.FP16, torch.float16, 2**-11)]
)
def test_half_forms_round_to_the_nearest_of_their_type(wire, dtype, relative):
    # within half a spacing: relative to the value in the normal range, absolute among the subnormals
    # (fp16's start below 6.1e-5: unseeded normal draws put one there in 8 runs of 400)
    tiny = torch.finfo(dtype).tiny
    x = torch.cat(
        [torch.randn(1000, generator=torch.Generator().manual_seed(0)), torch.tensor([tiny / 3, -tiny / 7, 0.0])]
    )
    error = (round_trip({"x": x}, wire)["x"] - x).abs()
    normal = x.abs() >= tiny
    assert (error[normal] <= x.abs()[normal] * relative).all()
    assert (error[~normal] <= tiny * relative).all()


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
        assert set(loaded) == ({INT8_VALUES, INT8_SCALES} if wire == WireDtype.INT8 else set(T))
    assert all(torch.equal(st_load(encode_factors(T))[k], v) for k, v in T.items())


@pytest.mark.parametrize("wire, at_most", [(WireDtype.BF16, 0.51), (WireDtype.FP16, 0.51), (WireDtype.INT8, 0.255)])
def test_compressed_payloads_are_half_or_a_quarter_of_fp32(wire, at_most):
    big = {f"l{i}.lora_A.weight": torch.randn(8, 384) for i in range(12)}
    assert len(encode_factors(big, wire)) <= at_most * len(encode_factors(big))


def _int8_payload(**replace) -> bytes:
    wire = compress(T, WireDtype.INT8)
    wire.update(replace)
    return st_save({k: v for k, v in wire.items() if v is not None})


BF16 = torch.bfloat16


@pytest.mark.parametrize(
    "payload, reason",
    [
        (_int8_payload(**{INT8_SCALES: None}), "tensor-names"),  # int8 values without their scales
        (_int8_payload(**{A: T[A]}), "tensor-names"),  # a named factor beside the packed ones
        (st_save({A: T[A], INT8_SCALES: torch.ones(5, dtype=BF16)}), "tensor-names"),  # scales of nothing
        (_int8_payload(**{INT8_VALUES: torch.zeros(431, dtype=torch.int8)}), "tensor-shape"),  # one value short
        (_int8_payload(**{INT8_VALUES: torch.zeros(432)}), "tensor-dtype"),
        (_int8_payload(**{INT8_SCALES: torch.ones(4, dtype=BF16)}), "tensor-shape"),  # A's 4 blocks + B's 1
        (_int8_payload(**{INT8_SCALES: torch.ones(5)}), "tensor-dtype"),  # fp32 scales
        (_int8_payload(**{INT8_SCALES: torch.full((5,), float("nan"), dtype=BF16)}), "non-finite"),
        (_int8_payload(**{INT8_SCALES: torch.full((5,), 3e38, dtype=BF16)}), "non-finite"),  # 127 x 3e38 = inf
        (_int8_payload(**{INT8_SCALES: torch.full((5,), -1.0, dtype=BF16)}), "malformed-payload"),
        (st_save({A: T[A].to(torch.bfloat16).reshape(100, 4), B: T[B]}), "tensor-shape"),
        (st_save({A: T[A].to(torch.int32), B: T[B]}), "tensor-dtype"),
        (st_save({A: T[A].to(torch.bfloat16).fill_(float("inf")), B: T[B]}), "non-finite"),
    ],
)
def test_malformed_compressed_payloads_are_refused_with_a_reason(payload, reason):
    with pytest.raises(DecodeError) as info:
        decode_factors(payload, SCHEMA, set(T))
    assert info.value.reason == reason


def test_an_int8_message_is_read_as_the_announced_factors_only():
    only_a = encode_factors({A: T[A]}, WireDtype.INT8)
    assert torch.equal(decode_factors(only_a, SCHEMA, {A})[A], round_trip({A: T[A]}, WireDtype.INT8)[A])
    for names, reason in [(None, "tensor-names"), (set(T), "tensor-shape"), ({"x"}, "tensor-names")]:
        with pytest.raises(DecodeError) as info:
            decode_factors(only_a, SCHEMA, names)  # no names to read it as; more factors than it holds; unknown
        assert info.value.reason == reason
    counts = {A: ("int64", (4, 100))}
    with pytest.raises(DecodeError) as info:
        decode_factors(only_a, counts, {A})
    assert info.value.reason == "tensor-dtype"  # int8 stands only for float factors
    half = {A: ("float16", (4, 100))}
    too_big = encode_factors({A: torch.full((4, 100), 1e6)}, WireDtype.INT8)  # beyond fp16's range
    with pytest.raises(DecodeError) as info:
        decode_factors(too_big, half, {A})
    assert info.value.reason == "non-finite"


@pytest.mark.parametrize(
    "payload",
    [
        (10**9).to_bytes(8, "little") + b"{}",  # a header longer than the payload
        (2).to_bytes(8, "little") + b"[]",  # not an object
        (9).to_bytes(8, "little") + b'{"a": 1}',  # an entry that is no tensor entry
        (60).to_bytes(8, "little") + b'{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}}    ' + b"\0" * 8,
        (61).to_bytes(8, "little") + b'{"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}}     ' + b"\0" * 8,
        (59).to_bytes(8, "little") + b'{"a":{"dtype":"XX","shape":[2],"data_offsets":[0,8]}}     ' + b"\0" * 8,
        (77).to_bytes(8, "little") + b'{"a":{"dtype":"F32","shape":[0,1180591620717411303424],"data_offsets":[0,0]}}',
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
