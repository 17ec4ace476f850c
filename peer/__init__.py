"""tadlora: decentralized federated LoRA fine-tuning (TAD-LoRA and its baselines).

Layers, each using only the ones listed before it:

- ``peer.algorithm``  pure algorithm: strategies, phase schedules, mixing weights, topologies.
                      No I/O, no model; works on any array type (numpy or torch).
- ``peer.data``       datasets (offline default, GLUE, CSV/JSONL), tokenization, partitions.
- ``peer.training``   the model with its LoRA adapter(s), factor access, local training, evaluation.
- ``peer.core.local_peer`` one peer's round (train, send, mix), shared by every driver below.
- ``peer.sim``        the in-process simulator: N virtual peers driven by the algorithm layer.
- ``peer.transport``  how two peers swap factors: interface, gRPC and in-memory implementations.
- ``peer.discovery``  mDNS announcements and browsing.
- ``peer.daemon``     the networked peer (``tadlora run``): transport + discovery + local_peer.
- ``peer.testbed``: local multi-peer testbeds (processes or network namespaces) and scripted faults.
- ``peer.cli``        the ``tadlora`` command.
"""

__version__ = "0.1.0"
