"""The invariants, checked over what the peers wrote (``rounds.jsonl``, ``events.jsonl``, checkpoint, WAL).

- links: every link of every round counted at both ends or at neither (late settlements included),
  and no link is left unsettled at the end;
- sums: every round's mixing kept the network-wide sum of A, of B and of the head H when it trains
  (float64, tolerance 1e-9), and between two rounds a peer's factor that did not train kept its sum
  (late settlements included): no catch-up, restart or recovery changed factors outside the mixing.
  (The head trains every round, so only its mixing is checked.)
- phases: every pair of peers that both ran a round agree on its phase. With fixed T, always. With
  ``auto``, every decision whose proposals could reach every peer: the checker replays how
  information spreads over the links that counted in the second half of each decision window, and
  rounds after a decision that could not be informed (a partition, a peer down, every link of a peer
  lost through the window) are exempt: their disagreements are counted as ``phase-after-split``, a
  measurement of how fast peers reconcile, not a violation. No algorithm can agree on a measured value
  that could not travel; ``AgreedSchedule``'s reconciliation covers what comes after.
- finish: every peer finished every round, logged each round it ran exactly once, and left a
  checkpoint that loads (at the last round) and no write-ahead record.
- state: that checkpoint holds what the peer holds at the end (factors, optimizer, trained blocks),
  crashes and restarts or not: a consensus round's checkpoint, which leaves the optimizer to the
  whole one before it, loses nothing; and the stand-in optimizer took one step per round the peer
  logged as trained (``check_states``).
"""

from __future__ import annotations

import itertools
import json
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import torch

from peer.config import default_peer_id
from peer.daemon.persistence import EVENTS_LOG, ROUNDS_LOG, WAL, FileFormat, MemoryStore, Persistence

SUM_TOLERANCE = 1e-9
# the stand-in optimizer's state (``peer.faultsim.stand_in``): its step count, one step a round that trains
STAND_IN_STEPS = "steps"
STAND_IN_STEPS_PER_ROUND = 1


# Not a violation, a measurement: rounds after a decision that could not be shared, in which peers
# disagree on the phase (how fast they reconcile; see the module docstring).
AFTER_SPLIT = "phase-after-split"


@dataclass(frozen=True)
class Violation:
    kind: str
    detail: str

    @property
    def counts(self) -> bool:
        return self.kind != AFTER_SPLIT

    def __str__(self) -> str:
        return f"{self.kind}: {self.detail}"


def check(schedule, stores: list[MemoryStore], window: int = 0, form=FileFormat) -> list[Violation]:
    """The fault simulator's peers: their logs, and their files. ``window``: the rounds between auto-T
    decisions (to replay how proposals spread)."""
    logs = {default_peer_id(i): (store.lines(ROUNDS_LOG), store.lines(EVENTS_LOG)) for i, store in enumerate(stores)}
    violations = check_logs(logs, schedule.switch_interval == "auto", window)
    for i, store in enumerate(stores):
        violations += _check_files(default_peer_id(i), Persistence(store, form), schedule.rounds)
    return violations


def check_logs(logs: dict[str, tuple[list[str], list[str]]], auto: bool = False, window: int = 0) -> list[Violation]:
    """The invariants over the lines of each peer's ``rounds.jsonl`` and ``events.jsonl`` (by peer id):
    usable on any run's folders, a testbed's as well as the simulator's."""
    violations: list[Violation] = []
    rounds: dict[str, dict[int, dict]] = {}
    settled: dict[tuple[str, int, str], dict] = {}  # (peer, round, neighbour) -> first settlement
    for pid, (round_lines, event_lines) in logs.items():
        by_round: dict[int, dict] = {}
        for record in map(json.loads, round_lines):
            if record["round"] in by_round:
                violations.append(Violation("log", f"{pid} logged round {record['round']} twice"))
            by_round[record["round"]] = record
            for entry in record.get("settled", []):
                settled.setdefault((pid, entry["round"], entry["peer"]), entry)
        for entry in map(json.loads, event_lines):
            if entry["event"] == "settled":
                settled.setdefault((pid, entry["round"], entry["peer"]), entry)
        rounds[pid] = by_round
    violations += _check_links(rounds, settled)
    violations += _check_sums(rounds, settled)
    violations += _check_continuity(rounds)
    violations += _check_phases(rounds, _first_uninformed_decision(rounds, window) if auto else None)
    return violations


