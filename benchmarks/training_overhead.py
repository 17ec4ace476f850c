"""Training throughput of a gossiping daemon against a bare peft training loop, side by side.

    python benchmarks/training_overhead.py [--peers 2] [--rounds 8] [--local-steps 10] [--batch-size 8] [--repeats 3]

bare: MiniLM + peft LoRA (the run's rank, alpha, dropout and targets; the classification head
trained too when the run trains it, as peft's SEQ_CLS task type does), AdamW; process i trains peer
i's shard on exactly the batches the daemon of peer i times (rounds 1 to the last, in its batch
order); nothing else; one torch thread, in ``--peers`` processes at once (so that the bare loops
share the machine exactly as the daemons do). Samples/s after one warm-up step, median over the
processes. Both sides run in the precision ``--precision`` resolves to (auto: bf16 autocast on a CPU
that computes bf16 natively, as the daemon picks; fp32 elsewhere): before, the bare loop ran fp32
beside bf16 daemons on such a CPU, and came out 0.79 of them.

daemon: ``--peers`` real ``tadlora run`` daemons on loopback (real gRPC and mDNS, one torch thread
each, the same model, data, batch and steps, complete graph, lora so that every round trains and
mixes both factors), from rounds.jsonl:
  - training throughput: samples / time spent in local training, which is what gossip could slow
    down (the daemon answers neighbours' streams while it trains: on its event loop, not its training
    thread);
  - end-to-end throughput: samples / wall time of the run's rounds, training + exchange + mixing +
    checkpoint: what synchronous rounds cost on top.

Prints both ratios against bare (target for training throughput: >= 0.95), and end to end against the
bare loops held to synchronous rounds (each bare round as long as the slowest peer's batches of that
round): the pace a daemon of synchronous rounds could reach on these batches if the rest of its round
cost nothing. That ratio is what the daemon costs beyond the barrier, its training thread's speed
included, up to the noise between the two runs. With 2 peers on 2 cores each daemon has a core, as
each bare loop does.

``--repeats``: the daemons and the bare loops run one after the other, so a machine whose speed drifts
moves one side and not the other (the bare loop alone moved by 10 % between runs on this VM). Each
repeat runs both, alternating which goes first; the script prints every repeat and the medians.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import statistics
import tempfile
import time
from pathlib import Path

import torch

from peer.config import load_config
from peer.testbed import Testbed
from peer.training.precision import Precision, resolve_precision


def bare_loop(cfg, peer_index: int, precision: Precision) -> list[float]:
    """Seconds of each timed round of a plain peft loop (transformers + peft only, no tadlora training
    code; a round is ``local_steps`` steps), its forward pass under ``torch.autocast`` when the daemon's
    precision is bf16, as a user's loop on such a CPU."""
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import AutoModelForSequenceClassification

    from peer.core.run_setup import prepare_data
    from peer.training.adapters import resolve_model_path
    from peer.training.trainer import BatchPlan, collate

    torch.set_num_threads(1)
    data = prepare_data(cfg)
    shard = data.shards[peer_index]
    base = AutoModelForSequenceClassification.from_pretrained(resolve_model_path(cfg.model), num_labels=2)
    lora = LoraConfig(
        task_type=TaskType.SEQ_CLS if cfg.train_head else None,  # SEQ_CLS: the head trains beside the factors
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=[name.strip() for name in cfg.lora_targets.split(",") if name.strip()],
    )
    model = get_peft_model(base, lora)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.learning_rate)
    model.train()
    # the very batches the daemon of this peer times (its shard, its batch order, rounds 1 on; batch g
    # is step g % local_steps of round g // local_steps), after one warm-up step on its first batch:
    # batches of similar length differ in cost, so other batches would measure other arithmetic
    lengths = [len(ids) for ids in shard.input_ids]
    order = BatchPlan(len(shard), cfg.batch_size, lengths, cfg.seed, peer_index, cfg.batching, cfg.local_steps)
    timed = range(cfg.local_steps, cfg.rounds * cfg.local_steps)
    batches = [order.batch(0)] + [order.batch(g) for g in timed]
    step_seconds = []
    for indices in batches:
        started = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision is Precision.BF16):
            loss = model(**collate(shard, indices, torch.device("cpu"))).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step_seconds.append(time.perf_counter() - started)
    timed_steps = step_seconds[1:]  # after one warm-up step
    return [sum(timed_steps[at : at + cfg.local_steps]) for at in range(0, len(timed_steps), cfg.local_steps)]


