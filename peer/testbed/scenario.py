"""Scripted faults for a testbed: what happens to which peer, at which round or second.

A scenario is a TOML file of events::

    [[event]]
    at_round = 3          # when the most advanced peer has finished this many rounds
    action = "link-down"  # link-down | link-up | bandwidth | kill | restart | start
    peer = 2

    [[event]]
    at_seconds = 40       # or: seconds after the testbed started
    action = "bandwidth"
    peer = 1
    rate = "1mbit"        # "off" removes the limit

    [[event]]
    at_round = 5
    action = "loss"       # random loss on the link peer <-> other, both directions
    peer = 0
    other = 1             # omitted: every link of the peer
    percent = 20          # 0 removes it

    [[event]]
    at_round = 6
    action = "delay"      # every packet peer 3 sends to the others waits delay ± jitter
    peer = 3
    delay_ms = 80         # 0 removes it
    jitter_ms = 20        # uniform; packets keep their order (see peer/testbed/netdelay.py)

    [[event]]
    at_round = 8
    action = "partition"  # one-way: packets from other to peer are dropped ("heal" undoes it)
    peer = 2
    other = 0

``kill`` is SIGKILL; ``restart`` starts the peer again with the same output folder (it resumes from
its checkpoint); ``start`` starts a peer that was held back (a late joiner: peers with a ``start``
event are not started with the others). Link and bandwidth events need the network-namespace
testbed (``tadlora testbed --netns``); delay also needs the ``netfilterqueue`` package.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from peer.config import read_toml
from peer.errors import ConfigError

ACTIONS = ("link-down", "link-up", "bandwidth", "loss", "delay", "partition", "heal", "kill", "restart", "start")
NETWORK_ACTIONS = ("link-down", "link-up", "bandwidth", "loss", "delay", "partition", "heal")


@dataclass(frozen=True)
class Event:
    action: str
    peer: int
    at_round: int | None = None
    at_seconds: float | None = None
    rate: str | None = None
    other: int | None = None
    percent: int | None = None
    delay_ms: float | None = None
    jitter_ms: float | None = None

    def due(self, rounds_done: int, seconds: float) -> bool:
        if self.at_round is not None:
            return rounds_done >= self.at_round
        return seconds >= (self.at_seconds or 0.0)


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def load_scenario(path: str | Path, peers: int) -> list[Event]:
    raw = read_toml(path, "scenario file")
    events = []
    listed = raw.get("event", [])
    if not isinstance(listed, list):
        raise ConfigError(f"{path}: events are [[event]] tables, got event = {listed!r}")
    for n, item in enumerate(listed, 1):
        where = f"{path}: event {n}"
        if not isinstance(item, dict):
            raise ConfigError(f"{where}: an event is a [[event]] table, got {item!r}")
        action, peer = item.get("action"), item.get("peer")
        if action not in ACTIONS:
            raise ConfigError(f"{where}: action {action!r} is not one of {', '.join(ACTIONS)}")
        if not isinstance(peer, int) or not 0 <= peer < peers:
            raise ConfigError(f"{where}: peer must be an index in [0, {peers}), got {peer!r}")
        if ("at_round" in item) == ("at_seconds" in item):
            raise ConfigError(f"{where}: give exactly one of at_round and at_seconds")
        at_round, at_seconds = item.get("at_round"), item.get("at_seconds")
        if at_round is not None and not (
            isinstance(at_round, int) and not isinstance(at_round, bool) and at_round >= 0
        ):
            raise ConfigError(f"{where}: at_round must be a round number >= 0, got {at_round!r}")
        if at_seconds is not None and not (_number(at_seconds) and at_seconds >= 0):
            raise ConfigError(f"{where}: at_seconds must be a number of seconds >= 0, got {at_seconds!r}")
        if action == "bandwidth" and not isinstance(item.get("rate"), str):
            raise ConfigError(f'{where}: bandwidth needs rate = "1mbit" (or "off")')
        other = item.get("other")
        if other is not None and (not isinstance(other, int) or not 0 <= other < peers or other == peer):
            raise ConfigError(f"{where}: other must be another peer's index in [0, {peers}), got {other!r}")
        if action in ("partition", "heal") and other is None:
            raise ConfigError(f"{where}: {action} needs other = <peer index>")
        percent = item.get("percent")
        if action == "loss" and (not isinstance(percent, int) or not 0 <= percent <= 100):
            raise ConfigError(f"{where}: loss needs percent = 0..100")
        delay, jitter = item.get("delay_ms"), item.get("jitter_ms", 0)
        if action == "delay" and not (_number(delay) and _number(jitter) and 0 <= jitter <= delay):
            raise ConfigError(
                f"{where}: delay needs delay_ms >= 0 and 0 <= jitter_ms <= delay_ms, got {delay!r} and {jitter!r}"
            )
        events.append(
            Event(
                action,
                peer,
                item.get("at_round"),
                item.get("at_seconds"),
                item.get("rate"),
                other,
                percent,
                delay,
                jitter if action == "delay" else None,
            )
        )
    return sorted(events, key=lambda e: (e.at_round is None, e.at_round or 0, e.at_seconds or 0.0))
