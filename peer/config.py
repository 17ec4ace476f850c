"""Run configuration: one dataclass, filled from defaults, then a TOML file, then command-line flags.

The daemon (``tadlora run``) also reads ``TADLORA_<SETTING>`` environment variables, between the TOML
file and the flags (``TADLORA_PEER_INDEX=2``, ``TADLORA_EDGE_PROB=0.3``), and ``TADLORA_CONFIG`` as the
file when no ``--config`` is given: the container images are configured that way. Its defaults differ
from the simulator's where a real deployment needs it: every working link is used (``complete``) unless
a topology or an edge probability is given, and it listens on every interface, port 7070.

TOML keys are the flag names with dashes or underscores, at the top level, for example::

    strategy = "tad"
    switch-interval = "auto"
    peers = 10
    topology = "er"
    edge-prob = 0.1
    rounds = 40

An unknown key or a value of the wrong type is an error that names the key, never a silent default.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from peer.errors import ConfigError
from peer.transport.ids import peer_id_problem, run_id_problem

__all__ = ["ConfigError", "DaemonConfig", "RunConfig", "load_config", "load_daemon_config"]


# One gRPC message carries one chunk; gRPC's message caps are 32-bit, and chunks this large already
# cost more memory than they save in per-frame overhead.
MAX_CHUNK_SIZE = 64 << 20


def host_port_problem(value: str) -> str:
    """Why ``value`` is not ``host:port`` with a port in 0..65535 ("" if it is)."""
    host, sep, port = value.rpartition(":")
    if not sep or not host:
        return f"must be host:port, got {value!r}"
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        return f"the port must be a number from 0 to 65535, got {port!r}"
    return ""


def writable_folder(path: str | Path, setting: str = "out") -> Path:
    """Prove, before any work starts, that ``path`` can be created and written: a folder under a
    regular file, on a read-only filesystem or without permission is a ConfigError that names the
    setting, not a traceback halfway through a run. Folders it had to create for the proof are removed
    again, so that a run that fails later (bad data, say) leaves nothing behind."""
    folder = Path(path)
    probe = folder / f".tadlora-write-probe-{os.getpid()}"
    created: list[Path] = []
    try:
        if folder.exists() and not folder.is_dir():
            raise ConfigError(f"{setting}: {folder} is a file, not a folder")
        created = [p for p in (folder, *folder.parents) if not p.exists()]  # deepest first
        folder.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(f"{setting}: cannot write to the folder {folder}: {exc.strerror or exc}") from None
    finally:
        for made in created:
            try:
                made.rmdir()
            except OSError:
                break
    return folder


def model_problem(model: str) -> str:
    """A model given as a path (it starts with '/', '.' or '~', as a Hub id never does) must exist."""
    if not model.startswith(("/", ".", "~")):
        return ""
    folder = Path(model).expanduser()
    if not folder.is_dir():
        return f"the model folder {model} does not exist (give a Hugging Face id, a local folder, or minilm)"
    if not (folder / "config.json").is_file():
        return f"the folder {model} holds no model (no config.json: save one with save_pretrained)"
    return ""


@dataclass
class RunConfig:
    strategy: str = "tad"
    switch_interval: str = "default"  # an integer, "auto", or "default" (the strategy's own: tad 5, rolora 1)
    peers: int = 4
    topology: str = "er"
    edge_prob: float = 0.5
    # the learning defaults come from benchmarks/defaults_study.py (benchmarks/README.md section 8): at the
    # same samples per peer, mixing every 2 steps of 8 learns more than every 5 steps of 16
    rounds: int = 60
    local_steps: int = 2
    batch_size: int = 8
    learning_rate: float = 2e-3
    lr_schedule: str = "constant"  # constant | linear (down to 0 at the last step)
    max_length: int = 64
    seed: int = 0
    model: str = "minilm"
    task: str = "movie-reviews"
    partition: str = "label-skew"
    dirichlet_alpha: float = 0.5
    samples_per_peer: int = 0  # 0: split all training data
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.1
    lora_targets: str = "query,value"
    eval_every: int = 20  # evaluate every N rounds and after the last one
    eval_samples: int = 500  # validation examples used per evaluation; 0: all
    device: str = "auto"  # auto: cuda when present, else cpu
    precision: str = "auto"  # auto | fp32 | bf16 | fp16: the forward pass's dtype (peer/training/precision.py)
    batching: str = "by-length"  # by-length: batches of similar length from a random order | random
    train_head: int = 1  # 1: train and mix the classification head every round, beside the factors
    # (0: frozen, the paper's setting)
    references: str = "alone,centralized"  # simulate/testbed: also train these at the same budget (none: skip)
    mixing_rule: str = "average"  # average | clipped | trimmed-mean (see peer/algorithm/robust.py)
    clip_multiplier: float = 2.0  # clipped: radius = this × median of recent deviation norms
    trim: int = 1  # trimmed-mean: values dropped at each end, per coordinate

    def validate(self) -> RunConfig:
        # imported here, not at the top: they pull in torch (seconds), and `tadlora run` installs its stop
        # signal handlers before anything slow (peer.daemon.signals)
        from peer.algorithm.robust import RULES as MIXING_RULES
        from peer.algorithm.strategies import available_strategies
        from peer.algorithm.topology import TOPOLOGIES
        from peer.data.partition import SCHEMES
        from peer.training.precision import Precision
        from peer.training.trainer import Batching, LrSchedule

        _check(
            self.strategy in available_strategies(),
            "strategy",
            f"{self.strategy!r} is not one of {', '.join(available_strategies())}",
        )
        _check(self.topology in TOPOLOGIES, "topology", f"{self.topology!r} is not one of {', '.join(TOPOLOGIES)}")
        _check(self.partition in SCHEMES, "partition", f"{self.partition!r} is not one of {', '.join(SCHEMES)}")
        _check(
            self.switch_interval in ("auto", "default")
            or (str(self.switch_interval).isdigit() and int(self.switch_interval) >= 1),
            "switch-interval",
            f"{self.switch_interval!r} must be a positive integer, 'auto' or 'default'",
        )
        for name in ("peers", "rounds", "local_steps", "batch_size", "max_length", "lora_r", "eval_every"):
            _check(getattr(self, name) >= 1, name, f"must be >= 1, got {getattr(self, name)}")
        for name in ("samples_per_peer", "eval_samples", "lora_alpha"):
            _check(getattr(self, name) >= 0, name, f"must be >= 0, got {getattr(self, name)}")
        _check(0.0 <= self.edge_prob <= 1.0, "edge-prob", f"must lie in [0, 1], got {self.edge_prob}")
        _check(self.learning_rate > 0, "learning-rate", f"must be > 0, got {self.learning_rate}")
        _check(0.0 <= self.lora_dropout < 1.0, "lora-dropout", f"must lie in [0, 1), got {self.lora_dropout}")
        _check(self.dirichlet_alpha > 0, "dirichlet-alpha", f"must be > 0, got {self.dirichlet_alpha}")
        _check(self.max_length >= 8, "max-length", f"must be >= 8 tokens, got {self.max_length}")
        _check(
            self.mixing_rule in MIXING_RULES,
            "mixing-rule",
            f"{self.mixing_rule!r} is not one of {', '.join(MIXING_RULES)}",
        )
        _check(self.clip_multiplier > 0, "clip-multiplier", f"must be > 0, got {self.clip_multiplier}")
        _check(self.trim >= 0, "trim", f"must be >= 0, got {self.trim}")
        _check(
            self.device in ("auto", "cpu") or self.device.startswith("cuda"),
            "device",
            f"{self.device!r} must be auto, cpu or cuda[:N]",
        )
        for key, vocabulary in (("precision", Precision), ("batching", Batching), ("lr_schedule", LrSchedule)):
            names = [v.value for v in vocabulary]
            _check(getattr(self, key) in names, key, f"{getattr(self, key)!r} is not one of {', '.join(names)}")
        _check(self.train_head in (0, 1), "train-head", f"must be 0 or 1, got {self.train_head}")
        _check(not model_problem(self.model), "model", model_problem(self.model))
        try:
            from peer.sim.references import parse_references

            parse_references(self.references)
        except ValueError as exc:
            raise ConfigError(f"references: {exc}") from None
        return self

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def _check(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{key.replace('_', '-')}: {message}")


def config_fields(cls=None) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls or RunConfig)}


# The daemon's port unless --listen names another: the one the compose and namespace testbeds use too.
DEFAULT_PORT = 7070

# What ``tadlora run`` uses when no topology is asked for (by flag, TOML key or TADLORA_ variable): every
# link that works. The simulator's and the testbed's default (ER, p = 0.5) is an experiment: on a real
# deployment it would silently drop half of the working links every round.
DAEMON_TOPOLOGY = {"topology": "complete", "edge_prob": 1.0}


def daemon_topology_defaults(given: Mapping[str, object]) -> dict:
    """The topology settings ``tadlora run`` fills in around the ones ``given``: none when a topology is
    given; ``er`` when only an edge probability is (it means nothing on the complete graph, and ignoring
    it silently would be worse); else the complete graph with every link kept."""
    if "topology" in given:
        return {}
    if "edge_prob" in given:
        return {"topology": "er"}
    return dict(DAEMON_TOPOLOGY)


@dataclass
class DaemonConfig:
    """The network settings of ``tadlora run`` (on top of a RunConfig)."""

    peer_index: int = 0  # which shard of the data this peer trains on (0 .. peers-1)
    peer_id: str = ""  # default: peer-<index>
    run_id: str = "tadlora"  # peers of other runs are ignored
    listen: str = f"0.0.0.0:{DEFAULT_PORT}"  # host:port of the gRPC endpoint (0.0.0.0: every interface; port 0: any)
    peer: str = ""  # static peers, comma-separated host:port (with or without mDNS)
    mdns: int = 1  # 1: announce and browse by mDNS; 0: static peers only
    mdns_interface: str = ""  # address to run mDNS on and to announce; default: the host of --listen,
    # or for 0.0.0.0 this machine's address (peer.discovery.mdns.own_address)
    round_timeout_min: float = 2.0  # seconds; see peer/daemon/clock.py for how to choose
    round_timeout_max: float = 60.0
    discovery_wait: float = 3.0  # seconds to look for peers before the first round
    chunk_size: int = 1 << 20  # bytes per gRPC chunk
    frame_timeout: float = 10.0  # seconds without a frame before a stream counts as stalled
    tls_ca: str = ""  # mutual TLS: the run's CA certificate (tadlora certs) ...
    tls_cert: str = ""  # ... this peer's certificate (common name = peer id) ...
    tls_key: str = ""  # ... and its key; all three or none
    metrics: str = ""  # host:port of a Prometheus endpoint ("" : none; port 0: any free)
    tensorboard: str = ""  # folder for TensorBoard event files ("" : none)
    log_format: str = "text"  # text | json

    def validate(self, run: RunConfig) -> DaemonConfig:
        _check(0 <= self.peer_index < run.peers, "peer-index", f"must lie in [0, {run.peers}), got {self.peer_index}")
        _check(not host_port_problem(self.listen), "listen", host_port_problem(self.listen))
        _check(
            0 < self.round_timeout_min <= self.round_timeout_max,
            "round-timeout-min",
            "need 0 < round-timeout-min <= round-timeout-max",
        )
        _check(
            1024 <= self.chunk_size <= MAX_CHUNK_SIZE,
            "chunk-size",
            f"must lie in [1024, {MAX_CHUNK_SIZE}] bytes, got {self.chunk_size}",
        )
        _check(self.frame_timeout > 0, "frame-timeout", "must be > 0")
        _check(
            run.topology in ("er", "complete"),
            "topology",
            "the daemon runs 'complete' or 'er' (--edge-prob); ring and pairwise are simulator-only",
        )
        _check(self.log_format in ("text", "json"), "log-format", f"must be text or json, got {self.log_format!r}")
        _check(not self.metrics or not host_port_problem(self.metrics), "metrics", host_port_problem(self.metrics))
        given = [bool(x) for x in (self.tls_ca, self.tls_cert, self.tls_key)]
        _check(all(given) or not any(given), "tls-ca", "give --tls-ca, --tls-cert and --tls-key together, or none")
        if not self.peer_id:
            self.peer_id = f"peer-{self.peer_index:02d}"
        _check(not peer_id_problem(self.peer_id), "peer-id", peer_id_problem(self.peer_id))
        _check(not run_id_problem(self.run_id), "run-id", run_id_problem(self.run_id))
        return self

    @property
    def tls(self) -> bool:
        return bool(self.tls_ca)

    @property
    def static_peers(self) -> list[str]:
        return [p.strip() for p in self.peer.split(",") if p.strip()]


def _coerce(key: str, value, target_type: str):
    if target_type == "str":
        if isinstance(value, (int, str)) and not isinstance(value, bool):
            return str(value)
    elif target_type == "int":
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif target_type == "float" and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    raise ConfigError(f"{key}: expected {target_type}, got {value!r}")


def load_config(path: str | Path | None = None, overrides: dict | None = None) -> RunConfig:
    """Defaults, then the TOML file at ``path`` (if any), then ``overrides`` (flags that were given)."""
    return _load(_given(path, overrides, [RunConfig]), [RunConfig])[0].validate()


def load_daemon_config(
    path: str | Path | None = None, overrides: dict | None = None, environ: Mapping[str, str] | None = None
) -> tuple[RunConfig, DaemonConfig]:
    """Like ``load_config``, for the daemon: one file, ``TADLORA_*`` variables of ``environ`` and one set
    of flags fill both dataclasses."""
    classes = [RunConfig, DaemonConfig]
    env = env_settings(environ or {}, classes)
    given = _given(path, {**env, **{k: v for k, v in (overrides or {}).items() if v is not None}}, classes)
    run, daemon = _load({**daemon_topology_defaults(given), **given}, classes)
    run.validate()
    return run, daemon.validate(run)


ENV_PREFIX = "TADLORA_"


def env_settings(environ: Mapping[str, str], classes) -> dict:
    """Settings from ``TADLORA_<NAME>`` variables, converted to each field's type; a bad value names it."""
    fields = {name: f for cls in classes for name, f in config_fields(cls).items()}
    settings = {}
    for name, f in fields.items():
        raw = environ.get(ENV_PREFIX + name.upper())
        if raw is None:
            continue
        try:
            settings[name] = {"int": int, "float": float}.get(f.type, str)(raw.strip())
        except ValueError:
            raise ConfigError(f"{ENV_PREFIX}{name.upper()}: expected {f.type}, got {raw!r}") from None
    return settings