def barrier_bound(per_peer_round_seconds: list[list[float]], samples_per_round: int) -> float:
    """Samples/s per peer of the bare loops held to synchronous rounds: each round lasts as long as its
    slowest peer's batches of that round. No daemon with synchronous rounds can beat it; what it loses
    to the free-running bare loop is the algorithm's barrier on unequal shards, not the daemon's cost."""
    rounds = zip(*per_peer_round_seconds, strict=True)
    return samples_per_round * len(per_peer_round_seconds[0]) / sum(max(seconds) for seconds in rounds)


def daemon_run(cfg, out: Path) -> tuple[list[float], list[float]]:
    """Per peer: samples/s of its local training, and end to end."""
    bed = Testbed(cfg, out, dict(discovery_wait=30.0, round_timeout_max=30.0))
    bed.run_all(timeout=1800)
    training, end_to_end = [], []
    for i in range(cfg.peers):
        rounds = bed.rounds(i)[1:]  # the first round includes warm-up
        samples = len(rounds) * cfg.local_steps * cfg.batch_size
        training.append(samples / sum(r["train_seconds"] for r in rounds))
        end_to_end.append(samples / sum(r["seconds"] for r in rounds))
    return training, end_to_end


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--peers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--local-steps", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--repeats", type=int, default=3, help="daemon and bare runs, alternating which goes first")
    parser.add_argument(
        "--precision", default="auto", help="auto | fp32 | bf16, for both sides (auto: bf16 on a CPU that has it)"
    )
    args = parser.parse_args()
    cfg = load_config(
        overrides=dict(
            references="none",
            strategy="lora",
            consensus_rounds=0,  # per-round figures: every round trains
            peers=args.peers,
            topology="complete",
            rounds=args.rounds,
            local_steps=args.local_steps,
            batch_size=args.batch_size,
            max_length=args.max_length,
            eval_every=10**6,
            eval_samples=50,
            device="cpu",
            precision=args.precision,
        )
    )
    # both sides in the precision the daemon runs in: the ratio is about what the daemon adds
    precision = resolve_precision(cfg.precision, torch.device("cpu"))
    out = args.out or Path(tempfile.mkdtemp(prefix="tadlora-overhead-"))
    repeats = [measure(cfg, precision, out / f"repeat-{k}", daemons_first=k % 2 == 0) for k in range(args.repeats)]
    print(f"precision: {precision}; {args.repeats} repeat(s), daemons and bare loops in alternating order\n")
    columns = ["repeat", "bare", "daemon, training", "daemon, end to end", "bare held to synchronous rounds"]
    print("| " + " | ".join([*columns, "end to end / bare"]) + " |\n" + "|---" * (len(columns) + 1) + "|")
    for k, r in enumerate(repeats):
        figures = " | ".join(f"{r[key]:.2f}" for key in FIGURES)
        print(f"| {k} | {figures} | {r['daemon_end_to_end_samples_per_s'] / r['bare_samples_per_s']:.2f} |")
    report(repeats, cfg.peers)
    print_per_peer(*repeats[-1]["per_peer"])


FIGURES = (
    "bare_samples_per_s",
    "daemon_training_samples_per_s",
    "daemon_end_to_end_samples_per_s",
    "bare_synchronous_samples_per_s",
)


