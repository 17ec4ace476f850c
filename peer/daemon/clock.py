"""How long a round's exchange phase waits for its neighbours: adapted to what was observed.

A peer's exchange phase ends when every link it attempts this round has either counted or failed,
or at the deadline. The deadline is

    clamp(factor × p90(recent settle times), minimum, maximum)

where a settle time is the time from the start of the exchange phase to the moment the last link of
that round counted. Before anything was observed (the first round, when processes start at different
times) the deadline is ``maximum``.

Setting the bounds (``--round-timeout-min``, ``--round-timeout-max``):

- ``minimum`` must cover the usual spread between peers finishing their local training plus one
  transfer of the factors. Too small shows as links that fail every few rounds between healthy
  peers (``edges`` below the expected count in ``rounds.jsonl``) and peers drifting out of step.
- ``maximum`` is how long a round waits for a neighbour that died or is partitioned away. Too large
  makes every round with a dead neighbour that slow; too small cuts off a slow but healthy peer (a
  slower GPU) from every exchange. A few times the local training time of one round is a good start.
"""

from __future__ import annotations

from collections import deque

import numpy as np


class AdaptiveDeadline:
    def __init__(self, minimum: float, maximum: float, factor: float = 2.0, window: int = 20) -> None:
        if not 0 < minimum <= maximum:
            raise ValueError(f"round timeouts need 0 < minimum <= maximum, got {minimum} and {maximum}")
        self.minimum, self.maximum, self.factor = minimum, maximum, factor
        self.samples: deque[float] = deque(maxlen=window)

    def observe(self, settle_seconds: float) -> None:
        self.samples.append(settle_seconds)

    def current(self) -> float:
        if not self.samples:
            return self.maximum
        return float(np.clip(self.factor * np.quantile(list(self.samples), 0.9), self.minimum, self.maximum))
