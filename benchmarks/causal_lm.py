"""Decentralized fine-tuning of a causal LM (SmolLM2-135M-Instruct, the offline default of
``--task-type causal-lm``) on instructions: what it learns, and what a step costs.

    python benchmarks/causal_lm.py learning [--seeds 0,1,2] [--edge-probs 0.5,0.1] [--rounds 15]
    python benchmarks/causal_lm.py speed [--steps 6]

``learning``: tad and lora at each edge probability, with each peer alone and one model on all the data
(the references, at the same budget and seed), on TREC asked as an instruction ("What kind of answer
does this question ask for?" -> "a location", ...) with the paper's label skew over its six classes
(4 peers: each holds 0.9 of one class). Accuracy is by scoring the six candidate answers; perplexity
is on the right answers. Cells are mean ± sd over seeds.

``speed``: the training step of one peer (batch 8 of TREC instructions), as Hugging Face computes the
loss (right-padded batch, the output layer over every position) and as the trainer does (answers
aligned at the end, the output layer over the answer positions only), alternating, median of
``--steps``; and in bf16 where the CPU computes it natively (``peer.training.precision``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from grid import markdown_table, mean_spread, references, run

from peer.config import load_config
from peer.core.run_setup import build_model, prepare_data
from peer.training.causal import answer_loss, collate_answers
from peer.training.precision import Precision, autocast, cpu_computes_bf16_natively
from peer.training.trainer import collate

CAUSAL = {"task_type": "causal-lm", "peers": 4, "local_steps": 2, "batch_size": 8}


def _timed_step(model, loss_of, precision: Precision) -> float:
    started = time.perf_counter()
    with autocast(torch.device("cpu"), precision):
        loss = loss_of()
    loss.backward()
    model.zero_grad(set_to_none=True)
    return time.perf_counter() - started


def speed(steps: int) -> None:
    cfg = load_config(overrides={**CAUSAL, "device": "cpu", "references": "none"})
    data = prepare_data(cfg)
    model = build_model(cfg, data.task.num_labels, ["a"])
    adapter, peft_model = model["a"], model.peft_model
    adapter.activate(frozenset({"A", "B"}))
    peft_model.train()
    shard, device = data.shards[0], model.device
    batches = [list(range(8 * s, 8 * s + 8)) for s in range(steps + 1)]
    ways = {
        "Hugging Face loss (right-padded, every position)": lambda b: peft_model(**collate(shard, b, device)).loss,
        "trainer (answers aligned, their positions only)": lambda b: answer_loss(
            peft_model, collate_answers(shard, b, device)
        ),
    }
    precisions = [Precision.FP32] + ([Precision.BF16] if cpu_computes_bf16_natively() else [])
    times: dict[str, list[float]] = {}
    for precision in precisions:
        for loss_of in ways.values():
            _timed_step(peft_model, lambda lo=loss_of: lo(batches[0]), precision)  # warm-up
        for b in batches[1:]:  # alternating: a slow patch of the machine hits both alike
            for name, loss_of in ways.items():
                key = f"{name}, {precision}"
                times.setdefault(key, []).append(
                    _timed_step(peft_model, lambda lo=loss_of, b=b: lo(b), precision)  # type: ignore[misc]
                )
    tokens = statistics.mean(len(shard.input_ids[i]) for b in batches[1:] for i in b)
    print(f"SmolLM2-135M-Instruct, LoRA r=8 on q_proj,v_proj, batch 8 of TREC, {tokens:.0f} tokens per example")
    base = None
    for key, values in times.items():
        median = statistics.median(values)
        base = base or median
        print(f"{key:<70} median {median:6.2f} s/step  ({8 / median:5.2f} samples/s, ratio {base / median:.2f})")
    if not cpu_computes_bf16_natively():
        print("bf16: not measured; this CPU has no AVX512-BF16/AMX (PyTorch emulates it, 30x slower than fp32)")


def learning(seeds: list[int], edge_probs: list[float], rounds: int, eval_samples: int, out: Path) -> None:
    settings = {**CAUSAL, "rounds": rounds, "eval_every": rounds, "eval_samples": eval_samples}
    rows: dict[str, list[dict]] = {}
    for seed in seeds:  # seed-major: an interrupted study has every cell of its first seeds
        refs = references(out / f"references-seed{seed}", **settings, seed=seed)
        rows.setdefault("each peer alone", []).append({"mean_accuracy": refs["alone"]})
        rows.setdefault("one model on all the data", []).append({"mean_accuracy": refs["centralized"]})
        for p in edge_probs:
            for strategy in ("tad", "lora"):
                folder = out / f"{strategy}-p{p:g}-seed{seed}"
                summary = run(folder, **settings, strategy=strategy, edge_prob=p, seed=seed)
                rows.setdefault(f"{strategy}, ER p = {p:g}", []).append(summary)

    def cell(row: str, column: str) -> str:
        key = {"peers' mean accuracy": "mean_accuracy", "network average": "network_average"}.get(column)
        if column == "peers' mean perplexity":
            key = "mean_perplexity"
        values = [s[key] for s in rows[row] if key in s and s[key] is not None]
        return mean_spread(values) if values else "-"

    columns = ["peers' mean accuracy", "network average", "peers' mean perplexity"]
    print(
        f"SmolLM2-135M-Instruct on TREC instructions, 4 peers with label skew, {rounds} rounds x 2 steps x 8, "
        f"{eval_samples} validation prompts; seeds {','.join(map(str, seeds))}, mean ± sd over seeds"
    )
    print(markdown_table(list(rows), columns, cell))
    (out / "table.json").write_text(json.dumps({k: v for k, v in rows.items()}, indent=2, default=str) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("part", choices=["learning", "speed"])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--edge-probs", default="0.5,0.1")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--eval-samples", type=int, default=100)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/causal"))
    args = parser.parse_args()
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    if args.part == "speed":
        speed(args.steps)
    else:
        seeds = [int(s) for s in args.seeds.split(",")]
        probs = [float(p) for p in args.edge_probs.split(",")]
        learning(seeds, probs, args.rounds, args.eval_samples, args.out)


if __name__ == "__main__":
    main()
