"""Every bad input a user can give gets one line that names the setting or file (and line), exit 2, no
traceback, and leaves no output behind (issue 12, part 6). In-process through ``peer.cli.main``."""

import pytest

from peer.cli import main

TINY = [
    "--model",
    "tiny-bert",
    "--task",
    "synthetic",
    "--rounds",
    "1",
    "--peers",
    "2",
    "--references",
    "none",
    "--eval-samples",
    "16",
]
DAEMON = [*TINY, "--mdns", "0", "--listen", "127.0.0.1:0", "--discovery-wait", "0.1"]


@pytest.fixture(autouse=True)
def no_shutdown_watchdog(monkeypatch):
    """``tadlora run`` arms a watchdog that ends the whole process if its shutdown hangs (a daemon is a
    process of its own); run in-process here, it would end pytest 20 s later. Disarmed."""

    class Disarmed:
        def cancel(self) -> None:
            pass

    monkeypatch.setattr("peer.daemon.main.exit_if_shutdown_hangs", lambda seconds, work_done: Disarmed())


def _files(tmp_path):
    (tmp_path / "numbers.jsonl").write_text("1\n2\n3\n")
    (tmp_path / "latin1.csv").write_bytes(b"text,label\ngood,1\n\xe9t\xe9,0\n")
    (tmp_path / "bad-peers.toml").write_text('peers = "x"\n')
    (tmp_path / "soon.toml").write_text('[[event]]\nat_round = "soon"\naction = "kill"\npeer = 0\n')
    (tmp_path / "a-file").write_text("")
    (tmp_path / "no-results").mkdir()
    (tmp_path / "cut.toml").write_text('[[event]]\nat_round = 1\naction = "partition"\npeer = 0\nother = 1\n')


CASES = {
    "a model folder that does not exist": (
        ["simulate", *TINY, "--model", "/nonexistent/model"],
        "model: the model folder",
    ),
    "a model folder without a model": (["simulate", *TINY, "--model", "{tmp}"], "holds no model"),
    "--out under a regular file": (["simulate", *TINY, "--out", "{tmp}/a-file/out"], "out: cannot write"),
    "--out on a read-only filesystem": (["simulate", *TINY, "--out", "/proc/tadlora-out"], "out: cannot write"),
    "--config naming a folder": (["simulate", *TINY, "--config", "{tmp}"], "is a folder, not a TOML file"),
    "a JSONL file whose lines are numbers": (
        ["simulate", *TINY, "--task", "jsonl:{tmp}/numbers.jsonl"],
        "numbers.jsonl:1: not a JSON object",
    ),
    "a CSV file that is not UTF-8": (["simulate", *TINY, "--task", "csv:{tmp}/latin1.csv"], "latin1.csv:3: not UTF-8"),
    "a bad TOML value that a flag overrides": (
        ["simulate", *TINY, "--config", "{tmp}/bad-peers.toml", "--peers", "3"],
        "bad-peers.toml: peers: expected int",
    ),
    "--peer-id with a path in it": (["run", *DAEMON, "--peer-id", "../../escaped"], "peer-id:"),
    "a 200-character peer id": (["run", *DAEMON, "--peer-id", "p" * 200, "--mdns", "1"], "peer-id: must be at most"),
    "a 400-character run id": (["run", *DAEMON, "--run-id", "r" * 400, "--mdns", "1"], "run-id: must be at most"),
    "an empty peer id": (["run", *DAEMON, "--peer-id", " "], "peer-id:"),
    "--listen with a port over 65535": (["run", *DAEMON, "--listen", "127.0.0.1:70000"], "listen: the port must be"),
    "--listen without a host": (["run", *DAEMON, "--listen", "7070"], "listen: must be host:port"),
    "--metrics with a bad port": (["run", *DAEMON, "--metrics", "127.0.0.1:x"], "metrics: the port"),
    "--chunk-size 3 GB": (["run", *DAEMON, "--chunk-size", "3000000000"], "chunk-size: must lie in"),
    "tadlora certs into a file": (
        ["certs", "{tmp}/a-file", "--run-id", "r", "--peers", "1"],
        "is a file, not a folder",
    ),
    "tadlora certs for a bad peer id": (["certs", "{tmp}/ca", "--run-id", "r", "--peer-id", "a/b"], "peer-id:"),
    "a scenario with at_round = 'soon'": (
        ["testbed", *TINY, "--scenario", "{tmp}/soon.toml"],
        "at_round must be a round number",
    ),
    "a testbed on a bad data file": (["testbed", *TINY, "--task", "jsonl:{tmp}/numbers.jsonl"], "not a JSON object"),
    "--lora-targets with no name": (["simulate", *TINY, "--lora-targets", ","], "lora-targets: needs at least one"),
    "--lora-targets the model lacks": (["simulate", *TINY, "--lora-targets", "nonexistent"], "lora-targets: "),
    "tadlora collect on a folder without results": (["collect", "{tmp}/no-results"], "no daemon results"),
    "a network fault in a scenario without --netns": (
        ["testbed", *TINY, "--scenario", "{tmp}/cut.toml"],
        "scenario: partition need the network-namespace testbed",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_exit_2_and_leaves_nothing(case, tmp_path, capsys, monkeypatch):
    _files(tmp_path)
    monkeypatch.chdir(tmp_path)  # the commands' default output folders (runs/...) land here, if anywhere
    argv, message = CASES[case]
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    out = tmp_path / "out"
    if "--out" not in argv and argv[0] in ("simulate", "testbed", "run"):
        argv += ["--out", str(out)]
    before = sorted(p.name for p in tmp_path.iterdir())
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("tadlora: error:")]
    assert len(lines) == 1 and message in lines[0], err[-2000:]
    assert "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no output folder, nothing half-written


def _announce_in_background(record, status=None):
    """An mDNS announcement of ``record`` from a background loop, with a gRPC endpoint at its address
    that answers Status with ``status`` (None: nothing listens there: a fake announcement)."""
    import asyncio
    import threading

    from peer.discovery.mdns import MdnsDiscovery
    from peer.transport.grpc_transport import GrpcTransport

    class Twin:
        def status(self):
            return status

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    def run(coro):
        return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout=30)

    transport = GrpcTransport()
    if status is not None:
        address = run(transport.serve(Twin(), "127.0.0.1:0"))
        record = type(record)(record.peer_id, record.run_id, address, record.protocol_version, record.schema)
    announcer = MdnsDiscovery(record, lambda r: None, lambda pid, address: None, interfaces=["127.0.0.1"])
    run(announcer.start())

    def stop():
        run(announcer.close())
        run(transport.close())
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)

    return record.address, stop


