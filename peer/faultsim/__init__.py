"""An in-process fault simulator for the daemon's protocol (deterministic simulation testing).

Several real ``PeerDaemon``s run on one event loop whose clock is virtual (``clock.py``: time jumps to
the next timer, so a schedule of many seconds runs in milliseconds), over the memory transport, with
stand-in peers that hold a few float64 tensors instead of a model (``stand_in.py``). A seeded
``FaultSchedule`` (``faults.py``) loses, delays and repeats messages at every step of the protocol,
partitions and heals peers, and crashes peers at any await point or in the middle of a write, then
restarts them from what their store holds. ``checker.py`` asserts the invariants over what the peers
wrote. ``python -m peer.faultsim --schedules N`` runs N schedules; a failing one prints its seed and
``--seed S`` replays it.
"""

from peer.faultsim.run import ScheduleResult, run_schedule

__all__ = ["ScheduleResult", "run_schedule"]
