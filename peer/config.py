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
import math
import os
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from peer.errors import ConfigError
from peer.transport.defaults import (
    DEFAULT_CHUNK_SIZE,
    DEFAULT_FRAME_TIMEOUT_S,
    DEFAULT_LANE_MIN_BYTES,
    MAX_CHUNK_SIZE,
)
from peer.transport.ids import peer_id_problem, run_id_problem

AUTO = "auto"

__all__ = ["ConfigError", "DaemonConfig", "RunConfig", "load_config", "load_daemon_config"]


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


Check = Callable[[Any], str]  # a value's problem, "" when it is fine


def setting(
    default: Any, help: str, *, check: Check | None = None, daemon_help: str = "", daemon_default: str = ""
) -> Any:
    """A field that carries everything about one setting: its default, its help (the CLI's, and the
    README table's, generated from it), and its check (``validate`` runs it and names the setting).
    ``daemon_help`` / ``daemon_default``: what ``tadlora run`` and the testbed do differently."""
    return field(
        default=default,
        metadata={"help": help, "check": check, "daemon_help": daemon_help, "daemon_default": daemon_default},
    )


def at_least(minimum: float) -> Check:
    return lambda value: "" if value >= minimum else f"must be >= {minimum:g}, got {value}"


def positive(value: float) -> str:
    return "" if value > 0 else f"must be > 0, got {value}"


def zero_or_one(value: int) -> str:
    """A switch: 1 on, 0 off."""
    return "" if value in (0, 1) else f"must be 0 or 1, got {value}"


def within(low: float, high: float, high_open: bool = False) -> Check:
    def check(value) -> str:
        inside = low <= value < high if high_open else low <= value <= high
        return "" if inside else f"must lie in [{low:g}, {high:g}{')' if high_open else ']'}, got {value}"

    return check


def one_of(names: Callable[[], Iterable[str]]) -> Check:
    """``names`` is called when the check runs: the vocabularies live in modules that import torch."""

    def check(value) -> str:
        known = [str(n) for n in names()]
        return "" if value in known else f"{value!r} is not one of {', '.join(known)}"

    return check


def _strategies() -> Iterable[str]:
    from peer.algorithm.strategies import available_strategies

    return available_strategies()


def _topologies() -> Iterable[str]:
    from peer.algorithm.topology import TOPOLOGIES

    return TOPOLOGIES


def _partitions() -> Iterable[str]:
    from peer.data.partition import SCHEMES

    return SCHEMES


def _mixing_rules() -> Iterable[str]:
    from peer.algorithm.robust import RULES

    return RULES


def _wire_dtypes() -> Iterable[str]:
    from peer.algorithm.compression import WIRE_DTYPES

    return WIRE_DTYPES


def _precisions() -> Iterable[str]:
    from peer.training.precision import Precision

    return [p.value for p in Precision]


def _batchings() -> Iterable[str]:
    from peer.training.trainer import Batching

    return [b.value for b in Batching]


def _lr_schedules() -> Iterable[str]:
    from peer.training.trainer import LrSchedule

    return [s.value for s in LrSchedule]


def _task_types() -> Iterable[str]:
    from peer.data.task_type import TaskType

    return [t.value for t in TaskType]


def _switch_interval(value: str) -> str:
    if value in ("auto", "default") or (value.isdigit() and int(value) >= 1):
        return ""
    return f"{value!r} must be a positive integer, 'auto' or 'default'"


def _reference_learning_rate(value: str) -> str:
    if value == AUTO:
        return ""
    try:
        return "" if 0 < float(value) < math.inf else f"{value!r} must be a positive number"
    except ValueError:
        return f"{value!r} must be 'auto' or a number"


def _device(value: str) -> str:
    return "" if value in ("auto", "cpu") or value.startswith("cuda") else f"{value!r} must be auto, cpu or cuda[:N]"


def _references(value: str) -> str:
    from peer.sim.references import parse_references

    try:
        parse_references(value)
    except ValueError as exc:
        return str(exc)
    return ""


