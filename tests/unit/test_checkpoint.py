"""The checkpoint file (``peer.daemon.checkpoint``) on its own: what is saved always loads.

Pins: a round trip returns equal values (tensors of several dtypes, on CPU); a checkpoint of an
earlier version (``torch.save``) is still read, with ``weights_only=True``; the durable order write →
fsync → rename → directory fsync; a failure at any step before the rename (or a ``kill -9`` that
leaves a half-written temporary file) keeps the previous checkpoint loadable and leaves no temporary
file; a truncated, empty or foreign file is a ``CheckpointError`` naming the file, never another
exception, as is a flipped byte anywhere in it; an old-format pickle that would run code is refused without running it.
"""

import os

import pytest
import torch

import peer.daemon.checkpoint as ckpt
from peer.daemon import state_file
from peer.daemon.checkpoint import (
    CHECKPOINT,
    TEMP_PREFIX,
    CheckpointError,
    UnloadableState,
    dump_state,
    load_checkpoint,
    load_state,
    loadable,
    save_checkpoint,
)

OLD = {"round": 3, "adapter": {"a": torch.ones(2, 2)}}
NEW = {"round": 4, "adapter": {"a": torch.zeros(2, 2)}}
RAN = []


def record_a_run():
    RAN.append("ran")


class RunsCode:  # unpickling it calls record_a_run
    def __reduce__(self):
        return (record_a_run, ())


def leftovers(directory):  # temporary files, or anything else beside the checkpoint
    return [p.name for p in directory.iterdir() if p.name != CHECKPOINT]


def test_what_is_saved_loads_back_equal_on_cpu(tmp_path):
    state = {
        "peer_id": "p0",
        "round": 7,
        "flags": [True, None],
        "pair": (1, 2.5),
        "ids": {"a", "b"},
        "f32": torch.randn(2, 3),
        "bf16": torch.randn(3).bfloat16(),
        "i64": torch.arange(4),
        "nested": {"x": {"y": torch.tensor([1.5])}},
    }
    save_checkpoint(tmp_path / "new" / "folder", state)  # the folder is made
    back = load_checkpoint(tmp_path / "new" / "folder")
    assert back.keys() == state.keys()
    for key in ("peer_id", "round", "flags", "pair", "ids"):
        assert back[key] == state[key]
    for key in ("f32", "bf16", "i64"):
        assert back[key].dtype == state[key].dtype and torch.equal(back[key], state[key])
        assert back[key].device == torch.device("cpu")
    assert torch.equal(back["nested"]["x"]["y"], state["nested"]["x"]["y"])


def test_it_is_read_without_torch_load(tmp_path, monkeypatch):
    calls, real = [], torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **kw: calls.append(kw) or real(*a, **kw))
    save_checkpoint(tmp_path, OLD)
    assert torch.equal(load_checkpoint(tmp_path)["adapter"]["a"], OLD["adapter"]["a"])
    assert calls == []


def test_a_checkpoint_of_an_earlier_version_is_read_on_cpu_with_weights_only(tmp_path, monkeypatch):
    torch.save(OLD, tmp_path / CHECKPOINT)  # what versions before the state file wrote
    calls, real = [], torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **kw: calls.append(kw) or real(*a, **kw))
    back = load_checkpoint(tmp_path)
    assert back["round"] == 3 and torch.equal(back["adapter"]["a"], OLD["adapter"]["a"])
    assert calls == [{"map_location": "cpu", "weights_only": True}]


def test_a_later_save_replaces_the_earlier_one(tmp_path):
    save_checkpoint(tmp_path, OLD)
    save_checkpoint(tmp_path, NEW)
    assert load_checkpoint(tmp_path)["round"] == 4 and leftovers(tmp_path) == []


def test_the_bytes_are_synced_before_the_rename_and_the_directory_after(tmp_path, monkeypatch):
    steps, real_fsync, real_replace = [], os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: steps.append("fsync") or real_fsync(fd))
    monkeypatch.setattr(os, "replace", lambda a, b: steps.append("rename") or real_replace(a, b))
    monkeypatch.setattr(ckpt, "fsync_directory", lambda d: steps.append(("dir", d)))
    save_checkpoint(tmp_path, OLD)
    assert steps == ["fsync", "rename", ("dir", tmp_path)]


@pytest.mark.parametrize("step", ["fsync", "replace"])
def test_a_crash_before_the_rename_keeps_the_previous_checkpoint(tmp_path, monkeypatch, step):
    save_checkpoint(tmp_path, OLD)

    def crash(*args):
        raise OSError(f"crashed at {step}")

    monkeypatch.setattr(os, step, crash)
    with pytest.raises(OSError, match=step):
        save_checkpoint(tmp_path, NEW)
    monkeypatch.undo()
    assert load_checkpoint(tmp_path)["round"] == 3 and leftovers(tmp_path) == []


