"""The daemon keeps the memory it frees (``peer.daemon.memory``): large buffers come from the heap."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from peer.daemon import memory

# allocates a buffer above glibc's largest mmap threshold (32 MiB) and says whether it lies in [heap]
WHERE_A_LARGE_BUFFER_LIES = """
import ctypes, sys
from peer.daemon.memory import keep_freed_memory_for_reuse
if sys.argv[1] == "reuse":
    assert keep_freed_memory_for_reuse()
buffer = bytearray(64 << 20)
address = ctypes.addressof((ctypes.c_char * len(buffer)).from_buffer(buffer))
for line in open("/proc/self/maps"):
    if line.rstrip().endswith("[heap]"):
        start, end = (int(x, 16) for x in line.split()[0].split("-"))
        print("heap" if start <= address < end else "elsewhere")
        break
else:
    print("elsewhere")
"""

glibc_only = pytest.mark.skipif(not memory._is_glibc(), reason="the knobs are glibc's")


def _where(mode: str) -> str:
    # nothing inherited that swaps the allocator (LD_PRELOAD, PYTHONMALLOC, GLIBC_TUNABLES): glibc's own
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(Path(memory.__file__).parents[2])}
    out = subprocess.run(
        [sys.executable, "-c", WHERE_A_LARGE_BUFFER_LIES, mode], capture_output=True, text=True, env=env, check=True
    )
    return out.stdout.strip()


@glibc_only
def test_a_large_buffer_comes_from_the_heap_once_freed_memory_is_kept():
    assert _where("return") == "elsewhere"  # glibc's default: a fresh mapping of its own
    assert _where("reuse") == "heap"


def test_without_glibc_nothing_changes(monkeypatch):
    def not_glibc(name):
        raise ValueError("unrecognized configuration name")

    monkeypatch.setattr(memory.os, "confstr", not_glibc)
    assert memory.keep_freed_memory_for_reuse() is False
