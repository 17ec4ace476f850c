"""``tadlora testbed``: N peer daemons as separate OS processes on this machine, real gRPC and mDNS.

Each daemon gets its own shard of the data (``--peer-index``), its own output folder
``OUT/<peer-id>/`` and one CPU thread (so that N processes share the cores without fighting).
Everything they exchange stays on loopback. When all have finished, it prints a table (each peer's
accuracy, rounds, bytes sent and received), writes ``OUT/summary.json`` (with ``mean_accuracy``) and
``OUT/testbed.png`` (training loss and links per round). Every process it started is stopped on
Ctrl-C, on SIGTERM and on failure: SIGTERM to each daemon's process group, SIGKILL to what is left
``STOP_GRACE_S`` later, and all of them reaped (``Testbed.stop_all``).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np

from peer import strict_json
from peer.config import DEFAULT_PORT, RunConfig, default_peer_id, legacy_settings, load_config
from peer.errors import ConfigError, UsageError
from peer.testbed.netns import NetnsLab
from peer.testbed.processes import python_module, same_code_env
from peer.testbed.scenario import NETWORK_ACTIONS, Event
from peer.transport.tls import make_run

LOOPBACK_LISTEN = "127.0.0.1:0"  # daemons on one machine: loopback only, any free port
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
# From SIGTERM to SIGKILL: a daemon leaves within 5 s of a stop signal by itself (peer.daemon.signals),
# so this only catches one that is wedged (or a machine so loaded that its exit is slow).
STOP_GRACE_S = 10.0
POLL_S = 0.1


class DaemonExited(UsageError, RuntimeError):
    """A daemon of the testbed ended with an error; the message carries the tail of its log (the CLI
    shows it and exits 2: the cause is in that log, not in the testbed)."""


class Interrupts:
    """SIGINT and SIGTERM in the testbed's process: a KeyboardInterrupt, so that every ``finally`` runs.

    Installed explicitly, also over an inherited "ignore" (a testbed started in the background by a
    non-interactive shell, as CI jobs do, inherits SIGINT ignored: Ctrl-C was then lost and the
    testbed kept running). Inside ``held()`` (starting a daemon and recording it; stopping and
    reaping them all) an interruption would leave processes behind: there the signal is only noted
    (``pending``: a stop in progress skips its grace period) and raised when the block ends."""

    def __init__(self) -> None:
        self.holding = 0
        self.pending = False

    def install(self) -> dict:
        """Handle both signals; returns the previous handlers, for ``restore``."""
        return {sig: signal.signal(sig, self._handle) for sig in STOP_SIGNALS}

    @staticmethod
    def restore(previous: dict) -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum, frame) -> None:
        if self.holding:
            self.pending = True
            return
        raise KeyboardInterrupt  # SIGTERM takes the same clean-up path as Ctrl-C

    @contextlib.contextmanager
    def held(self):
        self.holding += 1
        try:
            yield
        finally:
            self.holding -= 1
        if not self.holding and self.pending:
            self.pending = False
            raise KeyboardInterrupt


INTERRUPTS = Interrupts()


def _flags(settings: dict) -> list[str]:
    out = []
    for key, value in settings.items():
        out += ["--" + key.replace("_", "-"), str(value)]
    return out


class Testbed:
    """``tls``: create a certificate authority for the run and give every daemon its certificate."""

    def __init__(self, run: RunConfig, out: Path, daemon_settings: dict | None = None, tls: bool = False) -> None:
        self.run, self.out = run, Path(out)
        self.run_id = f"testbed-{uuid.uuid4().hex[:8]}"
        self.daemon_settings = {"listen": LOOPBACK_LISTEN, "run_id": self.run_id, **(daemon_settings or {})}
        self.procs: dict[int, subprocess.Popen] = {}
        self.certs = self.out / "certs" if tls else None
        if self.certs is not None:
            make_run(self.certs, self.run_id, [default_peer_id(i) for i in range(run.peers)])

    def tls_settings(self, index: int) -> dict:
        if self.certs is None:
            return {}
        name = default_peer_id(index)
        return {
            "tls_ca": str(self.certs / "ca.pem"),
            "tls_cert": str(self.certs / f"{name}.pem"),
            "tls_key": str(self.certs / f"{name}.key"),
        }

    def peer_dir(self, index: int) -> Path:
        return self.out / default_peer_id(index)

    def command(self, index: int, extra: dict | None = None) -> list[str]:
        return [
            *python_module("peer.cli"),
            "run",
            "--peer-index",
            str(index),
            "--out",
            str(self.peer_dir(index)),
            *_flags(self.run.as_dict()),
            *_flags({**self.daemon_settings, **self.tls_settings(index), **(extra or {})}),
        ]

    def start(self, index: int, extra: dict | None = None) -> subprocess.Popen:
        """Start peer ``index``; ``extra`` overrides daemon settings for this peer only."""
        self.peer_dir(index).mkdir(parents=True, exist_ok=True)
        env = {**same_code_env(), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
        log = (self.peer_dir(index) / "daemon.log").open("ab")
        with INTERRUPTS.held():  # a Ctrl-C right here must not leave a daemon that stop_all does not know
            proc = subprocess.Popen(
                self.command(index, extra), stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
            self.procs[index] = proc
        return proc

    def kill(self, index: int, sig: int = signal.SIGKILL) -> None:
        proc = self.procs.get(index)
        if proc is not None and proc.poll() is None:
            proc.send_signal(sig)
            proc.wait()

    def stop_all(self, grace_s: float = STOP_GRACE_S) -> None:
        """SIGTERM to every daemon still running, SIGKILL to those left after ``grace_s`` (at once on a
        second Ctrl-C), then reap them all: no process of the testbed outlives this call."""
        with INTERRUPTS.held():
            self._signal_running(signal.SIGTERM)
            deadline = time.monotonic() + grace_s
            while self._running() and time.monotonic() < deadline and not INTERRUPTS.pending:
                time.sleep(POLL_S)
            for index in self._running():
                print(
                    f"{default_peer_id(index)} still running {grace_s:g} s after SIGTERM: killed",
                    file=sys.stderr,
                    flush=True,
                )
            self._signal_running(signal.SIGKILL)
            for proc in self.procs.values():
                proc.wait()

    def _running(self) -> list[int]:
        return [index for index, proc in self.procs.items() if proc.poll() is None]

    def _signal_running(self, sig: int) -> None:
        """``sig`` to the process group of each daemon still running (its own session: the daemon and
        anything it started, e.g. behind ``ip netns exec``). Only unreaped ones: their group id cannot
        have been reused."""
        for index in self._running():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.procs[index].pid, sig)

    def wait(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for index, proc in self.procs.items():
            code = proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            if code != 0:
                tail = (self.peer_dir(index) / "daemon.log").read_text(errors="replace")[-2000:]
                raise DaemonExited(f"{default_peer_id(index)} exited with code {code}:\n{tail}")

    def progress(self) -> int:
        """Rounds finished by the most advanced peer."""
        return max((len(self.rounds(i)) for i in range(self.run.peers)), default=0)

    def apply(self, event: Event) -> None:
        if event.action in NETWORK_ACTIONS:
            raise ConfigError(f"scenario: '{event.action}' needs the network-namespace testbed (--netns)")
        if event.action == "kill":
            self.kill(event.peer)
        elif event.action in ("restart", "start"):
            self.start(event.peer)

    def drive(self, events: list[Event], timeout: float) -> None:
        """Start the peers that have no ``start`` event, fire the events when due, wait for all."""
        held_back = {e.peer for e in events if e.action == "start"}
        for index in range(self.run.peers):
            if index not in held_back:
                self.start(index)
        began, pending = time.monotonic(), list(events)
        while pending:
            if time.monotonic() - began > timeout:
                raise TimeoutError(f"scenario not finished after {timeout:g} s: {pending[0]}")
            done, elapsed = self.progress(), time.monotonic() - began
            while pending and pending[0].due(done, elapsed):
                event = pending.pop(0)
                print(
                    f"round {done}, {elapsed:.0f} s: {event.action} {default_peer_id(event.peer)}",
                    file=sys.stderr,
                    flush=True,
                )
                self.apply(event)
            time.sleep(0.1)
        self.wait(max(1.0, timeout - (time.monotonic() - began)))

    def run_all(self, timeout: float, events: list[Event] | None = None) -> None:
        """Run the testbed to its end: ``drive`` it, then stop every daemon still running, on an error
        or an interrupt too (no daemon outlives the call)."""
        try:
            self.drive(events or [], timeout)
        finally:
            self.stop_all()

    def rounds(self, index: int) -> list[dict]:
        return read_rounds(self.peer_dir(index))

    def summary(self) -> dict:
        folders = [self.peer_dir(index) for index in range(self.run.peers)]
        peers = summarize_peers(folders)
        return {
            "run_id": self.run_id,
            "config": self.run.as_dict(),
            "peers": peers,
            "mean_accuracy": float(np.mean([p["accuracy"] for p in peers.values()])),
            "mixing_sum_drift": mixing_sum_drift(folders),
        }


class NetnsTestbed(Testbed):
    """The same testbed with each daemon in its own network namespace (see ``peer.testbed.netns``)."""

    def __init__(
        self, run: RunConfig, out: Path, lab: NetnsLab, daemon_settings: dict | None = None, tls: bool = False
    ) -> None:
        super().__init__(run, out, daemon_settings, tls)
        self.lab = lab

    def command(self, index: int, extra: dict | None = None) -> list[str]:
        address = self.lab.address(index)
        # the namespace's own address: the one its peers dial, and the one its mDNS runs on
        settings = {"listen": f"{address}:{DEFAULT_PORT}", "mdns_interface": address, **(extra or {})}
        return self.lab.wrap(index, super().command(index, settings))

    def apply(self, event: Event) -> None:
        if event.action == "link-down":
            self.lab.set_link(event.peer, False)
        elif event.action == "link-up":
            self.lab.set_link(event.peer, True)
        elif event.action == "bandwidth":
            self.lab.limit_bandwidth(event.peer, None if event.rate == "off" else event.rate)
        elif event.action == "loss":
            others = [event.other] if event.other is not None else [j for j in range(self.run.peers) if j != event.peer]
            for other in others:
                self.lab.set_drop(event.peer, other, event.percent or 0)
                self.lab.set_drop(other, event.peer, event.percent or 0)
        elif event.action == "delay":
            self.lab.set_delay(event.peer, event.delay_ms or 0.0, event.jitter_ms or 0.0)
        elif event.action in ("partition", "heal"):
            assert event.other is not None  # load_scenario requires it for partition and heal
            self.lab.set_drop(event.peer, event.other, 100 if event.action == "partition" else 0)
        else:
            super().apply(event)


def read_rounds(folder: Path) -> list[dict]:
    """A daemon's rounds.jsonl (its ``--out`` folder), empty before its first round."""
    path = folder / "rounds.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def summarize_peers(peer_dirs: list[Path]) -> dict:
    """Per peer: final accuracy, rounds, bytes sent and received, from a daemon's ``--out`` folder."""
    peers = {}
    for folder in peer_dirs:
        path = folder / "summary.json"
        if not path.exists():
            raise UsageError(f"{folder}: no summary.json (the daemon did not finish; see its log)")
        s = json.loads(path.read_text())
        rounds = read_rounds(folder)
        peers[s["peer_id"]] = {
            "accuracy": strict_json.number(s["mean_accuracy"]),
            "rounds": s["rounds"],
            "bytes_sent": sum(r["bytes_sent"] for r in rounds),
            "bytes_received": sum(r["bytes_received"] for r in rounds),
        }
    return peers