@dataclass
class RunConfig:
    """What a run trains and how: the same for the simulator, the testbed and every daemon of a run.
    The learning defaults come from ``benchmarks/defaults_study.py`` (benchmarks/README.md section 8):
    at the same samples per peer, mixing every 2 steps of 8 learns more than every 5 steps of 16; the
    peers' rate of 4e-3 with a warm-up learns more than 2e-3, and a few mixing-only rounds at the end
    bring every peer to the network average."""

    strategy: str = setting("tad", "lora | ffa | rolora | fedsa | tad", check=one_of(_strategies))
    switch_interval: str = setting(
        "default",
        "rounds per A/B phase: an integer, 'default' (tad 5, rolora 1) or 'auto' (T from the spectral gap of "
        "the configured topology)",
        check=_switch_interval,
        daemon_help="rounds per A/B phase: an integer, 'default' (tad 5, rolora 1) or 'auto' (T agreed by the "
        "peers from measured link rates: each turns the fraction of its links that counted in the last 20 rounds "
        "into a proposal, all take the largest at a phase boundary)",
    )
    peers: int = setting(4, "number of peers", check=at_least(1))
    topology: str = setting(
        "er",
        "complete | ring | er (time-varying Erdős–Rényi) | pairwise (random encounters)",
        check=one_of(_topologies),
        daemon_help="complete (every link that works) | er (each working link also used only with probability "
        "--edge-prob, seeded synthetic drops both ends agree on); ring and pairwise are simulator-only",
        daemon_default="complete; er when only --edge-prob is given",
    )
    edge_prob: float = setting(
        0.5,
        "edge probability per round for er and pairwise",
        check=within(0.0, 1.0),
        daemon_help="with --topology er: the probability that a working link is used in a round",
        daemon_default="0.5 with --topology er",
    )
    rounds: int = setting(60, "communication rounds that train", check=at_least(1))
    consensus_rounds: int = setting(
        5,
        "rounds after the last training round that only mix (nothing trains), so that each peer's own model "
        "ends near the network average; 0: none",
        check=at_least(0),
    )
    local_steps: int = setting(2, "optimizer steps per round (K)", check=at_least(1))
    batch_size: int = setting(8, "examples per step", check=at_least(1))
    learning_rate: float = setting(4e-3, "the peers' AdamW learning rate", check=positive)
    lr_schedule: str = setting(
        "constant",
        "constant | linear (decays to 0 at the run's last step; the references decay over theirs)",
        check=one_of(_lr_schedules),
    )
    lr_warmup: float = setting(
        0.1,
        "fraction of the peers' steps over which their learning rate first rises linearly from 0 (the "
        "references take none)",
        check=within(0.0, 1.0),
    )
    reference_learning_rate: str = setting(
        AUTO,
        "the references' learning rate: auto (the peers' / sqrt(peers): a mixed step averages the peers' "
        "batches, one model's step a single batch; the square-root rule for Adam) or a number",
        check=_reference_learning_rate,
    )
    max_length: int = setting(64, "tokens per example (longer ones are truncated)", check=at_least(8))
    seed: int = setting(0, "one seed for data split, model init, topology and batches")
    task_type: str = setting(
        "classification",
        "classification (a label per text) | causal-lm (instructions and answers; its own defaults for model, "
        "task, lora-targets, train-head and the evaluation: CAUSAL_LM_DEFAULTS in peer/config.py)",
        check=one_of(_task_types),
    )
    model: str = setting(
        "minilm",
        "minilm (offline default) | tiny-bert (tests) | Hugging Face id or local path; causal-lm: smollm2 "
        "(offline default) | tiny-llama (tests) | causal LM id or local path",
        check=lambda v: model_problem(v),
    )
    task: str = setting(
        "movie-reviews",
        "movie-reviews (offline default) | trec | glue/sst2 | glue/qnli | glue/qqp | glue/mnli | csv:PATH | "
        "jsonl:PATH; causal-lm: trec (offline default) | movie-reviews | jsonl:PATH | csv:PATH | hf:DATASET "
        "(peer/data/instructions.py)",
    )
    category_column: str = setting(
        "category",
        "causal-lm data files: the column that label-skew and dirichlet partition by (none: one category)",
    )
    partition: str = setting("label-skew", "label-skew (the paper's) | dirichlet | iid", check=one_of(_partitions))
    dirichlet_alpha: float = setting(
        0.5,
        "concentration for --partition dirichlet (smaller: more skew)",
        check=positive,
    )
    samples_per_peer: int = setting(0, "cap on training examples per peer (0: split everything)", check=at_least(0))
    lora_r: int = setting(8, "LoRA rank", check=at_least(1))
    lora_alpha: int = setting(16, "LoRA alpha", check=at_least(0))
    lora_dropout: float = setting(0.1, "LoRA dropout", check=within(0.0, 1.0, high_open=True))
    lora_targets: str = setting(
        "query,value",
        "comma-separated module names that get LoRA",
        check=lambda v: "" if any(name.strip() for name in v.split(",")) else "needs at least one module name",
    )
    eval_every: int = setting(20, "evaluate every N rounds (and after the last)", check=at_least(1))
    eval_samples: int = setting(500, "validation examples per evaluation (0: all)", check=at_least(0))
    device: str = setting("auto", "auto (cuda when present, else cpu) | cpu | cuda | cuda:N", check=_device)
    precision: str = setting(
        "auto",
        "auto | fp32 | bf16 | fp16: dtype of the forward pass (factors and optimizer stay fp32; the wire: "
        "--wire-dtype); auto: bf16 on a GPU or a CPU that computes it natively (AVX512-BF16, AMX), else fp32",
        check=one_of(_precisions),
    )
    batching: str = setting(
        "by-length",
        "by-length: batches of similar length cut from the random order (same examples, less padding) | random",
        check=one_of(_batchings),
    )
    train_head: int = setting(
        1,
        "1: also train the classification head and mix it every round (a linear block: no cross term); 0: "
        "frozen, the paper's setting",
        check=zero_or_one,
    )
    references: str = setting(
        "alone,centralized",
        "simulate and testbed: also train, at the same budget and seed, each peer alone and one model on all the "
        "data (alone,centralized | alone | centralized | none)",
        check=_references,
    )
    mixing_rule: str = setting(
        "average",
        "average (plain gossip) | clipped | trimmed-mean: bound a faulty neighbour's influence "
        "(peer/algorithm/robust.py)",
        check=one_of(_mixing_rules),
    )
    clip_multiplier: float = setting(
        2.0,
        "clipped: radius = this x median of recent deviation norms",
        check=positive,
    )
    trim: int = setting(
        1,
        "trimmed-mean: values dropped at each end per coordinate (tolerates this many bad neighbours)",
        check=at_least(0),
    )
    wire_dtype: str = setting(
        "fp32",
        "fp32 | bf16 | fp16 | int8: the form factors travel in (1/2, 1/2, 1/4 + 1/256 of the bytes of fp32); mixed in "
        "the difference form, which keeps the network-wide sums exact (peer/algorithm/compression.py)",
        check=one_of(_wire_dtypes),
    )

    def validate(self) -> RunConfig:
        run_checks(self)
        _check_task_type(self)
        return self

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def total_rounds(self) -> int:
        """Every round the clock counts: the training rounds, then the consensus rounds."""
        return self.rounds + self.consensus_rounds

    @property
    def reference_rate(self) -> float:
        """The references' learning rate (``reference_learning_rate`` resolved)."""
        if self.reference_learning_rate == AUTO:
            return self.learning_rate / math.sqrt(self.peers)
        return float(self.reference_learning_rate)


