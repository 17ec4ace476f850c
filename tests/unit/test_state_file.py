"""The state file (``peer.daemon.state_file``): what a checkpoint, a write-ahead record and a link's
record are written as.

Pins: every value a state may hold comes back as itself, tensors of every dtype on CPU, writable and
sharing nothing with one another; the file is plain safetensors to any safetensors reader; every
truncation, every flipped byte and every lie of a header is a ``StateFileError``, never another
exception and never a different value.
"""

import json
import math
import random
import struct

import pytest
import torch
from safetensors.torch import load as load_safetensors

from peer.daemon import state_file
from peer.daemon.state_file import DIGEST_KEY, TREE_KEY, StateFileError, dumps, loads

ALL_DTYPES = [torch.float64, torch.float32, torch.bfloat16, torch.float16, torch.int64, torch.int32]
ALL_DTYPES += [torch.int16, torch.int8, torch.uint8, torch.bool]


def tensor_of(dtype, *shape):
    return (torch.arange(math.prod(shape)) % 7 - 3).reshape(shape).to(dtype)


def a_state():
    base = torch.randn(4, 6)
    return {
        "round": 12,
        "loss": float("nan"),
        "inf": -math.inf,
        "zero": -0.0,
        "big": 2**70,
        "text": 'ü\x00"quoted"',
        "flags": [True, False, None],
        "pair": (1, (2.5, "x")),
        "ids": {"a", ("b", 1)},
        "raw": b"\x00\xff",
        "dtype": torch.bfloat16,
        "device": torch.device("cpu"),
        "by_round": {3: "int keys", (1, 2): "tuple keys", None: "none key"},
        "\x00tensor": "a key that looks like a tag",
        "looks_tagged": {"\x00tensor": 0},
        "empty": {"d": {}, "l": [], "t": (), "s": set()},
        "tensors": {str(d): tensor_of(d, 3, 5) for d in ALL_DTYPES},
        "scalar": torch.tensor(2.5),
        "no_elements": torch.empty(0, 3),
        "transposed": base.t(),  # not contiguous
        "view_a": base[:2],  # two views of one storage
        "view_b": base[2:],
        "with_grad": torch.ones(2, requires_grad=True),
    }


def assert_same(back, want):
    if isinstance(want, torch.Tensor):
        assert isinstance(back, torch.Tensor) and back.dtype == want.dtype and back.device.type == "cpu"
        assert back.shape == want.shape and torch.equal(back, want.detach())
    elif isinstance(want, float) and math.isnan(want):
        assert isinstance(back, float) and math.isnan(back)
    elif isinstance(want, dict):
        assert type(back) is dict and list(back) == list(want)
        for key in want:
            assert_same(back[key], want[key])
    elif isinstance(want, list | tuple):
        assert type(back) is type(want) and len(back) == len(want)
        for b, w in zip(back, want, strict=True):
            assert_same(b, w)
    else:
        assert type(back) is type(want) and back == want
        if isinstance(want, float):
            assert math.copysign(1, back) == math.copysign(1, want)


def test_every_value_comes_back_as_itself():
    state = a_state()
    assert_same(loads(dumps(state)), state)


def test_tensors_come_back_writable_and_apart():
    back = loads(bytes(dumps({"a": torch.zeros(3), "b": torch.zeros(3)})))
    back["a"] += 1
    assert back["a"].tolist() == [1.0, 1.0, 1.0] and back["b"].tolist() == [0.0, 0.0, 0.0]


def test_it_is_a_safetensors_file_with_the_tensors_by_index():
    tensors = [torch.randn(2, 3), tensor_of(torch.bfloat16, 4), tensor_of(torch.int8, 5)]
    plain = load_safetensors(bytes(dumps({"t": tensors})))
    assert sorted(plain) == ["0", "1", "2"]
    assert all(torch.equal(plain[str(i)], t) for i, t in enumerate(tensors))


def test_the_data_starts_aligned_and_each_tensor_on_its_width():
    data = dumps({"b": tensor_of(torch.int8, 3), "f": torch.randn(3), "d": tensor_of(torch.float64, 3)})
    (length,) = struct.unpack("<Q", data[:8])
    assert (8 + length) % 8 == 0
    header = json.loads(bytes(data[8 : 8 + length]))
    for name, entry in header.items():
        if name != "__metadata__":
            width = {"F64": 8, "F32": 4, "I8": 1}[entry["dtype"]]
            assert entry["data_offsets"][0] % width == 0


def test_a_state_of_no_tensors():
    assert loads(dumps({"round": 1})) == {"round": 1}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_tensors_of_a_gpu_come_back_on_cpu():
    back = loads(dumps({"a": torch.arange(4.0, device="cuda")}))
    assert back["a"].device.type == "cpu" and back["a"].tolist() == [0.0, 1.0, 2.0, 3.0]


