"""What writing and reading a peer's state costs: the state file against ``torch.save``, side by side.

    python benchmarks/state_format.py [--sizes-mb 0.3,3,30] [--repeats 200]

A daemon turns a state into bytes several times a round: the write-ahead record when the round opens
(its factors with AdamW's two moments), one record per link (a neighbour's factors), and the next
round's checkpoint. This builds those states for LoRA adapters of MiniLM's shapes (r = 8 on query and
value of 6 layers, 24 factors, 295 KB) and of larger adapters with the same number of tensors, and
times ``dumps`` and ``loads`` of ``peer.daemon.state_file`` against ``torch.save`` and
``torch.load(weights_only=True)`` in alternation, one torch thread and freed memory kept for reuse, as a
daemon runs (``peer.daemon.memory``; ``--freed-memory return`` for glibc's default). Prints medians in
ms and the ratio torch / state file.
"""

from __future__ import annotations

import argparse
import io
import statistics
import time

import torch
from gossip_throughput import FreedMemory, add_freed_memory_argument, set_up_process

from peer.daemon.checkpoint import dump_state, load_state

MINILM_MB = 0.295
MODULES = 12  # query and value of 6 layers


def adapter(size_mb: float, seed: int) -> dict[str, torch.Tensor]:
    """24 factors of an adapter of ``size_mb``, shaped as r x d and d x r, as MiniLM's are."""
    g = torch.Generator().manual_seed(seed)
    d = max(1, round(size_mb * 1e6 / 4 / (2 * MODULES * 8)))
    return {
        f"layer.{i}.{name}.lora_{f}.weight": torch.randn(*((8, d) if f == "A" else (d, 8)), generator=g)
        for i in range(MODULES // 2)
        for name in ("query", "value")
        for f in "AB"
    }


def states(size_mb: float) -> dict[str, dict]:
    factors = adapter(size_mb, 0)
    moments = {
        i: {"step": torch.tensor(5.0), "exp_avg": t.clone(), "exp_avg_sq": t.square()}
        for i, t in enumerate(factors.values())
    }
    local = {
        "factors": factors,
        "optimizer": {"state": moments, "param_groups": [{"lr": 4e-3, "params": list(range(24))}]},
    }
    return {
        "write-ahead record": {"round": 12, "local_state": local, "candidates": ["peer-01", "peer-02"], "extras": {}},
        "link record": {"round": 12, "peer": "peer-01", "tensors": adapter(size_mb, 1), "degree": 3, "final": True},
    }


def torch_dumps(state: dict) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def torch_loads(data: bytes) -> dict:
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


def median_ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def side_by_side(theirs, ours, repeats: int) -> list[str]:
    """Median ms of each, timed alternately in 5 blocks so that a slow moment of the machine falls on both."""
    blocks = [(median_ms(theirs, max(1, repeats // 5)), median_ms(ours, max(1, repeats // 5))) for _ in range(5)]
    theirs_ms, ours_ms = (statistics.median(block[i] for block in blocks) for i in (0, 1))
    return [f"{theirs_ms:.3f}", f"{ours_ms:.3f}", f"{theirs_ms / ours_ms:.1f}"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes-mb", default=f"{MINILM_MB},3,30", help="adapter sizes, comma-separated")
    parser.add_argument("--repeats", type=int, default=200, help="timings of each (fewer are taken above 3 MB)")
    add_freed_memory_argument(parser)
    args = parser.parse_args()
    set_up_process(args.freed_memory == FreedMemory.REUSE)
    columns = ["adapter", "state", "bytes", "torch.save (ms)", "state file (ms)", "ratio"]
    columns += ["torch.load (ms)", "state file (ms)", "ratio"]
    print("| " + " | ".join(columns) + " |\n|" + "---|" * len(columns))
    for size in (float(s) for s in args.sizes_mb.split(",")):
        repeats = max(5, int(args.repeats * min(1.0, 3 / size)))
        for what, state in states(size).items():
            ours, theirs = dump_state(state), torch_dumps(state)
            assert load_state(ours).keys() == torch_loads(theirs).keys()
            row = side_by_side(lambda s=state: torch_dumps(s), lambda s=state: dump_state(s), repeats)
            row += side_by_side(lambda b=theirs: torch_loads(b), lambda b=ours: load_state(b), repeats)
            print(f"| {size:g} MB | {what} | {len(ours) / 1e6:.2f} MB | " + " | ".join(row) + " |", flush=True)


if __name__ == "__main__":
    main()