def test_a_second_daemon_with_a_taken_peer_id_exits_2_with_one_line(tmp_path, capsys):
    from peer.discovery.mdns import PeerRecord
    from peer.transport.base import StatusInfo

    twin = StatusInfo(peer_id="peer-00", run_id="dup-run", round=0, phase="B", schema_digest=b"")
    address, stop = _announce_in_background(PeerRecord("peer-00", "dup-run", "127.0.0.1:1", 2, "s"), twin)
    try:
        argv = ["run", *DAEMON, "--mdns", "1", "--run-id", "dup-run", "--out", str(tmp_path / "second")]
        assert main(argv) == 2
    finally:
        stop()
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("tadlora: error:")]
    assert len(lines) == 1 and "already announces 'peer-00'" in lines[0] and address in lines[0], err[-2000:]
    assert "Traceback" not in err
    assert not (tmp_path / "second").exists(), "the refused daemon left its folder behind"


def test_a_fake_announcement_of_a_daemons_id_does_not_keep_it_from_starting(tmp_path, capsys):
    from peer.discovery.mdns import PeerRecord

    _, stop = _announce_in_background(PeerRecord("peer-00", "fake-run", "127.0.0.1:9", 2, "s"))
    try:
        argv = ["run", *DAEMON, "--mdns", "1", "--run-id", "fake-run", "--out", str(tmp_path / "daemon")]
        assert main(argv) == 0
    finally:
        stop()
    assert "tadlora: error" not in capsys.readouterr().err


def test_a_second_daemon_on_a_folder_in_use_exits_2_with_one_line(tmp_path, capsys):
    from peer.daemon.main import lock_folder

    held = lock_folder(tmp_path)  # as a running daemon holds it
    try:
        assert main(["run", *DAEMON, "--out", str(tmp_path)]) == 2
    finally:
        held.close()
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("tadlora: error:")]
    assert len(lines) == 1 and "is in use by another daemon" in lines[0] and "Traceback" not in err, err[-2000:]


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has a CUDA device")
def test_cuda_asked_for_without_a_gpu_is_one_line_exit_2(tmp_path, capsys):
    assert main(["simulate", *TINY, "--device", "cuda", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("tadlora: error:")]
    assert len(lines) == 1 and "device: 'cuda' asked for" in lines[0] and "Traceback" not in err
    assert not (tmp_path / "out").exists()
