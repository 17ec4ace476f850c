"""Flower's side of flower_compare.py: a Flower server (FedAvg) or client, with Flower's own code.

Imports only numpy and flwr, so that it runs in an environment of its own (Flower pins a protobuf
that tadlora's generated code does not accept):

    python flower_side.py server --address 127.0.0.1:9092 --clients 4 --rounds 10 --out times.json
    python flower_side.py client --address 127.0.0.1:9092 --seed 1

The parameters are the LoRA factors of MiniLM-L6 at r = 8 on query and value (6 layers x 2 modules x
A 8x384 and B 384x8, float32, 295 KB), the same adapter the daemons swap. Clients do no training:
``fit`` returns the received parameters plus a small perturbation at once, so a round's time is what
Flower itself costs (serialization, gRPC, aggregation), the quantity compared.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np


def adapter_arrays(seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    arrays = []
    for _layer in range(6):
        for _module in ("query", "value"):
            arrays.append(rng.standard_normal((8, 384)).astype(np.float32))
            arrays.append(np.zeros((384, 8), dtype=np.float32))
    return arrays


def server(address: str, clients: int, rounds: int, out: str) -> None:
    from flwr.common import ndarrays_to_parameters
    from flwr.compat.server.app import start_server
    from flwr.server import ServerConfig
    from flwr.server.strategy import FedAvg

    stamps: list[float] = []

    class TimedFedAvg(FedAvg):
        def aggregate_fit(self, server_round, results, failures):
            aggregated = super().aggregate_fit(server_round, results, failures)
            stamps.append(time.perf_counter())
            return aggregated

        def configure_fit(self, server_round, parameters, client_manager):
            if server_round == 1:
                stamps.append(time.perf_counter())  # all clients are connected from here on
            return super().configure_fit(server_round, parameters, client_manager)

    strategy = TimedFedAvg(
        fraction_fit=1.0,
        fraction_evaluate=0.0,
        min_fit_clients=clients,
        min_available_clients=clients,
        initial_parameters=ndarrays_to_parameters(adapter_arrays(0)),
    )
    start_server(server_address=address, config=ServerConfig(num_rounds=rounds), strategy=strategy)
    with open(out, "w") as f:
        json.dump(
            {"round_seconds": list(np.diff(stamps)), "payload_bytes": int(sum(a.nbytes for a in adapter_arrays(0)))}, f
        )


def client(address: str, seed: int) -> None:
    from flwr.client import NumPyClient
    from flwr.compat.client.app import start_client

    rng = np.random.default_rng(seed)

    class NoTraining(NumPyClient):
        def get_parameters(self, config):
            return adapter_arrays(seed)

        def fit(self, parameters, config):
            return [p + 1e-3 * rng.standard_normal(p.shape).astype(np.float32) for p in parameters], 1, {}

        def evaluate(self, parameters, config):
            return 0.0, 1, {}

    start_client(server_address=address, client=NoTraining().to_client(), insecure=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("role", choices=["server", "client"])
    parser.add_argument("--address", default="127.0.0.1:9092")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", default="flower_times.json")
    args = parser.parse_args()
    if args.role == "server":
        server(args.address, args.clients, args.rounds, args.out)
    else:
        client(args.address, args.seed)


if __name__ == "__main__":
    main()