def read_toml(path: str | Path, what: str = "config file") -> dict:
    """Parse a TOML file; a missing or malformed file is a ConfigError that names it."""
    try:
        return tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{what} {path} does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"{what} {path} is a folder, not a TOML file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{what} {path} cannot be read: {getattr(exc, 'strerror', None) or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{what} {path} is not valid TOML: {exc}") from None


def _given(path, overrides, classes) -> dict:
    """The settings of the TOML file at ``path`` (if any), then ``overrides`` that are not None. The
    file's values are checked on their own first: a bad one is an error even where a flag overrides it
    (the file is wrong, and would be the next time it runs without that flag)."""
    values: dict = {}
    if path is not None:
        values.update(_typed({k.replace("-", "_"): v for k, v in read_toml(path).items()}, classes, f"{path}: "))
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return values


def _typed(values: dict, classes, where: str = "") -> dict:
    """``values`` converted to their fields' types; an unknown key or a wrong type names the setting."""
    all_fields = {name: f for cls in classes for name, f in config_fields(cls).items()}
    unknown = sorted(set(values) - set(all_fields))
    if unknown:
        raise ConfigError(
            f"{where}unknown setting(s) {', '.join(k.replace('_', '-') for k in unknown)}; "
            f"known: {', '.join(k.replace('_', '-') for k in all_fields)}"
        )
    return {k: _coerce(f"{where}{k.replace('_', '-')}", v, all_fields[k].type) for k, v in values.items()}


def _load(values: dict, classes) -> list:
    typed = _typed(values, classes)
    return [cls(**{k: v for k, v in typed.items() if k in config_fields(cls)}) for cls in classes]
