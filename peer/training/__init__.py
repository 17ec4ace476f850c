"""The model side: a base model with LoRA adapter(s), factor access by name, local training, evaluation.

Uses ``peer.algorithm`` for factor names and ``peer.data`` for the examples; knows nothing of peers,
rounds' graphs or networks.
"""

from peer.training.adapters import Adapter, AdapterModel, LoraSettings
from peer.training.trainer import LocalTrainer

__all__ = ["Adapter", "AdapterModel", "LocalTrainer", "LoraSettings"]