def _check_files(pid: str, files: Persistence, total_rounds: int) -> list[Violation]:
    out = []
    try:
        state = files.load_checkpoint()
    except Exception as exc:
        return [Violation("checkpoint", f"{pid}: checkpoint does not load: {exc}")]
    if state is None or int(state["round"]) != total_rounds:
        out.append(
            Violation("finish", f"{pid} ended at round {None if state is None else state['round']}, not {total_rounds}")
        )
    if files.store.read(WAL) is not None:
        out.append(Violation("files", f"{pid} left a write-ahead record"))
    return out


def check_states(stores: list[MemoryStore], live: list[dict], form=FileFormat) -> list[Violation]:
    """Each peer's checkpoint against its local state at the end (``live``, by peer index), and the
    stand-in optimizer's step count against the rounds the peer logged as trained (one step each): an
    optimizer that a restart loaded from the wrong checkpoint would carry on, and agree with every
    checkpoint after, but not with the log."""
    out = []
    for i, (store, state) in enumerate(zip(stores, live, strict=True)):
        pid = default_peer_id(i)
        try:
            saved = Persistence(store, form).load_checkpoint()
        except Exception:
            continue  # _check_files reports it
        where = _first_difference(saved["local"], state, "local") if saved is not None else "local: no checkpoint"
        if where is not None:
            out.append(Violation("state", f"{pid}'s checkpoint differs from its state at {where}"))
        steps = state.get("optimizer", {}).get(STAND_IN_STEPS)
        trained = sum(json.loads(line)["train_loss"] is not None for line in store.lines(ROUNDS_LOG))
        if steps is not None and steps != trained * STAND_IN_STEPS_PER_ROUND:
            out.append(Violation("state", f"{pid}'s optimizer took {steps} steps in {trained} rounds that trained"))
    return out


def _first_difference(saved: Any, live: Any, where: str) -> str | None:
    if isinstance(live, dict):
        if not isinstance(saved, dict) or set(map(str, saved)) != set(map(str, live)):
            return where
        by_name = {str(key): value for key, value in saved.items()}
        return next(
            (d for key, value in live.items() if (d := _first_difference(by_name[str(key)], value, f"{where}.{key}"))),
            None,
        )
    if isinstance(live, torch.Tensor):
        return None if isinstance(saved, torch.Tensor) and torch.equal(saved.cpu(), live.cpu()) else where
    if isinstance(live, list | tuple):
        if not isinstance(saved, list | tuple) or len(saved) != len(live):
            return where
        differences = (_first_difference(s, v, f"{where}[{n}]") for n, (s, v) in enumerate(zip(saved, live)))
        return next((d for d in differences if d), None)
    return None if saved == live else where


def _counted(rounds, settled, pid: str, round_: int) -> set[str]:
    record = rounds[pid].get(round_)
    links = set(record["neighbours"]) if record else set()
    links |= {nb for (p, r, nb), e in settled.items() if p == pid and r == round_ and e["counted"]}
    return links


def _check_links(rounds, settled) -> list[Violation]:
    out = []
    for pid, by_round in rounds.items():
        for round_, record in by_round.items():
            for nb in _counted(rounds, settled, pid, round_):
                if pid not in _counted(rounds, settled, nb, round_):
                    out.append(Violation("link", f"round {round_}: {pid} counted {nb}, {nb} did not count {pid}"))
            for nb in record.get("unresolved", []):
                if (pid, round_, nb) not in settled:
                    out.append(Violation("unsettled", f"round {round_}: {pid} never learned the outcome with {nb}"))
    return out


