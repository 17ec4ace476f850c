"""Two daemons fine-tune the tiny random Llama on instructions: real processes, gRPC and mDNS on loopback."""

import json

import pytest
import torch

from peer.config import load_config
from peer.testbed import Testbed
from peer.testbed.runner import mixing_sum_drift

pytestmark = pytest.mark.slow

TINY_CAUSAL = dict(
    task_type="causal-lm",
    model="tiny-llama",
    task="synthetic",
    batch_size=8,
    max_length=128,
    eval_every=3,
    eval_samples=16,
    references="none",
    learning_rate=1e-2,
    device="cpu",
)


def test_two_daemons_fine_tune_a_causal_lm_whose_adapters_peft_loads_and_generates(tmp_path):
    from peft import AutoPeftModelForCausalLM

    cfg = load_config(overrides=dict(TINY_CAUSAL, peers=2, rounds=6, local_steps=2, topology="complete"))
    bed = Testbed(cfg, tmp_path / "bed", dict(discovery_wait=30.0, round_timeout_min=2.0, round_timeout_max=30.0))
    bed.run_all(timeout=120)
    folders = [bed.peer_dir(i) for i in range(2)]
    for i, folder in enumerate(folders):
        summary = json.loads((folder / "summary.json").read_text())
        assert summary["rounds"] == 6 and summary["perplexity"] > 1 and 0 <= summary["mean_accuracy"] <= 1
        assert [r["round"] for r in bed.rounds(i) if "perplexity" in r] == [2]  # the last: in the summary
        generations = [json.loads(line) for line in (folder / "generations.jsonl").read_text().splitlines()]
        assert {g["round"] for g in generations} == {2, 6} and all(g["peer"] == f"peer-{i:02d}" for g in generations)
    assert mixing_sum_drift(folders) < 1e-5  # the mixing keeps the network's sums, as for classification
    adapter = folders[0] / "peers" / "peer-00" / "adapter"
    model = AutoPeftModelForCausalLM.from_pretrained(str(adapter))
    prompt = torch.tensor([[1, *range(40, 60)]])
    out = model.generate(input_ids=prompt, max_new_tokens=4, do_sample=False, pad_token_id=0)
    assert out.shape[1] > prompt.shape[1]
