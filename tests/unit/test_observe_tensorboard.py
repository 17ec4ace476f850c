"""The TensorBoard observer writes a round's scalars beside the round, and never makes it wait."""

import threading
import time

import pytest

from peer.daemon import observe
from peer.daemon.observe import TensorBoardWriter

pytest.importorskip("tensorboardX")

RECORD = {"round": 0, "train_loss": 0.5, "neighbours": ["peer-01"], "bytes_sent": 10, "seconds": 0.1}


def test_rounds_are_written_by_the_observers_thread_and_closing_writes_them_out(tmp_path):
    writer = TensorBoardWriter(tmp_path, "peer-00")
    empty = next((tmp_path / "peer-00").glob("events.out.tfevents.*")).stat().st_size
    for round_ in range(20):
        writer.round_done({**RECORD, "round": round_, "accuracy": 0.5})
    writer.close()
    assert not writer.thread.is_alive() and writer.dropped == 0
    assert next((tmp_path / "peer-00").glob("events.out.tfevents.*")).stat().st_size > empty + 20 * 4 * 20


def test_a_stuck_disk_drops_rounds_instead_of_blocking_them_and_does_not_hold_the_exit(tmp_path, monkeypatch):
    monkeypatch.setattr(observe, "TENSORBOARD_CLOSE_S", 0.2)
    writer = TensorBoardWriter(tmp_path, "peer-00")
    stuck = threading.Event()
    monkeypatch.setattr(writer, "_write", lambda record: stuck.wait(30))  # a write that never returns
    started = time.monotonic()
    for round_ in range(observe.TENSORBOARD_QUEUE_ROUNDS + 50):
        writer.round_done({**RECORD, "round": round_})
    assert time.monotonic() - started < 1.0  # the rounds went on
    assert 49 <= writer.dropped <= 50  # the queue held the rest (the thread holds the one it writes)
    started = time.monotonic()
    writer.close()
    assert time.monotonic() - started < 1.5  # closing gave up on the stuck writer
    stuck.set()
