"""Chunk frames written and read by hand are peer.proto's Frame, byte for byte, both ways."""

import pytest

from peer.transport.framing import ChunkFrame, decode_frame, encode_frame, kind_of
from peer.transport.pb import peer_pb2 as pb

SIZES = [0, 1, 127, 128, 16383, 16384, (1 << 20) + 5]


@pytest.mark.parametrize("size", SIZES)
def test_a_chunk_written_by_hand_is_what_protobuf_writes(size):
    data = bytes(range(256)) * (size // 256) + bytes(size % 256)
    by_hand = encode_frame(ChunkFrame(memoryview(data)))
    assert by_hand == pb.Frame(chunk=pb.Chunk(data=data)).SerializeToString()
    assert pb.Frame.FromString(by_hand).chunk.data == data


@pytest.mark.parametrize("size", SIZES)
def test_a_chunk_protobuf_wrote_is_read_without_it(size):
    data = b"\x07" * size
    frame = decode_frame(pb.Frame(chunk=pb.Chunk(data=data)).SerializeToString())
    assert isinstance(frame, ChunkFrame) and bytes(frame.data) == data and kind_of(frame) == "chunk"


def test_other_frames_and_odd_encodings_go_to_protobuf():
    header = pb.Frame(header=pb.Header(run_id="r", round=3))
    assert decode_frame(header.SerializeToString()) == header
    assert kind_of(decode_frame(pb.Frame(commit=pb.Commit(round=2)).SerializeToString())) == "commit"
    # a chunk with an extra (unknown) field, and two chunks in one frame: protobuf's reading, not ours
    extra = b"\x12\x05\x0a\x01x\x10\x01"
    assert decode_frame(extra) == pb.Frame.FromString(extra)
    twice = b"\x12\x03\x0a\x01a\x12\x03\x0a\x01b"
    assert decode_frame(twice) == pb.Frame.FromString(twice)
    for broken in (b"\x12\xff", b"\x12\x05\x0a\x09abc"):
        with pytest.raises(Exception) as ours:
            decode_frame(broken)
        with pytest.raises(Exception) as theirs:
            pb.Frame.FromString(broken)
        assert type(ours.value) is type(theirs.value)
