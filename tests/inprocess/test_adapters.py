import numpy as np
import pytest
import torch

from peer.algorithm import A, B
from peer.data.tasks import load_task
from peer.training.adapters import AdapterModel, LoraSettings, _build_base, load_tokenizer
from peer.training.tokenizer import encode
from peer.training.trainer import LocalTrainer, collate


@pytest.fixture(scope="module")
def model():
    return AdapterModel("tiny-bert", 2, ["p0", "p1"], LoraSettings(r=4, alpha=8), seed=11)


@pytest.fixture(scope="module")
def data():
    task = load_task("synthetic")
    return encode(load_tokenizer("tiny-bert"), task.train_texts[:64], None, task.train_labels[:64], 32)


def test_peers_start_identical_with_random_a_and_zero_b(model):
    s0, s1 = model["p0"].state(), model["p1"].state()
    assert s0.keys() == s1.keys()
    assert all(torch.equal(s0[k], s1[k]) for k in s0)
    assert all(float(v.abs().sum()) == 0 for k, v in model["p0"].factors([B]).items())
    assert all(float(v.abs().sum()) > 0 for k, v in model["p0"].factors([A]).items())


def test_same_seed_same_init_in_another_model():
    other = AdapterModel("tiny-bert", 2, ["x"], LoraSettings(r=4, alpha=8), seed=11)
    mine = AdapterModel("tiny-bert", 2, ["y"], LoraSettings(r=4, alpha=8), seed=11)
    assert all(torch.equal(other["x"].state()[k], v) for k, v in mine["y"].state().items())


@pytest.mark.parametrize("factor", [A, B])
def test_training_moves_only_the_active_factor_and_never_the_head(factor, data):
    m = AdapterModel("tiny-bert", 2, ["p"], LoraSettings(r=4, alpha=8), seed=1)
    adapter = m["p"]
    trainer = LocalTrainer(adapter, data, 8, 1e-2, seed=0, peer_index=0)
    trainer.train_round(0, frozenset({B}), 2)  # B first, so that A has a gradient afterwards
    before = adapter.state()
    trainer.train_round(1, frozenset({factor}), 3)
    after = adapter.state()
    for key in before:
        moved = not torch.equal(before[key], after[key])
        expected = ("lora_" + factor) in key
        assert moved == expected, key


def test_only_the_active_adapter_trains(model, data):
    other_before = model["p1"].state()
    LocalTrainer(model["p0"], data, 8, 1e-2, seed=0, peer_index=0).train_round(0, frozenset({A, B}), 2)
    assert all(torch.equal(other_before[k], v) for k, v in model["p1"].state().items())


def test_load_factors_checks_everything_before_writing(model):
    before = model["p1"].factors()
    bad = {k: torch.ones_like(v) for k, v in before.items()}
    first = next(iter(bad))
    bad[first] = torch.ones(3, 3)
    with pytest.raises(ValueError, match="shape"):
        model["p1"].load_factors(bad)
    assert all(torch.equal(before[k], v) for k, v in model["p1"].factors().items())
    with pytest.raises(KeyError):
        model["p1"].load_factors({"nope.lora_A.weight": torch.ones(1)})


def test_adapter_round_trip_through_peft_from_pretrained(tmp_path, data):
    from peft import PeftModel

    m = AdapterModel("tiny-bert", 2, ["p"], LoraSettings(r=4, alpha=8), seed=5)
    LocalTrainer(m["p"], data, 8, 1e-2, seed=0, peer_index=0).train_round(0, frozenset({A, B}), 3)
    out = m["p"].save_pretrained(tmp_path / "adapter")
    assert {"adapter_model.safetensors", "adapter_config.json"} <= {p.name for p in out.iterdir()}

    base = _build_base("tiny-bert", 2, seed=5)  # the same frozen base weights ...
    torch.nn.init.normal_(base.classifier.weight)  # ... but a different head: the saved one must win
    loaded = PeftModel.from_pretrained(base, str(out)).eval()
    m["p"].activate()
    m.peft_model.eval()
    batch = collate(data, np.arange(16), torch.device("cpu"))
    batch.pop("labels")
    with torch.no_grad():
        assert torch.allclose(loaded(**batch).logits, m.peft_model(**batch).logits, atol=1e-5)
