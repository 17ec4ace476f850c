"""The daemon keeps the memory it frees, so that each round's payload buffers land on pages already mapped.

glibc's malloc serves every allocation above 32 MiB with a fresh ``mmap`` and gives it back with
``munmap`` when freed. A daemon whose adapter is larger than that therefore receives every round's
payload, and encodes its own, into new pages. The kernel faults each page in and zeroes it on first
touch: about 0.6 ms per MB on the 2-core VM of ``benchmarks/README.md`` section 5, more than the
copy itself. With mmap off and the heap's top kept, a freed buffer is reused the next round. There,
a 200 MB swap took 0.280 s instead of 0.385 s, medians of four alternating runs of
``benchmarks/gossip_throughput.py --freed-memory reuse`` and ``return``. 3 and 30 MB swaps took 0.74
and 0.88 times as long: below 32 MiB glibc's own threshold adapts (a freed mapping raises it to that
size), but not before the first free.

This applies to the main thread, where the event loop encodes and decodes payloads. A worker
thread's allocation above 64 MiB (training, evaluation, the writer) still gets a mapping of its own:
glibc's arenas for other threads are at most 64 MiB each.

The price is resident memory: the process keeps its peak instead of giving freed memory back. Free
memory at the heap's top is kept up to ``KEEP_FREED_BYTES``; free gaps inside the heap are kept
anyway. A daemon's peak recurs every round, at the exchange, so it needs that memory again within a
round. The daemon turns this on after its model is built, so the memory of loading the model is
still given back.

Only glibc has these knobs. Elsewhere (musl, macOS) this does nothing.
"""

from __future__ import annotations

import ctypes
import os

# mallopt's parameters, from glibc's <malloc.h>
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
# the free memory at the heap's top that is kept rather than given back: mallopt takes a C int
KEEP_FREED_BYTES = 2**31 - 1


def keep_freed_memory_for_reuse() -> bool:
    """Serve large allocations from the heap and keep freed memory mapped; False where the C library
    is not glibc or refused (nothing changed then)."""
    if not _is_glibc():
        return False
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)  # the C library this process runs on
    if mallopt is None:
        return False
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, KEEP_FREED_BYTES))


def _is_glibc() -> bool:
    try:
        return os.confstr("CS_GNU_LIBC_VERSION") is not None  # "glibc 2.36"; an error elsewhere
    except (ValueError, OSError, AttributeError):
        return False
