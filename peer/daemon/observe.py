"""What a running daemon reports besides rounds.jsonl: Prometheus metrics, TensorBoard events, JSON logs.

The daemon calls one ``Observer`` at a few points (a finished round, an exchange, a refusal, a
checkpoint); ``observers_for`` builds the ones the settings ask for:

- ``--metrics host:port``: a Prometheus endpoint (``prometheus-client``) at http://host:port/metrics.
  Metric names start with ``tadlora_``: ``round``, ``phase`` (0 = B, 1 = A, 2 = both), ``train_loss``,
  ``validation_accuracy``, ``validation_perplexity`` (causal LM), ``bytes_sent_total``,
  ``bytes_received_total``, ``exchange_seconds`` (histogram, one sample per link this peer opened),
  ``neighbours`` (links that counted in the last round), ``rejected_total{reason}``,
  ``checkpoint_seconds`` (histogram), ``round_seconds`` (histogram). Every series carries the labels
  ``peer`` and ``run``.
- ``--tensorboard DIR``: event files (``tensorboardX``) with loss, accuracy, neighbours, bytes and
  round time per round, under DIR/<peer-id>.
- ``--log-format json``: one JSON object per log line (``time``, ``level``, ``logger``, ``message``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import queue
import threading
import time
from pathlib import Path

from peer.algorithm.factors import Phase
from peer.errors import UsageError

log = logging.getLogger(__name__)

PHASE_CODE = {Phase.B: 0, Phase.A: 1, Phase.AB: 2}  # the phase gauge's values
# TensorBoard's event file is flushed (with an fsync) at this period and at the end, never by a round:
# an fsync per round on the event loop cost the round a disk flush, for metrics that need no
# durability. A live TensorBoard is at most this far behind.
TENSORBOARD_FLUSH_S = 5
# rounds handed to the TensorBoard thread and not written yet; beyond this (a stuck disk: tensorboardX
# then blocks its caller) a round's scalars are dropped, and counted, rather than waited for
TENSORBOARD_QUEUE_ROUNDS = 100
# how long closing waits for the rounds still queued to be written before it leaves them
TENSORBOARD_CLOSE_S = 2.0
_CLOSE = object()  # the last item of the TensorBoard thread's queue


class Observer:
    """No-op base: subclasses override what they report."""

    def round_done(self, record: dict) -> None: ...

    def exchange(self, peer_id: str, seconds: float, counted: bool) -> None: ...

    def rejected(self, reason: str) -> None: ...

    def checkpoint(self, seconds: float) -> None: ...

    def close(self) -> None: ...


class Observers(Observer):
    """Fans every call out to several observers."""

    def __init__(self, observers: list[Observer]) -> None:
        self.observers = observers

    def round_done(self, record):
        for o in self.observers:
            o.round_done(record)

    def exchange(self, peer_id, seconds, counted):
        for o in self.observers:
            o.exchange(peer_id, seconds, counted)

    def rejected(self, reason):
        for o in self.observers:
            o.rejected(reason)

    def checkpoint(self, seconds):
        for o in self.observers:
            o.checkpoint(seconds)

    def close(self):
        for o in self.observers:
            o.close()


class PrometheusMetrics(Observer):
    """A Prometheus endpoint of its own registry (several daemons may share a process in tests)."""

    def __init__(self, address: str, peer_id: str, run_id: str) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

        self.registry = registry = CollectorRegistry()
        labels = ["peer", "run"]
        self.values = (peer_id, run_id)

        def gauge(name, doc):
            return Gauge(f"tadlora_{name}", doc, labels, registry=registry).labels(*self.values)

        self.round = gauge("round", "rounds completed")
        self.phase = gauge("phase", "phase of the last round: 0 = B, 1 = A, 2 = both")
        self.loss = gauge("train_loss", "mean training loss of the last round")
        self.accuracy = gauge("validation_accuracy", "accuracy at the last evaluation")
        self.perplexity = gauge("validation_perplexity", "causal LM: perplexity of the right answers, last evaluation")
        self.neighbours = gauge("neighbours", "links that counted in the last round")
        self.sent = Counter("tadlora_bytes_sent", "factor bytes sent", labels, registry=registry).labels(*self.values)
        self.received = Counter("tadlora_bytes_received", "factor bytes received", labels, registry=registry).labels(
            *self.values
        )
        self.rejections = Counter(
            "tadlora_rejected", "messages refused, by reason", [*labels, "reason"], registry=registry
        )
        buckets = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
        self.exchange_seconds = Histogram(
            "tadlora_exchange_seconds",
            "duration of one factor swap this peer opened",
            [*labels, "outcome"],
            buckets=buckets,
            registry=registry,
        )
        self.checkpoint_seconds = Histogram(
            "tadlora_checkpoint_seconds", "time to write a checkpoint", labels, buckets=buckets, registry=registry
        ).labels(*self.values)
        self.round_seconds = Histogram(
            "tadlora_round_seconds",
            "wall time of a round (train + exchange + mix)",
            labels,
            buckets=(*buckets, 120, 300),
            registry=registry,
        ).labels(*self.values)
        host, port = address.rsplit(":", 1)
        self.server, self.thread = start_http_server(int(port), addr=host or "0.0.0.0", registry=registry)
        self.port = self.server.server_port

    def round_done(self, record):
        self.round.set(record["round"] + 1)
        self.phase.set(PHASE_CODE.get(record["phase"], -1))
        if not math.isnan(record["train_loss"]):  # a consensus round trains nothing
            self.loss.set(record["train_loss"])
        self.neighbours.set(len(record["neighbours"]))
        self.sent.inc(record["bytes_sent"])
        self.received.inc(record["bytes_received"])
        self.round_seconds.observe(record.get("seconds", 0.0))
        if "accuracy" in record:
            self.accuracy.set(record["accuracy"])
        if "perplexity" in record:
            self.perplexity.set(record["perplexity"])

    def exchange(self, peer_id, seconds, counted):
        self.exchange_seconds.labels(*self.values, "counted" if counted else "failed").observe(seconds)

    def rejected(self, reason):
        self.rejections.labels(*self.values, reason).inc()

    def checkpoint(self, seconds):
        self.checkpoint_seconds.observe(seconds)

    def close(self):
        self.server.shutdown()
        self.server.server_close()


class TensorBoardWriter(Observer):
    """A round's scalars in TensorBoard event files, written by a thread of this observer's: the round
    hands its record over and never waits for a disk (``dropped`` counts what a stuck one cost)."""

    def __init__(self, folder: str | Path, peer_id: str) -> None:
        try:
            from tensorboardX import SummaryWriter
        except ImportError:
            raise UsageError("--tensorboard needs tensorboardX: pip install 'tadlora[tensorboard]'") from None
        self.writer = SummaryWriter(str(Path(folder) / peer_id), flush_secs=TENSORBOARD_FLUSH_S)
        self.records: queue.Queue = queue.Queue(maxsize=TENSORBOARD_QUEUE_ROUNDS)
        self.dropped = 0
        self.thread = threading.Thread(target=self._write_all, name="tensorboard", daemon=True)
        self.thread.start()

    def round_done(self, record):
        try:
            self.records.put_nowait(record)
        except queue.Full:
            self.dropped += 1

    def _write_all(self) -> None:
        failed = False
        while (record := self.records.get()) is not _CLOSE:
            try:
                self._write(record)
            except Exception as exc:  # a full disk, say: metrics must not stop a run, nor flood its log
                if not failed:
                    log.warning("TensorBoard events not written (%s: %s); still trying", type(exc).__name__, exc)
                failed = True
        self.writer.close()  # writes out what tensorboardX still holds

    def _write(self, record: dict) -> None:
        step = record["round"]
        if not math.isnan(record["train_loss"]):
            self.writer.add_scalar("train/loss", record["train_loss"], step)
        self.writer.add_scalar("gossip/neighbours", len(record["neighbours"]), step)
        self.writer.add_scalar("gossip/bytes_sent", record["bytes_sent"], step)
        self.writer.add_scalar("round/seconds", record.get("seconds", 0.0), step)
        if "accuracy" in record:
            self.writer.add_scalar("validation/accuracy", record["accuracy"], step)
        if "perplexity" in record:
            self.writer.add_scalar("validation/perplexity", record["perplexity"], step)

    def close(self):
        """Write what is queued, for at most ``TENSORBOARD_CLOSE_S`` (a stuck disk must not hold the exit)."""
        with contextlib.suppress(queue.Full):
            self.records.put(_CLOSE, timeout=TENSORBOARD_CLOSE_S)
        self.thread.join(TENSORBOARD_CLOSE_S)
        if self.dropped:
            log.warning("TensorBoard: the scalars of %d rounds were dropped (the writer fell behind)", self.dropped)


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for log shippers."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def use_json_logs() -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]


def observers_for(metrics: str, tensorboard: str, peer_id: str, run_id: str) -> Observers:
    observers: list[Observer] = []
    if metrics:
        observers.append(PrometheusMetrics(metrics, peer_id, run_id))
    if tensorboard:
        observers.append(TensorBoardWriter(tensorboard, peer_id))
    return Observers(observers)
