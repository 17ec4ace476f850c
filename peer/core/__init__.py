"""What the simulator and the daemon share: one peer's round logic (``LocalPeer``: train, send, mix) and
the setup of a run (model, data shards, trainers) from its configuration. Depends on the algorithm and
training layers, never on the network."""
