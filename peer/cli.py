"""The ``tadlora`` command.

    tadlora simulate [--config FILE] [--out DIR] [--strategy tad] [--peers 4] ...

Every setting of ``peer.config.RunConfig`` is a flag (``--edge-prob``) and a TOML key
(``edge-prob``); flags win over the file, the file over the defaults.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from peer import strict_json
from peer.config import (
    ConfigError,
    DaemonConfig,
    config_fields,
    daemon_paths,
    default_peer_id,
    load_config,
    load_daemon_config,
    writable_folder,
)
from peer.errors import USAGE_EXIT_CODE, UsageError
from peer.transport.ids import peer_id_problem, run_id_problem

OUT_HELP = {
    "simulate": "directory for metrics.jsonl (one line per round), summary.json and peers/<peer-id>/adapter/",
    "testbed": "directory for summary.json, testbed.png and one folder per daemon, peer-NN/ (its daemon.log and "
    "what tadlora run writes to --out) (default: runs/testbed)",
    "run": "directory for endpoint.json (address, pid), rounds.jsonl (one line per round), checkpoint.pt (every "
    "round, with checkpoint-consensus.pt after rounds that train nothing; a restart with the same --out resumes) "
    "and at the end summary.json and peers/<peer-id>/adapter/ "
    "(default: runs/<run-id>/<peer-id>)",
}

_TYPES = {"int": int, "float": float, "str": str}


def _add_flags(parser: argparse.ArgumentParser, cls=None, daemon: bool = False, run_defaults: bool = False) -> None:
    """One flag per field of ``cls``, its help and default read from the field (``peer.config.setting``);
    ``daemon``: the daemons' own help where it differs; ``run_defaults``: ``tadlora run``'s defaults."""
    for name, f in config_fields(cls).items():
        help_text = (daemon and f.metadata.get("daemon_help")) or f.metadata.get("help", "")
        shown = (run_defaults and f.metadata.get("daemon_default")) or f.default
        parser.add_argument(
            "--" + name.replace("_", "-"),
            dest=name,
            type=_TYPES[str(f.type)],
            default=None,
            help=f"{help_text} (default: {shown})",
        )


def _add_run_flags(parser: argparse.ArgumentParser, command: str) -> None:
    parser.add_argument("--config", help="TOML file with settings (flags override it)")
    parser.add_argument("--out", help=OUT_HELP[command])
    if command == "simulate":  # the only command with a progress bar
        parser.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_flags(parser, daemon=command in ("run", "testbed"), run_defaults=command == "run")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tadlora", description="Decentralized federated LoRA fine-tuning.")
    sub = parser.add_subparsers(dest="command", required=True)
    sim = sub.add_parser("simulate", help="run N virtual peers in one process")
    _add_run_flags(sim, "simulate")
    bed = sub.add_parser("testbed", help="N daemons as local processes with real gRPC and mDNS (the main command)")
    _add_run_flags(bed, "testbed")
    bed.add_argument(
        "--netns", action="store_true", help="each daemon in its own network namespace behind a bridge (needs root)"
    )
    bed.add_argument("--scenario", help="TOML file of scripted faults (see peer/testbed/scenario.py)")
    bed.add_argument(
        "--tls",
        action="store_true",
        help="mutual TLS: a certificate authority for the run, one certificate per daemon (in OUT/certs)",
    )
    bed.set_defaults(peers=None)
    daemon = sub.add_parser("run", help="run one peer daemon (gRPC + mDNS); SIGINT or SIGTERM stops it")
    _add_run_flags(daemon, "run")
    _add_flags(daemon, DaemonConfig, run_defaults=True)
    certs = sub.add_parser(
        "certs", help="create a run's certificate authority and one certificate per peer (mutual TLS)"
    )
    certs.add_argument(
        "folder", help="where ca.pem, ca.key and <peer-id>.pem/.key go (an existing authority is reused)"
    )
    certs.add_argument("--run-id", required=True, help="the run the authority is for (daemons check it)")
    certs.add_argument("--peers", type=int, default=0, help="certificates for peer-00 .. peer-(N-1)")
    certs.add_argument("--peer-id", action="append", default=[], help="a certificate for this peer id (repeatable)")
    stat = sub.add_parser("status", help="a daemon and every peer it knows: round, phase, links, last exchange")
    stat.add_argument("address", help="host:port of one daemon's gRPC endpoint")
    stat.add_argument("--json", action="store_true", help="print JSON instead of a table")
    stat.add_argument("--timeout", type=float, default=3.0, help="seconds per Status call")
    for name in ("tls_ca", "tls_cert", "tls_key"):
        stat.add_argument(
            "--" + name.replace("_", "-"), default="", help=config_fields(DaemonConfig)[name].metadata["help"]
        )
    plot = sub.add_parser("plot", help="PNGs of accuracy, loss, consensus and links against rounds")
    plot.add_argument("runs", nargs="+", help="run folders: a simulate --out, a testbed or daemon --out")
    plot.add_argument("--out", help="folder for the PNGs (default: the first run folder)")
    gather = sub.add_parser("collect", help="summarise the daemons' result folders under DIR (compose testbed)")
    gather.add_argument("results", help="folder with one sub-folder per daemon (their --out)")
    gather.add_argument(
        "--references",
        help="references to train beside the result (default: the run's own "
        "setting; 'none' skips them and the network average's scoring stays)",
    )
    return parser


def _run_certs(args: argparse.Namespace) -> int:
    from peer.transport.tls import make_run

    ids = [default_peer_id(i) for i in range(args.peers)] + list(args.peer_id)
    if not ids:
        raise ConfigError("certs: say which peers: --peers N and/or --peer-id ID")
    if why := run_id_problem(args.run_id):
        raise ConfigError(f"run-id: {why}")
    for pid in ids:
        if why := peer_id_problem(pid):
            raise ConfigError(f"peer-id: {why}")
    folder = writable_folder(args.folder, "certs folder")
    made = make_run(folder, args.run_id, ids)
    print(f"authority of run {args.run_id!r}: {folder / 'ca.pem'} (keep {folder / 'ca.key'} off the peers)")
    for path in made:
        print(f"  {path.stem}: --tls-ca {folder / 'ca.pem'} --tls-cert {path} --tls-key {path.with_suffix('.key')}")
    return 0


def _run_status(args: argparse.Namespace) -> int:
    import asyncio

    from peer.tools.status import format_status, gather_status

    report = asyncio.run(gather_status(args.address, args.timeout, args.tls_ca, args.tls_cert, args.tls_key))
    print(json.dumps(report, indent=2) if args.json else format_status(report))
    return 0


def _run_plot(args: argparse.Namespace) -> int:
    from pathlib import Path

    from peer.tools.plots import load_run, plot_runs

    runs = [load_run(Path(folder)) for folder in args.runs]
    for path in plot_runs(runs, Path(args.out or args.runs[0])):
        print(path)
    return 0


def _run_collect(args: argparse.Namespace) -> int:
    from pathlib import Path

    from peer.testbed import collect, format_table

    summary = collect(Path(args.results), args.references)
    print(format_table(summary))
    return 0


def _run_daemon(args: argparse.Namespace) -> int:
    from peer.daemon.signals import STOPPED_EXIT_CODE, StopSignals, leave_now

    signals = StopSignals()
    signals.install()  # first: loading torch, the data and the model takes seconds, and a stop must not wait
    names = list(config_fields()) + list(config_fields(DaemonConfig))
    config_file, out_folder = daemon_paths(args.config, args.out, os.environ)
    run, net = load_daemon_config(config_file, {name: getattr(args, name) for name in names}, os.environ)

    from peer.daemon.main import main as daemon_main
    from peer.daemon.observe import use_json_logs

    if net.log_format == "json":
        use_json_logs()

    out = writable_folder(out_folder or f"runs/{net.run_id}/{net.peer_id}")
    summary = daemon_main(run, net, out, signals)
    print(strict_json.dumps({k: summary.get(k) for k in ("peer_id", "rounds", "mean_accuracy")}), flush=True)
    if signals.received is not None:
        # stopped: joining the worker thread would wait for a training step whose result is thrown away
        leave_now(STOPPED_EXIT_CODE, f"{net.peer_id}: stopped", logging.INFO)
    return 0


def _run_simulate(args: argparse.Namespace) -> int:
    overrides = {name: getattr(args, name) for name in config_fields()}
    cfg = load_config(args.config, overrides)
    if args.out:
        writable_folder(args.out)
    from peer.sim import simulate  # heavy imports only once the arguments are known to be good
    from peer.sim.references import headline

    summary = simulate(cfg, out=args.out, progress=not args.quiet)
    print(
        strict_json.dumps(
            {
                k: summary[k]
                for k in (
                    "topology",
                    "switch_interval",
                    "rounds",
                    "mean_accuracy",
                    "accuracy",
                    "network_average",
                    "references",
                    "seconds",
                )
            },
            indent=2,
        )
    )
    print(headline(summary))
    return 0


def _run_testbed(args: argparse.Namespace) -> int:

    from peer.testbed import format_table, run_testbed
    from peer.testbed.netns import netns_available
    from peer.testbed.scenario import NETWORK_ACTIONS, load_scenario

    cfg = load_config(args.config, {name: getattr(args, name) for name in config_fields()})
    events = load_scenario(args.scenario, cfg.peers) if args.scenario else []
    if not args.netns and (needs := sorted({e.action for e in events} & set(NETWORK_ACTIONS))):
        raise ConfigError(f"scenario: {', '.join(needs)} need the network-namespace testbed (--netns)")
    from peer.core.run_setup import check_task_and_model

    check_task_and_model(cfg)  # a bad data file is one error here, not one per daemon after they started
    if args.netns and (why := netns_available()):
        raise UsageError(f"--netns: {why}")
    out = writable_folder(args.out or "runs/testbed")
    summary = run_testbed(cfg, out, netns=args.netns, events=events, tls=args.tls)
    print(format_table(summary))
    print(f"summary: {out / 'summary.json'}  plot: {out / 'testbed.png'}")
    return 0


COMMANDS = {
    "simulate": _run_simulate,
    "run": _run_daemon,
    "testbed": _run_testbed,
    "certs": _run_certs,
    "status": _run_status,
    "plot": _run_plot,
    "collect": _run_collect,
}


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except UsageError as exc:  # a user's mistake: one line; anything else is a bug and keeps its traceback
        print(f"tadlora: error: {exc}", file=sys.stderr)
        return USAGE_EXIT_CODE
    except KeyboardInterrupt:
        print("tadlora: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