# What ``--task-type causal-lm`` changes where the setting is not given: a causal model and instruction
# data, LoRA on the attention projections that Llama-style models name so, no classification head, and
# an evaluation sized for a model 6x MiniLM's depth that scores every candidate answer.
CAUSAL_LM_DEFAULTS: dict[str, Any] = {
    "model": "smollm2",
    "task": "trec",
    "lora_targets": "q_proj,v_proj",
    "train_head": 0,
    "max_length": 96,
    "rounds": 15,  # 30 steps of 8 per peer: on 2 CPU cores about 1.8 s each (benchmarks/README.md section 12)
    "eval_samples": 200,
    # The rate benchmarks/README.md section 12 measured; the settings that came after it keep the values it
    # ran with (legacy_settings): they were chosen on MiniLM and not tried on a causal LM.
    "learning_rate": 2e-3,
}
CLASSIFICATION_ONLY_MODELS = ("minilm", "tiny-bert")
CAUSAL_ONLY_MODELS = ("smollm2", "tiny-llama")


def legacy_settings(recorded: Mapping[str, object]) -> dict:
    """What a run's saved config (a daemon's ``summary.json`` of an older version) did without the
    settings it predates: read back, it is assessed as it ran, not at today's defaults."""
    then = {
        "lr_warmup": 0.0,
        "consensus_rounds": 0,
        "reference_learning_rate": str(recorded.get("learning_rate", 2e-3)),
    }
    return {k: v for k, v in then.items() if k not in recorded}