def measure(cfg, precision: Precision, out: Path, daemons_first: bool) -> dict:
    """One daemon run and one run of the bare loops, in the order given: on a noisy machine the two
    sides drift apart between runs, so repeats alternate which goes first."""

    def bare() -> list[list[float]]:
        with mp.get_context("spawn").Pool(cfg.peers) as pool:
            return pool.starmap(bare_loop, [(cfg, i, precision) for i in range(cfg.peers)])

    if daemons_first:
        (per_peer_training, per_peer_end_to_end), per_peer_rounds = daemon_run(cfg, out), bare()
    else:
        per_peer_rounds = bare()
        per_peer_training, per_peer_end_to_end = daemon_run(cfg, out)
    samples_per_round = cfg.local_steps * cfg.batch_size
    per_peer_bare = [samples_per_round * len(seconds) / sum(seconds) for seconds in per_peer_rounds]
    bare_median, training, end_to_end = map(statistics.median, (per_peer_bare, per_peer_training, per_peer_end_to_end))
    return {
        "bare_samples_per_s": bare_median,
        "daemon_training_samples_per_s": training,
        "daemon_end_to_end_samples_per_s": end_to_end,
        "bare_synchronous_samples_per_s": barrier_bound(per_peer_rounds, samples_per_round),
        "per_peer": (per_peer_bare, per_peer_training, per_peer_end_to_end),
    }


def report(repeats: list[dict], peers: int) -> None:
    """Samples/s: the medians over the repeats. Ratios: the median of each repeat's ratio, the two sides
    of a ratio always from the same repeat."""
    median = {key: statistics.median(r[key] for r in repeats) for key in FIGURES}
    print(json.dumps({key: round(value, 2) for key, value in median.items()}))

    def ratio(top: str, bottom: str) -> float:
        return statistics.median(r[top] / r[bottom] for r in repeats)

    bare, training, end_to_end, synchronous = FIGURES
    rows = [
        (f"bare peft loop (median of {peers} processes, 1 thread each)", bare),
        (f"daemon, local training (median of {peers})", training),
        ("daemon, end to end (training + exchange + mix + checkpoint)", end_to_end),
        ("bare loops held to synchronous rounds (each round as long as its slowest peer's)", synchronous),
    ]
    print("\nmedians over the repeats\n| | samples/s | ratio to bare |\n|---|---|---|")
    for label, key in rows:
        print(f"| {label} | {median[key]:.2f} | {ratio(key, bare):.2f} |")
    ratios = [r[end_to_end] / r[bare] for r in repeats]
    print(
        f"\ndaemon end to end / bare loops held to synchronous rounds: {ratio(end_to_end, synchronous):.2f} (the "
        f"daemon's cost beyond the barrier, its training speed included; the barrier on unequal shards costs "
        f"{1 - ratio(synchronous, bare):.0%} of the free-running bare loop)\n"
        f"end to end / bare, repeat by repeat: {', '.join(f'{r:.2f}' for r in ratios)} "
        f"(median {statistics.median(ratios):.2f}, spread {min(ratios):.2f} to {max(ratios):.2f})"
    )


def print_per_peer(bare: list[float], training: list[float], end_to_end: list[float]) -> None:
    """Each peer against its own bare loop, and against the slowest one. Rounds are synchronous, so a
    faster peer waits for the slower; the tighter bound is the bare loops held to synchronous rounds
    (``barrier_bound``: in each round the slower peer's batches of that round, whichever peer it is)."""
    slowest = min(bare)
    columns = ["peer", "bare", "daemon, training", "daemon, end to end", "end to end / own bare"]
    columns.append("end to end / slowest bare")
    print("\n| " + " | ".join(columns) + " |\n|" + "---|" * len(columns))
    for i, (b, t, e) in enumerate(zip(bare, training, end_to_end, strict=True)):
        print(f"| {i} | {b:.2f} | {t:.2f} | {e:.2f} | {e / b:.2f} | {e / slowest:.2f} |")


if __name__ == "__main__":
    main()