def test_an_interrupt_while_writing_keeps_the_previous_checkpoint_and_no_temp_file(tmp_path, monkeypatch):
    save_checkpoint(tmp_path, OLD)

    def interrupted(fd):  # the temporary file is written whole, not yet renamed
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path, NEW)
    monkeypatch.undo()
    assert load_checkpoint(tmp_path)["round"] == 3 and leftovers(tmp_path) == []


def test_a_kill_mid_write_leaves_a_temp_file_that_the_next_load_ignores_and_removes(tmp_path):
    save_checkpoint(tmp_path, NEW)
    whole = (tmp_path / CHECKPOINT).read_bytes()
    save_checkpoint(tmp_path, OLD)
    (tmp_path / f"{TEMP_PREFIX}{CHECKPOINT}.k9").write_bytes(whole[: len(whole) // 2])
    assert load_checkpoint(tmp_path)["round"] == 3 and leftovers(tmp_path) == []


@pytest.mark.parametrize("cut", [0, 1, 30, "half", -22, -1])  # bytes kept, or dropped from the end
def test_a_truncated_checkpoint_is_a_checkpoint_error_naming_the_file(tmp_path, cut):
    save_checkpoint(tmp_path, OLD)
    whole = (tmp_path / CHECKPOINT).read_bytes()
    (tmp_path / CHECKPOINT).write_bytes(whole[: len(whole) // 2 if cut == "half" else cut])
    with pytest.raises(CheckpointError, match=r"(?s)cannot be read.*move it away") as caught:
        load_checkpoint(tmp_path)
    assert str(tmp_path / CHECKPOINT) in str(caught.value) and isinstance(caught.value, RuntimeError)


@pytest.mark.parametrize("content", [b"\x00" * 4096, b"not a checkpoint", b"PK\x05\x06" + b"\x00" * 18])
def test_a_foreign_file_is_a_checkpoint_error(tmp_path, content):
    (tmp_path / CHECKPOINT).write_bytes(content)
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path)


def test_a_pickle_that_would_run_code_is_refused_without_running_it(tmp_path):
    torch.save({"round": 1, "payload": RunsCode()}, tmp_path / CHECKPOINT)
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path)
    assert RAN == []


def test_a_state_that_could_not_be_loaded_is_refused_at_save_and_the_previous_one_kept(tmp_path):
    import numpy as np

    save_checkpoint(tmp_path, OLD)
    with pytest.raises(UnloadableState, match=r"state\['loss'\] is a numpy.float64"):
        save_checkpoint(tmp_path, {**NEW, "loss": np.float64(0.25)})
    assert load_checkpoint(tmp_path)["round"] == 3


def test_a_flipped_byte_in_tensor_data_is_a_checkpoint_error(tmp_path):
    save_checkpoint(tmp_path, {"a": torch.arange(6.0)})
    data = bytearray((tmp_path / CHECKPOINT).read_bytes())
    data[data.find(torch.arange(6.0).numpy().tobytes()) + 5] ^= 0xFF
    (tmp_path / CHECKPOINT).write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="digest"):
        load_checkpoint(tmp_path)


def test_a_changed_plain_value_is_a_checkpoint_error(tmp_path):
    save_checkpoint(tmp_path, {"round": 7, "a": torch.zeros(1)})
    data = (tmp_path / CHECKPOINT).read_bytes()
    altered = data.replace(b'round\\":7', b'round\\":8')  # the tree is JSON inside the JSON header
    assert altered != data
    (tmp_path / CHECKPOINT).write_bytes(altered)
    with pytest.raises(CheckpointError, match="digest"):
        load_checkpoint(tmp_path)


def test_the_protocols_enumerations_are_written_as_the_plain_values_they_stand_for():
    from peer.algorithm.factors import Block, Phase

    state = {"phase": Phase.AB, Block.A: [Block.HEAD, (Phase.B, 1)], "by_block": {Block.B: 2}, (Phase.A, "x"): {3}}
    data = dump_state(state)
    assert bytes(data) == bytes(state_file.dumps(loadable(state)))  # one walk, the checked copy's bytes
    back = load_state(data)
    assert back == {"phase": "AB", "A": ["H", ("B", 1)], "by_block": {"B": 2}, ("A", "x"): {3}}
    assert type(back["phase"]) is str and type(back["A"][0]) is str
