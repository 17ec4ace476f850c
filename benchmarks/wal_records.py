"""What a round's link records cost on this disk, three schemes side by side in one run.

    python benchmarks/wal_records.py [--sizes-mb 0.3,3,30,100] [--links 3] [--repeats 3] [--wire-dtype fp32]

For an adapter of S MB (as MiniLM's: 24 factors of rank r, r scaled to reach S) a round opens with
``wal.pt`` holding the peer's local state (its factors and AdamW's two moments: 3 S), then records each
of ``--links`` links before its commit or ack, which is on the exchange's critical path:

``payload``    ``Persistence`` as the daemon runs it now: one checksummed, fsynced record per link in
               ``wal-links.bin`` holding the payload as it arrived (in ``--wire-dtype`` form).
``factors``    the previous record: the same appended record, holding the decoded factors, one
               tensor each (emulated with the same store).
``rewritten``  the scheme before that: ``wal.pt`` rewritten atomically (temp file, fsync, rename,
               directory fsync) with all the links so far, for every link.

Prints the median time of a round's link records per scheme and the ratios to ``payload``.
"""

from __future__ import annotations

import argparse
import enum
import statistics
import tempfile
import time
from pathlib import Path

import torch

from peer.algorithm.compression import WireDtype
from peer.daemon.persistence import WAL, WAL_LINKS, FolderStore, Persistence
from peer.daemon.rounds import Received
from peer.transport.codec import decode_factors, encode_factors, schema_of

MINILM_LAYERS, MINILM_HIDDEN = 6, 384  # 6 layers x (query, value) x (A, B): MiniLM's 24 factors
MINILM_RANK_MB = 24 * MINILM_HIDDEN * 4 / 1e6  # MB per unit of rank, in fp32


class Scheme(enum.Enum):
    REWRITTEN = "rewritten"
    FACTORS = "factors"
    PAYLOAD = "payload"


def factors(megabytes: float, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    rank = max(1, round(megabytes / MINILM_RANK_MB))
    out = {}
    for layer in range(MINILM_LAYERS):
        for module in ("query", "value"):
            name = f"base_model.model.bert.encoder.layer.{layer}.attention.self.{module}"
            out[f"{name}.lora_A.weight"] = torch.randn(rank, MINILM_HIDDEN, generator=g)
            out[f"{name}.lora_B.weight"] = torch.randn(MINILM_HIDDEN, rank, generator=g)
    return out


def received_from(tensors: dict[str, torch.Tensor], degree: int, wire: WireDtype) -> Received:
    """A link as the daemon has it: the payload as it came, and its factors decoded from it."""
    payload = bytearray(encode_factors(tensors, wire))
    decoded = decode_factors(payload, schema_of(tensors), set(tensors))
    return Received(decoded, degree, len(payload), payload, ("A", "B"))


def round_of_links(folder: Path, size_mb: float, links: int, scheme: Scheme, wire: WireDtype) -> float:
    """Seconds spent recording ``links`` links of one round (the round's opening not counted)."""
    files = Persistence(FolderStore(folder))
    local = {"factors": factors(size_mb, 0), "exp_avg": factors(size_mb, 1), "exp_avg_sq": factors(size_mb, 2)}
    peers = [f"peer-{i:02d}" for i in range(1, links + 1)]
    files.open_round(0, local, peers, {})
    assert files.wal is not None
    received = {pid: received_from(factors(size_mb, 10 + i), links, wire) for i, pid in enumerate(peers)}
    start = time.perf_counter()
    for pid in peers:
        link = {"tensors": received[pid].tensors, "degree": links, "bytes": received[pid].payload_bytes, "final": True}
        if scheme is Scheme.REWRITTEN:  # the link into the round's record, the whole record rewritten
            files.wal.links[pid] = link
            files.store.write(WAL, files.form.dumps(files.wal.as_dict()))
        elif scheme is Scheme.FACTORS:  # the decoded factors appended
            record = {"round": 0, "nonce": files.wal.nonce, "peer": pid, **link}
            files.store.append_record(WAL_LINKS, files.form.dumps(record))
        else:
            files.record_link(0, pid, received[pid], final=True)
    elapsed = time.perf_counter() - start
    files.discard_wal()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes-mb", default="0.3,3,30,100")
    parser.add_argument("--links", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dir", default=None, help="where to write (default: a temporary folder)")
    parser.add_argument("--wire-dtype", default="fp32", help="the payload's form: fp32 | bf16 | fp16 | int8")
    args = parser.parse_args()
    wire = WireDtype(args.wire_dtype)
    print(f"{args.links} links a round, payloads in {wire}; median s of a round's link records\n")
    print("| adapter | rewritten | factors appended | payload appended | rewritten / payload | factors / payload |")
    print("|---|---|---|---|---|---|")
    for size in (float(s) for s in args.sizes_mb.split(",")):
        times: dict[Scheme, list[float]] = {scheme: [] for scheme in Scheme}
        with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
            for _ in range(args.repeats):  # alternate, so that all see the same disk
                for scheme in Scheme:
                    times[scheme].append(round_of_links(Path(tmp) / scheme.value, size, args.links, scheme, wire))
        old, factor, new = (statistics.median(times[scheme]) for scheme in Scheme)
        row = f"| {size:g} MB | {old:.4f} | {factor:.4f} | {new:.4f} | {old / new:.1f} | {factor / new:.2f} |"
        print(row, flush=True)


if __name__ == "__main__":
    main()
