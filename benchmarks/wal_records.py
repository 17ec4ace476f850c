"""What a round's write-ahead record costs on this disk: links appended as records (now) against the
whole record rewritten for every link (before), side by side in one run.

    python benchmarks/wal_records.py [--sizes-mb 0.3,3,30,100] [--links 3] [--repeats 3]

For an adapter of S MB a round opens with ``wal.pt`` holding the peer's local state (its factors and
AdamW's two moments: 3 S), then records each of ``--links`` links (a neighbour's factors: S) before
its commit or ack, which is on the exchange's critical path. ``appended``: ``Persistence`` as the
daemon runs it (one checksummed, fsynced record per link in ``wal-links.bin``). ``rewritten``: the
previous scheme, emulated with the same store: ``wal.pt`` rewritten atomically (temp file, fsync,
rename, directory fsync) with all the links so far, for every link. Prints the median time of the
links' records per round and the ratio.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from peer.daemon.persistence import WAL, FolderStore, Persistence


def tensors(megabytes: float, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"layer.lora_A.weight": torch.randn(max(1, int(megabytes * 1e6) // 4), generator=g)}


def round_of_links(folder: Path, size_mb: float, links: int, rewrite: bool) -> float:
    """Seconds spent recording ``links`` links of one round (the round's opening not counted)."""
    files = Persistence(FolderStore(folder))
    local = {"factors": tensors(size_mb, 0), "exp_avg": tensors(size_mb, 1), "exp_avg_sq": tensors(size_mb, 2)}
    peers = [f"peer-{i:02d}" for i in range(1, links + 1)]
    files.open_round(0, local, peers, {})
    received = {pid: tensors(size_mb, 10 + i) for i, pid in enumerate(peers)}
    start = time.perf_counter()
    for pid in peers:
        if rewrite:  # the previous record_link: the link into the record, the whole record rewritten
            assert files.wal is not None
            files.wal.links[pid] = {"tensors": received[pid], "degree": links, "bytes": 0, "final": True}
            files.store.write(WAL, files.form.dumps(files.wal.as_dict()))
        else:
            files.record_link(0, pid, received[pid], links, 0, final=True)
    elapsed = time.perf_counter() - start
    files.discard_wal()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes-mb", default="0.3,3,30,100")
    parser.add_argument("--links", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dir", default=None, help="where to write (default: a temporary folder)")
    args = parser.parse_args()
    print(f"| adapter | rewritten (median s, {args.links} links) | appended (median s) | ratio rewritten/appended |")
    print("|---|---|---|---|")
    for size in (float(s) for s in args.sizes_mb.split(",")):
        times: dict[bool, list[float]] = {True: [], False: []}
        with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
            for _ in range(args.repeats):  # alternate, so that both see the same disk
                for rewrite in (True, False):
                    times[rewrite].append(round_of_links(Path(tmp) / str(rewrite), size, args.links, rewrite))
        old, new = statistics.median(times[True]), statistics.median(times[False])
        print(f"| {size:g} MB | {old:.4f} | {new:.4f} | {old / new:.1f} |", flush=True)


if __name__ == "__main__":
    main()
