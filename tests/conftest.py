"""Tests by what they need, one folder per layer (each test gets its folder's marker):

- ``unit``: pure logic, milliseconds, no model, no network, no process (``pytest tests/unit``);
- ``inprocess``: models, the memory transport and the fault simulator, gRPC and mDNS on loopback,
  all inside the pytest process (``pytest tests/inprocess``);
- ``e2e``: daemons as OS processes, network namespaces, compose (``pytest tests/e2e``).
"""

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture
def tiny_cfg():
    """A RunConfig for the tiny model on the synthetic task: seconds per run."""
    from peer.config import load_config

    return load_config(
        overrides=dict(
            model="tiny-bert",
            task="synthetic",
            peers=3,
            rounds=4,
            consensus_rounds=0,  # the tests that are about them ask for them
            local_steps=2,
            batch_size=8,
            max_length=32,
            eval_every=2,
            eval_samples=64,
            learning_rate=1e-2,
            device="cpu",
        )
    )


@pytest.fixture(autouse=True, scope="session")
def _model_cache(tmp_path_factory):
    """The causal test model (``tiny-llama``) is saved to a cache folder: one of the session's own, which
    the daemons the tests start inherit, instead of the user's ~/.cache."""
    os.environ["TADLORA_CACHE"] = str(tmp_path_factory.mktemp("model-cache"))


LAYERS = ("unit", "inprocess", "e2e")


def pytest_collection_modifyitems(config, items):
    for item in items:
        layer = Path(str(item.fspath)).parent.name
        if layer in LAYERS:
            item.add_marker(layer)