def _blocks(record: dict) -> list[str]:
    """The blocks whose sums a round record carries (``a``, ``b``, and ``h`` when the head trains)."""
    return [key[len("sum_") : -len("_before")] for key in record if key.startswith("sum_") and key.endswith("_before")]


def _check_sums(rounds, settled) -> list[Violation]:
    out = []
    change: dict[int, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    scale: dict[int, float] = defaultdict(lambda: 1.0)
    for by_round in rounds.values():
        for round_, r in by_round.items():
            for block in _blocks(r):
                change[round_][block] += r[f"sum_{block}_after"] - r[f"sum_{block}_before"]
                scale[round_] += abs(r[f"sum_{block}_before"])
    for (_, round_, _), entry in settled.items():
        if entry["counted"]:
            for key, delta in entry.items():
                if key.startswith("delta_"):
                    change[round_][key[len("delta_") :]] += delta
    for round_, by_block in sorted(change.items()):
        broken = {block: d for block, d in sorted(by_block.items()) if abs(d) > SUM_TOLERANCE * scale[round_]}
        if broken:
            changes = ", ".join(f"of {block.upper()} by {d:.3g}" for block, d in broken.items())
            out.append(Violation("sum", f"round {round_}: network-wide sum changed: {changes}"))
    return out


def _first_uninformed_decision(rounds, window: int) -> int | None:
    """The first round at which some peer decided T after a window through which a proposal could
    not reach every peer (see the module docstring); None if every decision was informed."""
    peers = sorted(rounds)
    decisions = sorted(
        {
            (r, pid)
            for pid, by_round in rounds.items()
            for r, rec in by_round.items()
            if r > 0 and rec.get("decided_at") == r and rec.get("phase_start") == r
        }
    )
    for decided, pid in decisions:
        previous = rounds[pid].get(decided - 1, {}).get("decided_at", 0)
        informed = {p: {p} for p in peers}
        for r in range(previous + max(1, window // 2), decided):
            links = {(p, nb) for p in peers for nb in rounds[p].get(r, {}).get("neighbours", [])}
            before = {p: set(s) for p, s in informed.items()}
            for p, nb in links:
                informed[p] |= before[nb]
        if any(len(s) < len(peers) for s in informed.values()):
            return decided
    return None


def _check_continuity(rounds) -> list[Violation]:
    out = []
    for pid, by_round in rounds.items():
        ordered = sorted(by_round)
        for previous, current in itertools.pairwise(ordered):
            before, after = by_round[current], by_round[previous]
            for factor in ("a", "b"):
                if factor.upper() in before["phase"]:
                    continue  # trained in between ("A", "B", or "AB" for strategies that train both)
                expected = after[f"sum_{factor}_after"] + sum(
                    e.get(f"delta_{factor}", 0.0) for e in before.get("settled", []) if e["counted"]
                )
                if abs(before[f"sum_{factor}_before"] - expected) > SUM_TOLERANCE * (1 + abs(expected)):
                    out.append(
                        Violation(
                            "continuity",
                            f"{pid}: factor {factor.upper()} changed from round "
                            f"{previous} to {current} outside the mixing",
                        )
                    )
    return out


def _check_phases(rounds, exempt_from: int | None) -> list[Violation]:
    out = []
    phases: dict[int, dict[str, str]] = defaultdict(dict)
    for pid, by_round in rounds.items():
        for round_, record in by_round.items():
            phases[round_][pid] = record["phase"]
    for round_, by_peer in sorted(phases.items()):
        if len(set(by_peer.values())) > 1:
            kind = AFTER_SPLIT if exempt_from is not None and round_ >= exempt_from else "phase"
            out.append(Violation(kind, f"round {round_}: {by_peer}"))
    return out