def mixing_sum_drift(peer_dirs: list[Path]) -> float | None:
    """The largest change that one round's mixing made to the network-wide sum of a block (A, B, H),
    relative to the size of that sum: ``|Σ_i (after_i − before_i)| / Σ_i |before_i|`` over the rounds
    every peer logged. Mixing keeps the sums (compressed or not), so this is float rounding (~1e-7 in
    fp32) unless a link counted at one end only; a round with a link settled late or a restart is
    left out (its term is added between rounds). None when no round qualifies."""
    by_round: dict[int, list[dict]] = {}
    for folder in peer_dirs:
        for record in read_rounds(folder):
            by_round.setdefault(record["round"], []).append(record)
    drifts = []
    for records in by_round.values():
        if len(records) != len(peer_dirs) or any(r.get("unresolved") or r.get("recovered") for r in records):
            continue
        for key in (k for k in records[0] if k.startswith("sum_") and k.endswith("_before")):
            after = key.removesuffix("_before") + "_after"
            change = sum(r[after] - r[key] for r in records)
            drifts.append(abs(change) / max(sum(abs(r[key]) for r in records), 1e-30))
    return max(drifts) if drifts else None


def collect(results: Path, references: str | None = None) -> dict:
    """Summarise every daemon folder (one with a summary.json or rounds.jsonl) under ``results``:
    the compose testbed's collection step. Like the testbed, it then scores the network average of
    the peers' exported adapters and trains the references at the run's budget and seed (the run's
    settings come from a daemon's summary; ``references`` overrides the run's ``references``,
    ``"none"`` skips them)."""
    folders = sorted({p.parent for pattern in ("*/summary.json", "*/rounds.jsonl") for p in results.glob(pattern)})
    if not folders:
        raise UsageError(f"{results}: no daemon results (peer folders with rounds.jsonl) found")
    peers = summarize_peers(folders)
    summary = {
        "peers": peers,
        "mean_accuracy": float(np.mean([p["accuracy"] for p in peers.values()])),
        "mixing_sum_drift": mixing_sum_drift(folders),
    }
    run = _run_of(folders[0], references)
    adapters = [folder / "peers" / pid / "adapter" for folder, pid in zip(folders, peers)]
    if all(path.is_dir() for path in adapters):
        summary.update(assess(run, adapters))
    (results / "summary.json").write_text(strict_json.dumps(summary, indent=2) + "\n")
    return summary


