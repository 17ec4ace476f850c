"""Seeing a run: Prometheus metrics, tadlora status, JSON logs, TensorBoard files and tadlora plot, on
real daemons (and on a simulator run for the plots)."""

import json
import time
import urllib.request

import pytest

from peer.cli import main as cli
from peer.config import load_config
from peer.testbed import Testbed

TINY = dict(
    model="tiny-bert",
    task="synthetic",
    batch_size=8,
    max_length=32,
    eval_samples=32,
    references="none",
    learning_rate=1e-2,
    device="cpu",
    consensus_rounds=0,  # the tests that are about them ask for them
)


def _metric(text: str, name: str, peer: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + "{") and f'peer="{peer}"' in line:
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} for {peer} not exported")


@pytest.mark.slow
def test_metrics_status_logs_tensorboard_and_plots_of_a_live_run(tmp_path, capsys):
    cfg = load_config(overrides=dict(TINY, peers=3, rounds=14, local_steps=2, topology="complete", eval_every=3))
    bed = Testbed(
        cfg,
        tmp_path / "bed",
        dict(discovery_wait=20.0, metrics="127.0.0.1:0", log_format="json", tensorboard=str(tmp_path / "tb")),
    )
    try:
        for i in range(3):
            bed.start(i)
        until = time.monotonic() + 90
        while len(bed.rounds(0)) < 4:
            assert time.monotonic() < until and bed.procs[0].poll() is None, "peer-00 did not get going"
            time.sleep(0.2)
        endpoint = json.loads((bed.peer_dir(0) / "endpoint.json").read_text())
        text = urllib.request.urlopen(f"http://127.0.0.1:{endpoint['metrics_port']}/metrics", timeout=5).read().decode()
        assert _metric(text, "tadlora_round", "peer-00") >= 4
        assert _metric(text, "tadlora_bytes_sent_total", "peer-00") > 0
        assert _metric(text, "tadlora_neighbours", "peer-00") == 2
        assert _metric(text, "tadlora_validation_accuracy", "peer-00") > 0  # evaluated at round 3
        assert 'tadlora_exchange_seconds_count{outcome="counted",peer="peer-00"' in text
        assert "tadlora_checkpoint_seconds_count" in text and "tadlora_train_loss" in text

        assert cli(["status", endpoint["address"], "--json"]) == 0
        report = json.loads(capsys.readouterr().out)
        assert report["peer_id"] == "peer-00" and report["round"] >= 4
        assert {p["peer_id"] for p in report["peers"]} == {"peer-01", "peer-02"}
        assert all(p["last_round"] >= 0 and p["round"] >= 3 and p["known"] == 2 for p in report["peers"])
        assert cli(["status", endpoint["address"]]) == 0
        table = capsys.readouterr().out
        assert table.startswith("peer-00 at") and "peer-02" in table
        bed.wait(timeout=120)
    finally:
        bed.stop_all()

    lines = [text for text in (bed.peer_dir(1) / "daemon.log").read_text().splitlines() if text.startswith("{")]
    records = [json.loads(text) for text in lines]
    assert any("round 13 phase" in r["message"] for r in records) and {"time", "level", "logger"} <= set(records[0])
    assert list((tmp_path / "tb" / "peer-02").glob("events.out.tfevents.*"))

    sim = tmp_path / "sim"
    assert (
        cli(
            [
                "simulate",
                "--model",
                "tiny-bert",
                "--task",
                "synthetic",
                "--peers",
                "3",
                "--rounds",
                "4",
                "--local-steps",
                "2",
                "--eval-every",
                "2",
                "--eval-samples",
                "32",
                "--device",
                "cpu",
                "--quiet",
                "--out",
                str(sim),
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert cli(["plot", str(bed.out), str(sim), "--out", str(tmp_path / "plots")]) == 0
    written = capsys.readouterr().out.split()
    assert {p.rsplit("/", 1)[1] for p in written} == {"accuracy.png", "loss.png", "consensus.png", "links.png"}
    assert all((tmp_path / "plots" / name).stat().st_size > 5000 for name in ("accuracy.png", "links.png"))


def test_plot_refuses_a_folder_that_is_not_a_run(tmp_path, capsys):
    assert cli(["plot", str(tmp_path)]) == 2
    assert "neither metrics.jsonl" in capsys.readouterr().err
