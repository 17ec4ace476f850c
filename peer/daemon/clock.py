"""How long a round's exchange phase waits for its neighbours: adapted to what was observed.

A peer's exchange phase ends when every link it attempts this round is decided, or at the deadline.
The deadline is

    clamp(max(factor × p90(recent settle times), stretch), minimum, maximum)

where a settle time is the time from the start of the exchange phase to the moment the last link of
that round counted. Waits for links that failed never enter it: a dead or hung neighbour must not
lengthen every round (before, the p90 window filled with deadline values and the deadline climbed to
the maximum for good). ``stretch`` covers the opposite case: a round that attempted links and counted
none (a lossy network whose swaps need longer than the deadline allows, so no settle time would ever
be observed) doubles the allowance for the next round, up to the maximum; the first round in which a
link counts drops it. Before anything was observed (the first round, when processes start at
different times) the deadline is ``maximum``.

Setting the bounds (``--round-timeout-min``, ``--round-timeout-max``):

- ``minimum`` must cover the usual spread between peers finishing their local training plus one
  transfer of the factors. Too small shows as links that fail every few rounds between healthy
  peers (``neighbours`` shorter than ``attempted`` in ``rounds.jsonl``) and peers drifting out of step.
- ``maximum`` is the first round's wait, and how long a round waits at most when nothing counts. Too
  large makes a peer cut off from everyone that slow; too small cuts off a slow but healthy peer (a
  slower GPU) from every exchange. A few times the local training time of one round is a good start.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence

STRETCH_FACTOR = 2.0
"""A round in which nothing counted allows this much more time to the next (up to the maximum): a
network that got slower is followed within a few rounds instead of a whole window."""
SAFETY_FACTOR = 2.0
"""The deadline is this × the settle-time quantile below. Too small: links of a round that is only a
little slower than usual miss the deadline (``DEADLINE_EXCEEDED`` in the log, fewer links counted)."""
SETTLE_QUANTILE = 0.9
"""Which quantile of recent settle times the deadline follows: one slow round in ten does not move it."""
SETTLE_WINDOW_ROUNDS = 20
"""How many recent rounds' settle times are kept. Too small: a single slow round sets the deadline;
too large: the deadline follows a change of the network late."""


class AdaptiveDeadline:
    def __init__(
        self, minimum: float, maximum: float, factor: float = SAFETY_FACTOR, window: int = SETTLE_WINDOW_ROUNDS
    ) -> None:
        if not 0 < minimum <= maximum:
            raise ValueError(f"round timeouts need 0 < minimum <= maximum, got {minimum} and {maximum}")
        self.minimum, self.maximum, self.factor = minimum, maximum, factor
        self.samples: deque[float] = deque(maxlen=window)
        self.stretch = 0.0

    def observe(self, settle_seconds: float) -> None:
        """A round in which links counted, the last one ``settle_seconds`` into the exchange phase."""
        self.samples.append(settle_seconds)
        self.stretch = 0.0

    def nothing_counted(self) -> None:
        """A round that attempted links and counted none: allow more time next round."""
        self.stretch = min(self.maximum, STRETCH_FACTOR * self.current())

    def current(self) -> float:
        if not self.samples:
            return self.maximum
        learned = self.factor * quantile(self.samples, SETTLE_QUANTILE)
        return min(max(learned, self.stretch, self.minimum), self.maximum)


def quantile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile of ``values`` interpolated linearly between the closest ranks (numpy's default),
    in plain Python: for a window of 20 values numpy's call overhead cost ~0.3 ms, three times a round."""
    ranked = sorted(values)
    position = q * (len(ranked) - 1)
    below = math.floor(position)
    above = min(below + 1, len(ranked) - 1)
    return ranked[below] + (ranked[above] - ranked[below]) * (position - below)
