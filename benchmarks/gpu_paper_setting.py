"""The paper's setting on a GPU: RoBERTa-large, LoRA r=8 on query/value, batch 32, length 128.

    python benchmarks/gpu_paper_setting.py [--model roberta-large] [--steps 30] [--peers 4]
    python benchmarks/gpu_paper_setting.py --random-weights     # no download: RoBERTa-large's shape

Needs a CUDA device and the model (downloaded from the Hugging Face hub on first use, or a local
folder through --model); it is not part of the test suite. It exits with a message, not an error,
where there is no CUDA device. --random-weights builds RoBERTa-large's architecture with random
weights instead (for a GPU machine that cannot reach the hub): step time and overhead depend on the
shapes, not on the values.

Reports, with tadlora's own training and gossip code on that device:
- step time: median seconds per optimizer step of LocalTrainer (tad, one factor trained, as in a
  TAD round), and samples/s;
- round overhead beyond training, per round of one peer with --peers-1 neighbours: reading the
  factors off the GPU and encoding them (safetensors), hashing, decoding and validating each
  neighbour's payload, mixing and loading the result back; the same path the daemon runs, minus the
  network (see gossip_throughput.py for that);
- the adapter's size in bytes and the overhead as a fraction of K = 10 local steps.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="roberta-large")
    parser.add_argument(
        "--random-weights", action="store_true", help="RoBERTa-large's shapes with random weights; no download"
    )
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--peers", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--device", default="cuda", help="cpu with --model tiny-bert: a smoke run of this script")
    parser.add_argument(
        "--precision", default="auto", help="auto | fp32 | bf16 | fp16 (auto: bf16 on a GPU that has it)"
    )
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("no CUDA device here: this benchmark needs one (it is not part of the tests)")
        return

    from peer.algorithm.mixing import metropolis_hastings_matrix
    from peer.config import load_config
    from peer.core.local_peer import LocalPeer
    from peer.core.run_setup import lora_settings, pick_device, strategy_for, topology_for
    from peer.training.adapters import AdapterModel
    from peer.training.precision import resolve_precision
    from peer.training.tokenizer import Encoded
    from peer.training.trainer import LocalTrainer
    from peer.transport.codec import decode_factors, encode_factors, payload_digest, schema_of

    model_name = _random_roberta_large() if args.random_weights else args.model
    cfg = load_config(
        overrides=dict(
            model=model_name,
            consensus_rounds=0,  # per-round figures: every round trains
            batch_size=args.batch_size,
            max_length=args.max_length,
            peers=args.peers,
            topology="complete",
            device=args.device,
            strategy="tad",
            local_steps=args.steps,
        )
    )
    device = pick_device(cfg.device)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    model = AdapterModel(cfg.model, 2, ["peer-00"], lora_settings(cfg), seed=0, device=device)
    adapter = model["peer-00"]
    # synthetic token ids of full length: the cost of a step does not depend on the text
    g = torch.Generator().manual_seed(0)
    n = 4 * args.batch_size
    shard = Encoded(
        [torch.randint(5, 1000, (args.max_length,), generator=g).tolist() for _ in range(n)],
        None,
        torch.randint(0, 2, (n,), generator=g).numpy(),
        1,
    )
    precision = resolve_precision(args.precision, device)
    trainer = LocalTrainer(adapter, shard, args.batch_size, cfg.learning_rate, 0, 0, precision)
    strategy = strategy_for(cfg, topology_for(cfg))
    peer = LocalPeer("peer-00", adapter, trainer, strategy, 1)

    step_times = []
    for step in range(args.steps + 3):
        sync()
        start = time.perf_counter()
        peer.train(step)
        sync()
        if step >= 3:  # warm-up: kernels, allocator
            step_times.append(time.perf_counter() - start)

    weights = metropolis_hastings_matrix(args.peers, [(0, j) for j in range(1, args.peers)])
    schema = schema_of(adapter.factors())
    overheads = []
    for round_ in range(10):
        sync()
        start = time.perf_counter()
        payload = encode_factors(peer.outgoing(round_))
        digest = payload_digest(payload)
        received = {}
        for j in range(1, args.peers):  # neighbours' payloads: here copies of ours, decoded as if received
            assert payload_digest(payload) == digest
            received[j] = {
                k: v.to(device) for k, v in decode_factors(payload, schema, set(peer.outgoing(round_))).items()
            }
        peer.mix(round_, received, {j: weights[0, j] for j in received}, weights[0, 0])
        sync()
        overheads.append(time.perf_counter() - start)

    step = statistics.median(step_times)
    overhead = statistics.median(overheads)
    name = torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu"
    model_label = "roberta-large (random weights)" if args.random_weights else args.model
    print(
        f"device: {name}; model {model_label}, r=8 query/value, batch {args.batch_size}, "
        f"length {args.max_length}, precision {precision}"
    )
    print(
        f"adapter: {sum(v.numel() for v in adapter.factors().values()):,} parameters, {len(payload):,} bytes per "
        f"phase payload"
    )
    print(f"step: {step * 1e3:.1f} ms median ({args.batch_size / step:.1f} samples/s)")
    print(
        f"round overhead beyond training ({args.peers - 1} neighbours, no network): {overhead * 1e3:.1f} ms "
        f"median = {overhead / (10 * step):.3f} of 10 local steps"
    )


# RoBERTa-large as published (roberta-large's config.json); only the shapes matter to the timings
ROBERTA_LARGE_SHAPE = dict(
    vocab_size=50265,
    hidden_size=1024,
    num_hidden_layers=24,
    num_attention_heads=16,
    intermediate_size=4096,
    max_position_embeddings=514,
    type_vocab_size=1,
    pad_token_id=1,
)


def _random_roberta_large() -> str:
    """A folder holding RoBERTa-large's architecture with random weights, loadable like a download;
    removed when the script exits (1.4 GB)."""
    import atexit
    import shutil
    import tempfile

    from transformers import RobertaConfig, RobertaForSequenceClassification

    folder = tempfile.mkdtemp(prefix="roberta-large-random-")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    torch.manual_seed(0)
    RobertaForSequenceClassification(RobertaConfig(**ROBERTA_LARGE_SHAPE, num_labels=2)).save_pretrained(folder)
    return folder


if __name__ == "__main__":
    main()