def test_a_value_a_state_cannot_hold_is_refused_when_written():
    with pytest.raises(TypeError, match="object"):
        dumps({"x": object()})
    with pytest.raises(TypeError, match="complex"):
        dumps({"x": torch.zeros(2, dtype=torch.complex64)})


def test_every_truncation_is_a_state_file_error():
    data = bytes(dumps({"round": 3, "a": torch.randn(8), "b": [1, 2]}))
    for cut in range(len(data)):
        with pytest.raises(StateFileError):
            loads(data[:cut])


def test_every_flipped_byte_is_a_state_file_error():
    data = bytes(dumps({"round": 3, "phase": "A", "a": torch.randn(8), "n": tensor_of(torch.int32, 4)}))
    for at in range(len(data)):
        for flip in (0x01, 0x80):
            altered = bytearray(data)
            altered[at] ^= flip
            with pytest.raises(StateFileError):
                loads(altered)


def test_random_bytes_are_a_state_file_error():
    rng = random.Random(5)
    for _ in range(300):
        size = rng.randrange(0, 200)
        junk = bytes(rng.randrange(256) for _ in range(size))
        if rng.random() < 0.5 and size >= 9:  # a plausible length and an opening brace
            junk = struct.pack("<Q", rng.randrange(size)) + b"{" + junk[9:]
        with pytest.raises(StateFileError):
            loads(junk)


def signed(header: dict, data: bytes = b"") -> bytes:
    """A file with any header, its digest made to match: what only a deliberate forger writes."""
    metadata = header.setdefault("__metadata__", {})
    metadata[DIGEST_KEY] = state_file._NO_DIGEST
    text = json.dumps(header, separators=(",", ":")).encode()
    digest = state_file._digest(text, data)
    text = text.replace(state_file._digest_field(state_file._NO_DIGEST), state_file._digest_field(digest))
    return struct.pack("<Q", len(text)) + text + data


def entry(dtype, shape, begin, end):
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}


@pytest.mark.parametrize(
    ("tree", "tensors", "data", "complaint"),
    [
        (json.dumps({"a": {"\x00tensor": 0}}), {}, b"", "does not decode"),  # a tensor it does not hold
        (json.dumps({"\x00pairs": [[[1], 2]]}), {}, b"", "does not decode"),  # an unhashable key
        (json.dumps({"\x00what": 1}), {}, b"", "unknown tag"),
        (json.dumps({"\x00dtype": "Tensor"}), {}, b"", "not a torch dtype"),
        (json.dumps({"\x00device": "toaster"}), {}, b"", "does not decode"),
        (json.dumps({"\x00set": 1}), {}, b"", "does not decode"),
        ("[" * 100_000, {}, b"", "does not decode"),  # nesting beyond the recursion limit
        ("{}", {"0": entry("C64", [1], 0, 8)}, bytes(8), "dtype"),
        ("{}", {"0": entry("F32", [3], 0, 8)}, bytes(8), "does not fit"),
        ("{}", {"0": entry("F32", [4], 0, 16)}, bytes(8), "does not fit"),
        ("{}", {"0": entry("F32", [-1], 0, 0)}, b"", "are counts"),
        ("{}", {"0": entry("F32", [0, 2**70], 0, 0)}, b"", "are counts"),
        ("{}", {"0": entry("F32", [1] * 17, 0, 4)}, bytes(4), "are counts"),
        ("{}", {"0": {"dtype": "F32"}}, b"", "is not described"),
    ],
)
def test_a_forged_header_is_a_state_file_error(tree, tensors, data, complaint):
    with pytest.raises(StateFileError, match=complaint):
        loads(signed({"__metadata__": {TREE_KEY: tree}, **tensors}, data))


@pytest.mark.parametrize(
    ("head", "complaint"),
    [
        (struct.pack("<Q", 10**9) + b"{}", "beyond"),
        (struct.pack("<Q", 3) + b"{x}", "not JSON"),
        (struct.pack("<Q", 2) + b"[]", "not a JSON object"),
        (struct.pack("<Q", 2) + b"{}", "without a tadlora state"),
        (signed({"0": entry("F32", [1], 0, 4)}, bytes(4)), "without a tadlora state"),
        (struct.pack("<Q", 4) + b"\xff\xfe{}", "not JSON"),
    ],
)
def test_a_header_that_is_not_ours_is_a_state_file_error(head, complaint):
    with pytest.raises(StateFileError, match=complaint):
        loads(head)


def test_it_is_told_apart_from_a_torch_zip():
    import io

    zipped = io.BytesIO()
    torch.save({"a": 1}, zipped)
    assert state_file.is_state_file(dumps({"a": 1})) and not state_file.is_state_file(zipped.getvalue())


def test_changing_what_was_read_leaves_the_bytes_it_was_read_from_alone():
    data = dumps({"a": torch.zeros(3)})
    kept = bytes(data)
    loads(data)["a"] += 1  # an optimizer's moments, say, updated in place after a restart
    assert data == kept and loads(data)["a"].tolist() == [0.0, 0.0, 0.0]
