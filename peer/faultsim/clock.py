"""An asyncio event loop on virtual time: when nothing is ready, the clock jumps to the next timer.

Everything in the daemon that waits (deadlines, timeouts, sleeps) asks the loop for the time, so on
this loop a schedule that spans minutes of protocol time runs as fast as the CPU executes the
callbacks, and runs identically every time. There is no I/O: a loop with nothing ready and no timer
is stuck for good, and says so (``Deadlock``) instead of hanging.
"""

from __future__ import annotations

import asyncio
import selectors

from peer.errors import TadloraError


class Deadlock(TadloraError, RuntimeError):
    """Nothing is ready and nothing is scheduled: every task waits for something that cannot happen."""


class _VirtualSelector(selectors.BaseSelector):
    def __init__(self) -> None:
        self.clock = 0.0
        self._keys: dict[int, selectors.SelectorKey] = {}

    def register(self, fileobj, events, data=None):
        fd = fileobj if isinstance(fileobj, int) else fileobj.fileno()
        key = selectors.SelectorKey(fileobj, fd, events, data)
        self._keys[fd] = key
        return key

    def unregister(self, fileobj):
        fd = fileobj if isinstance(fileobj, int) else fileobj.fileno()
        return self._keys.pop(fd)

    def select(self, timeout=None):
        if timeout is None:
            raise Deadlock("no task can make progress and no timer is set")
        self.clock += max(0.0, timeout)
        return []

    def get_map(self):
        return self._keys

    def close(self) -> None:
        self._keys.clear()


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    def __init__(self) -> None:
        self._virtual = _VirtualSelector()
        super().__init__(self._virtual)

    def time(self) -> float:
        return self._virtual.clock
