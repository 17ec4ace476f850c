import os

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
            local_steps=2,
            batch_size=8,
            max_length=32,
            eval_every=2,
            eval_samples=64,
            learning_rate=1e-2,
            device="cpu",
        )
    )
