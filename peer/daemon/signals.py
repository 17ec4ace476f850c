"""SIGINT and SIGTERM stop a daemon at any moment of its life, within ``STOP_GRACE_S``.

A module of its own, free of heavy imports, because ``tadlora run`` installs these handlers first:
importing torch, preparing the data and loading the model take seconds, and a stop must not wait
for them. They also replace an inherited "ignore": a process started in the background by a
non-interactive shell (CI jobs, scripts) inherits SIGINT ignored, and Python then never turns it
into KeyboardInterrupt, so a Ctrl-C sent to such a daemon used to be lost.

The daemon's life in three parts, and what a signal does in each:

- starting (config, data, model, checkpoint): nothing to wind down yet, the process exits at once;
- serving (``serving()``): the event loop is asked to stop: the round in progress is abandoned (the
  checkpoint holds the last complete one), mDNS says goodbye, gRPC closes; a watchdog ends the process
  ``STOP_GRACE_S`` later whatever still runs (the training step in the worker thread, which the
  interpreter joins at exit, or a gRPC shutdown that blocks);
- leaving (``leaving()``, the event loop is done): the process exits at once. So does a daemon that
  was stopped, once its event loop is done (``tadlora run`` calls ``leave_now``): the abandoned
  round's training step may still run in the worker thread, and its result would be thrown away.

A second signal always exits at once. A stop asked for by a signal is a clean end: exit code 0.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from typing import NoReturn

from peer.daemon.timing import STOP_GRACE_S

log = logging.getLogger("tadlora.daemon")

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
STOPPED_EXIT_CODE = 0  # a stop that was asked for is not a failure


class StopSignals:
    def __init__(self) -> None:
        self.received: int | None = None
        self._on_stop: Callable[[], None] | None = None

    def install(self) -> None:
        """Handle SIGINT and SIGTERM from now on (main thread only)."""
        for sig in STOP_SIGNALS:
            signal.signal(sig, self._handle)

    def serving(self, loop, on_stop: Callable[[], None]) -> None:
        """From now on a stop signal runs ``on_stop`` in ``loop`` (and arms the watchdog)."""
        self._on_stop = lambda: loop.call_soon_threadsafe(on_stop)

    def leaving(self) -> None:
        """The event loop is done: a stop signal exits at once again."""
        self._on_stop = None

    def _handle(self, signum: int, frame) -> None:
        name = signal.Signals(signum).name
        first, self.received = self.received is None, signum
        if not first or self._on_stop is None:
            leave_now(STOPPED_EXIT_CODE, f"{name}: exiting now")
        log.info("%s: stopping; the process ends within %.0f s", name, STOP_GRACE_S)
        exit_if_shutdown_hangs(STOP_GRACE_S, lambda: True)
        try:
            self._on_stop()
        except RuntimeError:  # the event loop closed between serving and leaving
            leave_now(STOPPED_EXIT_CODE, f"{name}: exiting now")


def exit_if_shutdown_hangs(seconds: float, work_done: Callable[[], bool]) -> threading.Timer:
    """A watchdog: after ``seconds``, leave hard, with 0 if ``work_done()``, else 1. Shutting down can
    block for good: grpc.aio joining its poller thread (grpc/grpc#40989; seen here after a run under
    80 % packet loss), the interpreter joining a training step that is still running."""

    def leave() -> None:
        code = 0 if work_done() else 1
        leave_now(
            code,
            f"shutdown still not done after {seconds:.0f} s (a training step or gRPC's shutdown "
            f"is blocking); exiting with {code}",
        )

    timer = threading.Timer(seconds, leave)
    timer.daemon = True
    timer.start()
    return timer


def leave_now(code: int, why: str, level: int = logging.WARNING) -> NoReturn:
    """Exit the process at once, threads and all, after flushing the logs and the standard streams.
    Called from signal handlers too: a flush that would re-enter a stream mid-write is skipped.
    Whatever was being written is safe: checkpoints are atomic, and may be cut at any moment."""
    log.log(level, "%s", why)
    for flush in (logging.shutdown, sys.stdout.flush, sys.stderr.flush):
        with contextlib.suppress(Exception):
            flush()
    os._exit(code)
