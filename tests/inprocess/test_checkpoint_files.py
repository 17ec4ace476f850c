"""Crash-safe files: the checkpoint (one file) and the PEFT export (one folder).

A ``kill -9`` cannot be caught, so it is simulated by what it leaves behind (a temporary file or
folder made by hand, a backup without its target); a crash inside the process by an exception.
"""

import json

import pytest
import torch
from safetensors.torch import load_file

import peer.daemon.checkpoint as ckpt
from peer.daemon.checkpoint import (
    CHECKPOINT,
    TEMP_PREFIX,
    CheckpointError,
    load_checkpoint,
    remove_stale_temp_files,
    save_checkpoint,
    write_atomically,
)
from peer.training.adapters import AdapterModel, LoraSettings, _build_base, recover_interrupted_export

STATE = {
    "peer_id": "p0",
    "round": 7,
    "adapter": {"w.lora_A.weight": torch.arange(6.0).reshape(2, 3)},
    "last_trained": ["A"],
}


def temp_files(directory):
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


def test_a_checkpoint_reads_back_equal_to_the_state(tmp_path):
    path = save_checkpoint(tmp_path, STATE)
    assert path == tmp_path / CHECKPOINT
    back = load_checkpoint(tmp_path)
    assert {k: v for k, v in back.items() if k != "adapter"} == {k: v for k, v in STATE.items() if k != "adapter"}
    assert torch.equal(back["adapter"]["w.lora_A.weight"], STATE["adapter"]["w.lora_A.weight"])
    assert temp_files(tmp_path) == []


def test_no_checkpoint_is_none(tmp_path):
    assert load_checkpoint(tmp_path) is None
    assert load_checkpoint(tmp_path / "absent") is None


def test_temp_files_of_a_killed_writer_are_removed_at_load(tmp_path):
    save_checkpoint(tmp_path, STATE)
    (tmp_path / f"{TEMP_PREFIX}{CHECKPOINT}.k9x2").write_bytes(b"half a checkpoint")
    (tmp_path / ".checkpoint.old7f3").write_bytes(b"left by a version before write_atomically")
    (tmp_path / "notes.txt").write_text("not ours")
    assert load_checkpoint(tmp_path)["round"] == 7
    assert temp_files(tmp_path) == []
    assert (tmp_path / "notes.txt").exists()


def test_remove_stale_temp_files_reports_what_it_removed(tmp_path):
    stale = tmp_path / f"{TEMP_PREFIX}wal.jsonl.abc"
    stale.write_bytes(b"")
    assert remove_stale_temp_files(tmp_path) == [stale]
    assert remove_stale_temp_files(tmp_path / "absent") == []


def test_a_crash_inside_write_keeps_the_previous_file_and_leaves_no_temp(tmp_path):
    path = tmp_path / "wal.bin"
    write_atomically(path, lambda f: f.write(b"previous"))

    def crash_midway(f):
        f.write(b"half of the next")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomically(path, crash_midway)
    assert path.read_bytes() == b"previous"
    assert temp_files(tmp_path) == []


