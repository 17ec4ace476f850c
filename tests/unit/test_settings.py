"""One source per setting (issue 13): the dataclass field carries default, help and check; the CLI's
flags, the TOML reader, the TADLORA_* environment and the README's table all come from it."""

import dataclasses

import pytest

from peer.cli import build_parser
from peer.config import (
    ConfigError,
    DaemonConfig,
    RunConfig,
    config_fields,
    env_settings,
    legacy_settings,
    load_config,
)
from peer.tools import readme


def _all_fields():
    return [f for cls in (RunConfig, DaemonConfig) for f in dataclasses.fields(cls)]


def test_the_readme_settings_table_is_generated_from_the_fields_and_fresh():
    current = readme.README.read_text(encoding="utf-8")
    assert readme.with_table(current) == current, "stale: run python -m peer.tools.readme"
    for f in _all_fields():
        assert f"`--{f.name.replace('_', '-')}`" in current


def test_every_setting_has_a_help_and_the_cli_shows_it():
    parser = build_parser()
    run = parser._subparsers._group_actions[0].choices["run"]
    helps = {a.dest: a.help for a in run._actions}
    for f in _all_fields():
        assert f.metadata.get("help"), f"{f.name} has no help"
        shown = f.metadata.get("daemon_help") or f.metadata["help"]
        assert helps[f.name].startswith(shown), f.name


@pytest.mark.parametrize(
    "name, bad",
    [
        ("peers", 0),
        ("edge_prob", 1.5),
        ("strategy", "sgd"),
        ("lora_dropout", 1.0),
        ("precision", "fp8"),
        ("switch_interval", "soon"),
        ("train_head", 2),
        ("batching", "sorted"),
        ("reference_learning_rate", "fast"),
        ("reference_learning_rate", "-1e-3"),
        ("lr_warmup", 1.5),
        ("consensus_rounds", -1),
    ],
)
def test_a_fields_own_check_names_the_setting(name, bad):
    with pytest.raises(ConfigError, match=f"^{name.replace('_', '-')}: "):
        load_config(overrides={name: bad})


def test_the_references_learn_at_the_peers_rate_over_the_root_of_the_peers_unless_given_one():
    assert load_config(overrides={"learning_rate": 4e-3, "peers": 4}).reference_rate == pytest.approx(2e-3)
    assert load_config(overrides={"learning_rate": 4e-3, "peers": 16}).reference_rate == pytest.approx(1e-3)
    assert load_config(overrides={"reference_learning_rate": "3e-4"}).reference_rate == pytest.approx(3e-4)
    assert load_config(overrides={"reference_learning_rate": 3e-4}).reference_rate == pytest.approx(3e-4)  # TOML
    # a causal LM's references train at the peers' rate, as its benchmark measured them
    causal = load_config(overrides={"task_type": "causal-lm", "model": "tiny-llama", "learning_rate": 1e-3})
    assert causal.reference_rate == pytest.approx(1e-3) and causal.consensus_rounds == 0


def test_a_run_read_back_from_an_older_summary_is_assessed_as_it_ran():
    old = {"learning_rate": 2e-3, "peers": 4}  # saved before the warm-up, consensus rounds, references' rate
    cfg = load_config(overrides={**legacy_settings(old), **old})
    assert (cfg.lr_warmup, cfg.consensus_rounds, cfg.reference_rate) == (0.0, 0, pytest.approx(2e-3))


def test_the_environment_reads_every_setting_by_its_field_type():
    settings = env_settings(
        {"TADLORA_PEERS": "7", "TADLORA_EDGE_PROB": "0.25", "TADLORA_RUN_ID": "lab"}, [RunConfig, DaemonConfig]
    )
    assert settings == {"peers": 7, "edge_prob": 0.25, "run_id": "lab"}
    assert set(config_fields()) | set(config_fields(DaemonConfig)) == {f.name for f in _all_fields()}


def _listed(help_text: str) -> set[str]:
    """The choices a help text lists: the first word of each ' | '-separated part."""
    return {part.split()[0].rstrip(":,") for part in help_text.split(" | ")}


def test_the_choices_a_help_lists_are_the_registries_own():
    # the help is text written once on the field; this keeps it from drifting from the code's vocabularies
    from peer.algorithm.robust import RULES
    from peer.algorithm.strategies import available_strategies
    from peer.algorithm.topology import TOPOLOGIES
    from peer.data.partition import SCHEMES
    from peer.training.precision import Precision
    from peer.training.trainer import Batching, LrSchedule

    fields = {f.name: f for f in _all_fields()}
    registries = {
        "strategy": set(available_strategies()),
        "topology": set(TOPOLOGIES),
        "partition": set(SCHEMES),
        "mixing_rule": set(RULES),
        "precision": {p.value for p in Precision},
        "batching": {b.value for b in Batching},
        "lr_schedule": {s.value for s in LrSchedule},
    }
    for name, registry in registries.items():
        assert _listed(fields[name].metadata["help"]) == registry, name
