import json
import subprocess
import sys

import pytest

from peer.cli import main
from peer.config import ConfigError, RunConfig, load_config


def test_defaults_are_the_embedded_offline_run():
    cfg = load_config()
    assert (cfg.model, cfg.task, cfg.strategy, cfg.partition) == ("minilm", "movie-reviews", "tad", "label-skew")


def test_toml_then_flags(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('strategy = "lora"\nedge-prob = 0.1\nswitch_interval = 3\npeers = 7\n')
    cfg = load_config(path, {"peers": 9, "rounds": None})
    assert (cfg.strategy, cfg.edge_prob, cfg.switch_interval, cfg.peers, cfg.rounds) == ("lora", 0.1, "3", 9, RunConfig.rounds)


@pytest.mark.parametrize("text, message", [
    ('nope = 1\n', "unknown setting"),
    ('peers = "many"\n', "peers: expected int"),
    ('edge-prob = 2.0\n', "edge-prob: must lie in"),
    ('strategy = "fedavg"\n', "strategy"),
    ('switch-interval = 0\n', "switch-interval"),
    ('peers = \n', "not valid TOML"),
])
def test_bad_config_files_name_the_problem(tmp_path, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(path)


def test_missing_config_file():
    with pytest.raises(ConfigError, match="does not exist"):
        load_config("/nonexistent/run.toml")


def test_cli_bad_input_exits_2_with_one_clear_line(capsys):
    assert main(["simulate", "--peers", "0"]) == 2
    err = capsys.readouterr().err
    assert "peers: must be >= 1" in err and "Traceback" not in err


def test_cli_bad_data_file_exits_2(tmp_path, capsys):
    bad = tmp_path / "d.jsonl"
    bad.write_text('{"text": "a", "label": 1}\nnot json\n')
    assert main(["simulate", "--model", "tiny-bert", "--task", f"jsonl:{bad}", "--quiet"]) == 2
    assert "not a JSON object" in capsys.readouterr().err


def test_console_script_help_runs():
    out = subprocess.run([sys.executable, "-m", "peer.cli", "simulate", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "--switch-interval" in out.stdout


def test_daemon_reads_environment_between_file_and_flags(tmp_path):
    from peer.config import load_daemon_config

    path = tmp_path / "peer.toml"
    path.write_text("peers = 6\nedge-prob = 0.9\nrounds = 3\n")
    env = {"TADLORA_PEER_INDEX": "4", "TADLORA_EDGE_PROB": "0.25", "TADLORA_ROUNDS": "7", "UNRELATED": "x"}
    run, net = load_daemon_config(path, {"rounds": 9}, env)
    assert (run.peers, run.edge_prob, run.rounds, net.peer_index, net.peer_id) == (6, 0.25, 9, 4, "peer-04")


def test_bad_environment_value_names_the_variable():
    from peer.config import load_daemon_config

    with pytest.raises(ConfigError, match="TADLORA_PEERS: expected int"):
        load_daemon_config(None, {}, {"TADLORA_PEERS": "four"})