def test_a_crash_inside_save_checkpoint_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    save_checkpoint(tmp_path, STATE)

    real_write_atomically = ckpt.write_atomically

    class HalfWritten:  # half of the new file reaches the temporary file, then the disk is full
        def __init__(self, f):
            self.f = f

        def write(self, data):
            self.f.write(data[: len(data) // 2])
            raise OSError("disk full")

    def write_torn(path, write):
        return real_write_atomically(path, lambda f: write(HalfWritten(f)))

    monkeypatch.setattr(ckpt, "write_atomically", write_torn)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(tmp_path, STATE)
    monkeypatch.undo()
    assert load_checkpoint(tmp_path)["round"] == 7
    assert temp_files(tmp_path) == []


def test_an_unreadable_checkpoint_is_a_checkpoint_error(tmp_path):
    (tmp_path / CHECKPOINT).write_bytes(b"not torch")
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path)


# ------------------------------------------------------------------ the PEFT export


@pytest.fixture(scope="module")
def adapter():
    return AdapterModel("tiny-bert", 2, ["p"], LoraSettings(r=2, alpha=4), seed=5)["p"]


def exported_weights(directory):
    return load_file(str(directory / "adapter_model.safetensors"))


def assert_complete_export(directory, weights):
    assert json.loads((directory / "adapter_config.json").read_text())["r"] == 2
    assert json.loads((directory / "tadlora.json").read_text())["model"] == "tiny-bert"
    back = exported_weights(directory)
    assert back.keys() == weights.keys() and all(torch.equal(back[k], weights[k]) for k in weights)


def leftovers(parent):
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def current_export_weights(adapter):
    from peft import get_peft_model_state_dict

    state = get_peft_model_state_dict(adapter.owner.peft_model, adapter_name=adapter.name)
    return {k: v.detach().cpu() for k, v in state.items()}


def bump_factors(adapter, by):
    adapter.load_factors({k: v + by for k, v in adapter.factors().items()})


def test_a_failed_export_keeps_the_previous_one_loadable(tmp_path, adapter, monkeypatch):
    from peft import LoraConfig, PeftModel

    target = tmp_path / "adapter"
    adapter.save_pretrained(target)
    previous = exported_weights(target)
    bump_factors(adapter, 1.0)

    def crash(*args, **kwargs):  # the weights of the new export are written by now: midway
        raise OSError("disk full")

    monkeypatch.setattr(LoraConfig, "save_pretrained", crash)
    with pytest.raises(OSError, match="disk full"):
        adapter.save_pretrained(target)
    monkeypatch.undo()
    assert_complete_export(target, previous)
    assert leftovers(tmp_path) == []
    PeftModel.from_pretrained(_build_base("tiny-bert", 2, seed=5), str(target))  # PEFT still loads it


def test_a_failure_to_move_the_new_export_in_keeps_the_previous_one(tmp_path, adapter, monkeypatch):
    """The dangerous step: the new export is complete and the previous one must make room for it."""
    import peer.training.adapters as adapters

    target = tmp_path / "adapter"
    adapter.save_pretrained(target)
    previous = exported_weights(target)
    bump_factors(adapter, 1.0)
    real_replace = adapters.os.replace

    def refuse_the_new_export(src, dst):
        if str(dst) == str(target) and not str(src).endswith(".previous"):  # putting the backup back may pass
            raise OSError("rename refused")
        real_replace(src, dst)

    monkeypatch.setattr(adapters.os, "replace", refuse_the_new_export)
    with pytest.raises(OSError, match="rename refused"):
        adapter.save_pretrained(target)
    monkeypatch.undo()
    assert_complete_export(target, previous)
    assert leftovers(tmp_path) == []


def test_the_next_save_cleans_what_a_kill_left_and_writes_the_new_export(tmp_path, adapter):
    target = tmp_path / "adapter"
    adapter.save_pretrained(target)
    half = tmp_path / ".adapter.partial-k9x2"  # a kill -9 while writing the new export
    half.mkdir()
    (half / "adapter_model.safetensors").write_bytes(b"half")
    (tmp_path / ".adapter.previous").mkdir()  # and one after the new export was in place
    bump_factors(adapter, 2.0)
    adapter.save_pretrained(target)
    assert_complete_export(target, current_export_weights(adapter))
    assert leftovers(tmp_path) == []


def test_a_kill_between_the_two_renames_restores_the_previous_export(tmp_path, adapter):
    target = tmp_path / "adapter"
    adapter.save_pretrained(target)
    previous = exported_weights(target)
    target.rename(tmp_path / ".adapter.previous")  # the previous export moved aside, the new not yet in
    recover_interrupted_export(target)
    assert_complete_export(target, previous)
    assert leftovers(tmp_path) == []
