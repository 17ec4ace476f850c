import contextlib
import json
import re

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import save as st_save

from peer.transport.codec import (
    DecodeError,
    decode_factors,
    encode_factors,
    schema_digest,
    schema_of,
    unfilled_bytearray,
)

T = {"m.lora_A.weight": torch.randn(2, 8), "m.lora_B.weight": torch.zeros(8, 2)}
SCHEMA = schema_of(T)


def test_round_trip_and_digest():
    back = decode_factors(encode_factors(T), SCHEMA, set(T))
    assert all(torch.equal(back[k], v) for k, v in T.items())
    assert schema_digest(SCHEMA) == schema_digest(schema_of({k: v.clone() for k, v in T.items()}))
    assert schema_digest(SCHEMA) != schema_digest(schema_of({"m.lora_A.weight": torch.randn(3, 8)}))


@pytest.mark.parametrize(
    "tensors, reason",
    [
        ({"m.lora_A.weight": torch.randn(3, 8)}, "tensor-shape"),
        ({"m.lora_A.weight": torch.randn(2, 8, dtype=torch.float64)}, "tensor-dtype"),
        ({"x.lora_A.weight": torch.randn(2, 8)}, "tensor-names"),
        ({"m.lora_A.weight": torch.full((2, 8), float("nan"))}, "non-finite"),
        ({"m.lora_A.weight": torch.full((2, 8), float("inf"))}, "non-finite"),
    ],
)
def test_bad_tensors_are_refused_with_a_reason(tensors, reason):
    with pytest.raises(DecodeError) as info:  # written by safetensors itself: a foreign sender
        decode_factors(st_save(tensors), SCHEMA)
    assert info.value.reason == reason


def test_missing_announced_tensor():
    with pytest.raises(DecodeError, match="missing"):
        decode_factors(encode_factors({"m.lora_A.weight": T["m.lora_A.weight"]}), SCHEMA, set(T))


@given(st.binary(max_size=512))
@settings(max_examples=300, deadline=None)
def test_arbitrary_bytes_never_crash_the_decoder(data):
    with contextlib.suppress(DecodeError):
        decode_factors(data, SCHEMA)


@given(st.integers(0, 200), st.binary(min_size=1, max_size=8))
@settings(max_examples=200, deadline=None)
def test_truncated_or_spliced_payloads_are_refused_or_valid(cut, junk):
    payload = encode_factors(T)
    damaged = payload[:cut] + junk
    try:
        out = decode_factors(damaged, SCHEMA)
    except DecodeError:
        return
    assert set(out) <= set(T)


MANY = {f"m{i}.lora_{f}.weight": torch.randn(2, 8) if f == "A" else torch.randn(8, 2) for i in range(5) for f in "AB"}


@pytest.mark.parametrize("bad", sorted(MANY))
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("wire", ["fp32", "bf16"])
def test_a_non_finite_value_in_any_tensor_of_a_run_is_refused_and_named(bad, value, wire):
    # encode_factors lays all factors end to end: the finite check runs over them as one span
    from peer.algorithm.compression import WireDtype

    tensors = {name: t.clone() for name, t in MANY.items()}
    tensors[bad][-1, -1] = value  # the last value of a tensor: the span's boundaries count
    with pytest.raises(DecodeError, match=re.escape(f"{bad} holds NaN or Inf")) as info:
        decode_factors(encode_factors(tensors, WireDtype(wire)), schema_of(MANY), set(MANY))
    assert info.value.reason == "non-finite"


def test_tensors_apart_or_of_two_dtypes_are_each_checked():
    # a foreign writer may interleave dtypes (safetensors sorts by dtype, then name): spans break there
    tensors = {"m0.lora_A.weight": torch.randn(2, 8).bfloat16(), "m0.lora_B.weight": torch.randn(8, 2)}
    tensors["m1.lora_A.weight"] = torch.randn(2, 8)
    tensors["m1.lora_B.weight"] = torch.full((8, 2), float("nan")).bfloat16()
    schema = schema_of({name: t.float() for name, t in tensors.items()})
    with pytest.raises(DecodeError, match=r"m1\.lora_B\.weight holds NaN"):
        decode_factors(st_save(tensors), schema)
    tensors["m1.lora_B.weight"] = torch.randn(8, 2).bfloat16()
    back = decode_factors(st_save(tensors), schema)
    assert all(torch.equal(back[name], t.float()) for name, t in tensors.items())


def test_a_message_is_the_file_safetensors_itself_writes_for_its_tensors():
    from safetensors.torch import load as st_load

    from peer.transport.codec import layout_json, safetensors_layout

    tensors = {"b.lora_B": torch.randn(4, 2), "a.lora_A": torch.randn(2, 4), "h": torch.zeros(3, dtype=torch.float64)}
    for _ in range(2):  # built, then kept: the same bytes
        payload = encode_factors(tensors)
        assert {k: v.tolist() for k, v in st_load(payload).items()} == {k: v.tolist() for k, v in tensors.items()}
    order, entries, end = safetensors_layout(tensors)
    assert layout_json(tensors) == (tuple(order), json.dumps(entries, separators=(",", ":"))[1:-1], end)


@pytest.mark.parametrize(
    "entry",
    [
        {"dtype": "F32", "shape": [2.0], "data_offsets": [0, 8]},
        {"dtype": "F32", "shape": [True, 2], "data_offsets": [0, 8]},
        {"dtype": "F32", "shape": [2], "data_offsets": [0.0, 8]},
        {"dtype": "F32", "shape": "2", "data_offsets": [0, 8]},
        {"dtype": "F32", "shape": [2], "data_offsets": [0, 8, 16]},
        ["F32", [2], [0, 8]],
    ],
)
def test_an_entry_whose_counts_are_not_json_integers_is_malformed(entry):
    header = json.dumps({"x.lora_A": entry}).encode()
    payload = len(header).to_bytes(8, "little") + header + bytes(8)
    with pytest.raises(DecodeError, match="malformed-payload"):
        decode_factors(payload, {"x.lora_A": ("float32", (2,))})


def test_an_unfilled_bytearray_is_a_writable_bytearray_of_its_size():
    for size in (0, 1, 4096, 5 << 20):
        buffer = unfilled_bytearray(size)
        assert type(buffer) is bytearray and len(buffer) == size
        written = bytes(range(256)) * (size // 256) + bytes(size % 256)
        buffer[:] = written
        assert buffer == written
