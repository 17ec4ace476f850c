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
    assert (cfg.strategy, cfg.edge_prob, cfg.switch_interval, cfg.peers, cfg.rounds) == (
        "lora",
        0.1,
        "3",
        9,
        RunConfig.rounds,
    )


@pytest.mark.parametrize(
    "text, message",
    [
        ("nope = 1\n", "unknown setting"),
        ('peers = "many"\n', "peers: expected int"),
        ("edge-prob = 2.0\n", "edge-prob: must lie in"),
        ('strategy = "fedavg"\n', "strategy"),
        ("switch-interval = 0\n", "switch-interval"),
        ("peers = \n", "not valid TOML"),
    ],
)
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


def test_run_uses_every_working_link_while_simulate_and_testbed_keep_the_papers_default():
    from peer.config import DEFAULT_PORT, load_daemon_config

    run, net = load_daemon_config(None, {}, {})
    assert (run.topology, run.edge_prob) == ("complete", 1.0)
    assert net.listen == f"0.0.0.0:{DEFAULT_PORT}"
    simulated = load_config()
    assert (simulated.topology, simulated.edge_prob) == ("er", 0.5)


@pytest.mark.parametrize(
    "toml, env, flags, expected",
    [
        ("", {}, {"topology": "er"}, ("er", RunConfig.edge_prob)),
        ("", {}, {"topology": "er", "edge_prob": 0.2}, ("er", 0.2)),
        ("", {}, {"edge_prob": 0.3}, ("er", 0.3)),  # an edge probability alone asks for er
        ('topology = "er"\nedge-prob = 0.4\n', {}, {}, ("er", 0.4)),
        ("edge-prob = 0.6\n", {}, {}, ("er", 0.6)),
        ("", {"TADLORA_TOPOLOGY": "er"}, {}, ("er", RunConfig.edge_prob)),
        ("", {"TADLORA_EDGE_PROB": "0.25"}, {}, ("er", 0.25)),
        ('topology = "er"\n', {}, {"topology": "complete"}, ("complete", RunConfig.edge_prob)),
    ],
)
def test_run_honours_a_topology_given_by_flag_file_or_environment(tmp_path, toml, env, flags, expected):
    from peer.config import load_daemon_config

    path = None
    if toml:
        path = tmp_path / "peer.toml"
        path.write_text(toml)
    run, _ = load_daemon_config(path, flags, env)
    assert (run.topology, run.edge_prob) == expected


def _help(command: str) -> str:
    out = subprocess.run([sys.executable, "-m", "peer.cli", command, "--help"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return " ".join(out.stdout.split())  # argparse wraps lines


def test_help_says_what_each_command_writes_and_does():
    run, simulate = _help("run"), _help("simulate")
    assert "rounds.jsonl" in run and "checkpoint.pt" in run and "metrics.jsonl" not in run
    assert "--quiet" not in run and "--quiet" in simulate and "--quiet" not in _help("testbed")
    assert "measured link rates" in run and "spectral gap" not in run
    assert "metrics.jsonl" in simulate and "spectral gap" in simulate
    assert "default: complete" in run and "default: 0.0.0.0:7070" in run
    assert "default: er" in simulate


def test_a_daemon_on_every_interface_announces_a_real_address():
    from peer.discovery import mdns

    for wildcard in ("0.0.0.0:7070", "[::]:7070", ":7070"):
        host = mdns.announced_address(wildcard).rsplit(":", 1)[0]
        assert host not in mdns.WILDCARD_HOSTS and host in mdns.interface_addresses()
    assert mdns.announced_address("0.0.0.0:7070", "10.0.0.7") == "10.0.0.7:7070"  # --mdns-interface
    assert mdns.announced_address("127.0.0.1:0") == "127.0.0.1:0"  # a named host stays


@pytest.mark.parametrize(
    "addresses, routed, expected",
    [
        (["127.0.0.1", "169.254.3.4", "10.1.2.3"], None, "10.1.2.3"),  # never loopback or link-local
        (["127.0.0.1", "172.17.0.1", "192.168.1.20"], "192.168.1.20", "192.168.1.20"),  # the routed interface
        (["127.0.0.1", "10.1.2.3"], "10.9.9.9", "10.1.2.3"),  # a routed address we do not own
        (["127.0.0.1"], "127.0.0.1", "127.0.0.1"),  # nothing else: loopback
    ],
)
def test_own_address_prefers_the_routed_interface_and_avoids_loopback(monkeypatch, addresses, routed, expected):
    from peer.discovery import mdns

    monkeypatch.setattr(mdns, "interface_addresses", lambda: addresses)
    monkeypatch.setattr(mdns, "_routed_address", lambda: routed)
    assert mdns.own_address() == expected


def test_a_bug_keeps_its_traceback_and_a_users_mistake_is_one_line(monkeypatch, capsys):
    # issue 13: only UsageError (a setting, a file, the environment) becomes exit 2; a ValueError from a
    # bug must not pass for a configuration error
    import peer.cli as cli
    from peer.errors import ConfigError

    def buggy(args):
        raise ValueError("an index went wrong")

    def mistaken(args):
        raise ConfigError("peers: must be >= 1, got 0")

    monkeypatch.setitem(cli.COMMANDS, "plot", buggy)
    with pytest.raises(ValueError, match="an index went wrong"):
        cli.main(["plot", "somewhere"])
    monkeypatch.setitem(cli.COMMANDS, "plot", mistaken)
    assert cli.main(["plot", "somewhere"]) == 2
    assert capsys.readouterr().err.strip() == "tadlora: error: peers: must be >= 1, got 0"