def task_type_defaults(given: Mapping[str, object]) -> dict:
    """The settings ``--task-type`` implies, for those not ``given``."""
    if given.get("task_type") != "causal-lm":
        return {}
    implied = {k: v for k, v in CAUSAL_LM_DEFAULTS.items() if k not in given}
    return {**implied, **legacy_settings({**implied, **given})}


def _check_task_type(cfg: RunConfig) -> None:
    causal = cfg.task_type == "causal-lm"
    _check(
        not (causal and cfg.model in CLASSIFICATION_ONLY_MODELS),
        "model",
        f"{cfg.model} is a classification model; with --task-type causal-lm use smollm2, tiny-llama or a causal LM",
    )
    _check(
        causal or cfg.model not in CAUSAL_ONLY_MODELS,
        "model",
        f"{cfg.model} is a causal LM; give --task-type causal-lm (or a classification model)",
    )
    _check(not (causal and cfg.train_head), "train-head", "a causal LM has no classification head; use 0")


def _check(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{key.replace('_', '-')}: {message}")


def run_checks(config: object) -> None:
    """Every field's own check (``setting(check=...)``); the first problem is a ConfigError naming it."""
    for f in dataclasses.fields(config):  # type: ignore[arg-type]
        check = f.metadata.get("check")
        if check is not None and (problem := check(getattr(config, f.name))):
            raise ConfigError(f"{f.name.replace('_', '-')}: {problem}")


def default_peer_id(index: int) -> str:
    """``peer-00``, ``peer-01`` ...: the ids the testbeds, the simulator and ``tadlora certs`` use."""
    return f"peer-{index:02d}"


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

    peer_index: int = setting(0, "this peer's shard of the data, 0 .. peers-1")
    peer_id: str = setting("", "this peer's id", daemon_default="peer-<index>")
    run_id: str = setting(
        "tadlora", "the run this peer belongs to; peers of other runs are ignored", check=lambda v: run_id_problem(v)
    )
    listen: str = setting(
        f"0.0.0.0:{DEFAULT_PORT}",
        "host:port of this peer's gRPC endpoint; 0.0.0.0: every interface, peers are told this machine's address "
        "(see --mdns-interface); port 0: any free port",
        check=lambda v: host_port_problem(v),
    )
    peer: str = setting("", "static peers, comma-separated host:port (usable with mDNS)")
    mdns: int = setting(
        1,
        "1: discover peers by mDNS; 0: static peers only",
        check=zero_or_one,
    )
    mdns_interface: str = setting(
        "",
        "address to run mDNS on and to tell peers",
        daemon_default="the host of --listen; for 0.0.0.0 this machine's address on its outgoing interface, "
        "loopback only when it has no other",
    )
    round_timeout_min: float = setting(
        2.0,
        "lower bound of the adaptive exchange deadline, seconds (peer/daemon/clock.py says how to choose)",
        check=positive,
    )
    round_timeout_max: float = setting(60.0, "upper bound of the adaptive exchange deadline, seconds")
    discovery_wait: float = setting(3.0, "seconds to look for peers before the first round", check=at_least(0))
    chunk_size: int = setting(DEFAULT_CHUNK_SIZE, "bytes per gRPC chunk", check=within(1024, MAX_CHUNK_SIZE))
    lane: int = setting(
        1,
        "1: large payloads go on a plain TCP connection beside the gRPC stream, from a second port the "
        "daemon listens on (never over TLS; peer/transport/lane.py); 0: every payload in chunks, one port",
        check=zero_or_one,
    )
    lane_min_bytes: int = setting(
        DEFAULT_LANE_MIN_BYTES, "the smallest payload sent on a neighbour's lane (--lane 1)", check=at_least(0)
    )
    lane_port: int = setting(
        0,
        "port of this peer's lane, on the host of --listen (--lane 1); 0: any free port, which peers learn "
        "from its replies. Fix it where a firewall must let it through",
        check=within(0, 65535),
    )
    frame_timeout: float = setting(
        DEFAULT_FRAME_TIMEOUT_S,
        "seconds without a frame before a stream counts as stalled",
        check=positive,
    )
    tls_ca: str = setting(
        "", "mutual TLS: the run's CA certificate (from tadlora certs); with --tls-cert and --tls-key"
    )
    tls_cert: str = setting("", "mutual TLS: this peer's certificate (its common name must be the peer id)")
    tls_key: str = setting("", "mutual TLS: this peer's private key")
    metrics: str = setting(
        "",
        "serve Prometheus metrics at host:port/metrics (e.g. 0.0.0.0:9100; port 0: any free)",
        check=lambda v: host_port_problem(v) if v else "",
    )
    tensorboard: str = setting("", "write TensorBoard event files under this folder (needs tensorboardX)")
    log_format: str = setting(
        "text", "text | json (one JSON object per log line)", check=one_of(lambda: ["text", "json"])
    )

    def validate(self, run: RunConfig) -> DaemonConfig:
        run_checks(self)
        _check(0 <= self.peer_index < run.peers, "peer-index", f"must lie in [0, {run.peers}), got {self.peer_index}")
        _check(
            self.round_timeout_min <= self.round_timeout_max,
            "round-timeout-min",
            "need 0 < round-timeout-min <= round-timeout-max",
        )
        _check(
            run.topology in ("er", "complete"),
            "topology",
            "the daemon runs 'complete' or 'er' (--edge-prob); ring and pairwise are simulator-only",
        )
        given = [bool(x) for x in (self.tls_ca, self.tls_cert, self.tls_key)]
        _check(all(given) or not any(given), "tls-ca", "give --tls-ca, --tls-cert and --tls-key together, or none")
        if not self.peer_id:
            self.peer_id = default_peer_id(self.peer_index)
        _check(not peer_id_problem(self.peer_id), "peer-id", peer_id_problem(self.peer_id))
        return self

    @property
    def tls(self) -> bool:
        return bool(self.tls_ca)

    @property
    def static_peers(self) -> list[str]:
        return [p.strip() for p in self.peer.split(",") if p.strip()]


def _coerce(key: str, value, target_type: str):
    if target_type == "str":  # a number too: reference-learning-rate = 0.001 in TOML
        if isinstance(value, (int, float, str)) and not isinstance(value, bool):
            return str(value)
    elif target_type == "int":
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif target_type == "float" and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    raise ConfigError(f"{key}: expected {target_type}, got {value!r}")


def load_config(path: str | Path | None = None, overrides: dict | None = None) -> RunConfig:
    """Defaults, then the TOML file at ``path`` (if any), then ``overrides`` (flags that were given)."""
    given = _given(path, overrides, [RunConfig])
    return _load({**task_type_defaults(given), **given}, [RunConfig])[0].validate()


def load_daemon_config(
    path: str | Path | None = None, overrides: dict | None = None, environ: Mapping[str, str] | None = None
) -> tuple[RunConfig, DaemonConfig]:
    """Like ``load_config``, for the daemon: one file, ``TADLORA_*`` variables of ``environ`` and one set
    of flags fill both dataclasses."""
    classes = [RunConfig, DaemonConfig]
    env = env_settings(environ or {}, classes)
    given = _given(path, {**env, **{k: v for k, v in (overrides or {}).items() if v is not None}}, classes)
    run, daemon = _load({**daemon_topology_defaults(given), **task_type_defaults(given), **given}, classes)
    run.validate()
    return run, daemon.validate(run)


ENV_PREFIX = "TADLORA_"
# beside one variable per setting, ``tadlora run`` reads these two (the container images use them)
ENV_CONFIG = ENV_PREFIX + "CONFIG"  # the TOML file, when no --config is given
ENV_OUT = ENV_PREFIX + "OUT"  # the output folder, when no --out is given


def daemon_paths(config: str | None, out: str | None, environ: Mapping[str, str]) -> tuple[str | None, str | None]:
    """``--config`` and ``--out`` of ``tadlora run``, else ``TADLORA_CONFIG`` and ``TADLORA_OUT``."""
    return config or environ.get(ENV_CONFIG) or None, out or environ.get(ENV_OUT) or None


def env_settings(environ: Mapping[str, str], classes) -> dict:
    """Settings from ``TADLORA_<NAME>`` variables, converted to each field's type; a bad value names it."""
    fields = {name: f for cls in classes for name, f in config_fields(cls).items()}
    settings = {}
    for name, f in fields.items():
        raw = environ.get(ENV_PREFIX + name.upper())
        if raw is None:
            continue
        try:
            settings[name] = {"int": int, "float": float}.get(str(f.type), str)(raw.strip())
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
    return {k: _coerce(f"{where}{k.replace('_', '-')}", v, str(all_fields[k].type)) for k, v in values.items()}


def _load(values: dict, classes) -> list:
    typed = _typed(values, classes)
    return [cls(**{k: v for k, v in typed.items() if k in config_fields(cls)}) for cls in classes]