def _run_of(folder: Path, references: str | None) -> RunConfig:
    """The run's settings as a daemon recorded them in its summary (``references`` overriding)."""
    settings = json.loads((folder / "summary.json").read_text())["config"]
    asked = {"references": references} if references else {}
    return load_config(overrides={**legacy_settings(settings), **settings, **asked})


def format_table(summary: dict) -> str:
    from peer.sim.references import headline

    lines = [f"{'peer':<10} {'accuracy':>9} {'rounds':>7} {'sent MB':>9} {'received MB':>12}"]
    for pid, p in summary["peers"].items():
        lines.append(
            f"{pid:<10} {p['accuracy']:>9.4f} {p['rounds']:>7} {p['bytes_sent'] / 1e6:>9.2f} "
            f"{p['bytes_received'] / 1e6:>12.2f}"
        )
    lines.append(f"{'mean':<10} {summary['mean_accuracy']:>9.4f}")
    if (drift := summary.get("mixing_sum_drift")) is not None:
        lines.append(f"network sums: largest change by one round's mixing {drift:.1e} of their size")
    lines.append(headline(summary))
    return "\n".join(lines)


def plot(testbed: Testbed, path: Path, summary: dict | None = None) -> None:
    """Accuracy per round (each peer, with the network average and the references as lines), training
    loss and links per round."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from peer.tools.plots import draw_references

    fig, (acc_ax, loss_ax, link_ax) = plt.subplots(1, 3, figsize=(16, 4))
    for index in range(testbed.run.peers):
        rounds = testbed.rounds(index)
        xs = [r["round"] for r in rounds]
        scored = [(r["round"], strict_json.number(r["accuracy"])) for r in rounds if "accuracy" in r]
        final = (summary or {}).get("peers", {}).get(default_peer_id(index))
        if final is not None and (not scored or scored[-1][0] < final["rounds"] - 1):
            scored.append((final["rounds"] - 1, final["accuracy"]))  # the evaluation after the last round
        if scored:
            acc_ax.plot(*zip(*scored), marker="o", label=default_peer_id(index))
        loss_ax.plot(xs, [strict_json.number(r["train_loss"]) for r in rounds], label=default_peer_id(index))
        link_ax.plot(xs, [len(r["neighbours"]) for r in rounds], marker=".", label=default_peer_id(index))
    draw_references(acc_ax, summary or {})
    acc_ax.set(xlabel="round", ylabel="validation accuracy", title="accuracy (after the round)")
    acc_ax.legend(fontsize=8)
    loss_ax.set(xlabel="round", ylabel="training loss", title="local training loss")
    link_ax.set(xlabel="round", ylabel="links that counted", title="links per round")
    loss_ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def run_testbed(
    run: RunConfig,
    out: Path,
    daemon_settings: dict | None = None,
    timeout: float = 3600,
    netns: bool = False,
    events: list[Event] | None = None,
    tls: bool = False,
) -> dict:
    previous = INTERRUPTS.install()
    lab = NetnsLab(run.peers) if netns else None
    try:
        if lab is not None:
            lab.up()
            testbed: Testbed = NetnsTestbed(run, out, lab, daemon_settings, tls)
        else:
            testbed = Testbed(run, out, daemon_settings, tls)
        print(
            f"testbed {testbed.run_id}: {run.peers} daemons{' in namespaces ' + lab.tag if lab else ''}, "
            f"logs in {out}/peer-*/daemon.log",
            file=sys.stderr,
            flush=True,
        )
        testbed.run_all(timeout, events)
    finally:
        if lab is not None:
            with INTERRUPTS.held():  # an interrupted tear-down would leave namespaces and routes behind
                lab.down()
        INTERRUPTS.restore(previous)
    summary = testbed.summary()
    summary.update(
        assess(run, [testbed.peer_dir(i) / "peers" / default_peer_id(i) / "adapter" for i in range(run.peers)])
    )
    (out / "summary.json").write_text(strict_json.dumps(summary, indent=2) + "\n")
    plot(testbed, out / "testbed.png", summary)
    return summary


def assess(run: RunConfig, adapter_dirs: list[Path], progress: bool = True) -> dict:
    """What makes the daemons' accuracy readable: their exported factors averaged and scored, and the
    references (``run.references``) trained here at the same budget and seed (``peer.sim.references``)."""
    from peer.core.run_setup import evaluator_for, pick_device, prepare_data
    from peer.sim.references import (
        NETWORK_AVERAGE,
        parse_references,
        run_references,
        score_average_of_exports,
    )

    data = prepare_data(run)
    evaluator = evaluator_for(run, data, pick_device(run.device))  # the validation batches, collated once
    print(
        f"scoring the network average and training the references ({run.references or 'none'}) at the same budget",
        file=sys.stderr,
        flush=True,
    )
    return {
        NETWORK_AVERAGE: score_average_of_exports(run, data, adapter_dirs, evaluator),
        "references": run_references(run, data, parse_references(run.references), progress, evaluator),
    }
