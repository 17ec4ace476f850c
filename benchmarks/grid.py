"""Shared helpers of the accuracy benchmarks: run a grid of simulator configs, resume, tabulate, plot.

Each run writes its own folder (``metrics.jsonl``, ``summary.json``); a run whose ``summary.json``
exists is not run again, so an interrupted benchmark continues where it stopped. Only the summaries,
the figures and the figures' points (``accuracy.json`` beside ``accuracy.png``) are committed; the
per-round ``metrics.jsonl`` and the per-peer folders stay on the machine that ran them (.gitignore).

The scripts that import this module (``from grid import ...``) find it because Python puts a script's
own folder first on ``sys.path``: run them as ``python benchmarks/<script>.py`` from the repository root.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

from peer.config import legacy_settings, load_config
from peer.core.run_setup import prepare_data
from peer.sim import simulate
from peer.sim.references import parse_references, run_references

# The studies here were measured before issue 11 moved the embedded default to a higher rate with warm-up,
# consensus rounds and references at the rate over √peers (benchmarks/README.md section 8): a row that does
# not name one of those settings keeps the value it ran with, so that re-running a study reproduces its figures.
MEASURED_LEARNING_RATE = 2e-3


def _measured(settings: dict) -> dict:
    settings = {"learning_rate": MEASURED_LEARNING_RATE, **settings}
    return {**legacy_settings(settings), **settings}


def run(out: Path, **settings) -> dict:
    """A simulator run (without references unless ``settings`` ask for them), resumed from its summary."""
    summary_path = out / "summary.json"
    if summary_path.exists():
        return json.loads(summary_path.read_text())
    cfg = load_config(overrides={"references": "none", **_measured(settings)})
    print(f"running {out.name}: {settings}", file=sys.stderr, flush=True)
    return simulate(cfg, out=out, progress=True)


def references(out: Path, **settings) -> dict[str, float]:
    """Only the references (alone, centralized) of a configuration, resumed from ``out/references.json``.
    They depend on the data, the seed, the budget and the learning settings, not on the strategy or the
    graph, so one folder serves every method and edge probability of a seed."""
    path = out / "references.json"
    if path.exists():
        return json.loads(path.read_text())
    cfg = load_config(overrides={"references": "alone,centralized", **_measured(settings)})
    print(f"references {out.name}: {settings}", file=sys.stderr, flush=True)
    result = run_references(cfg, prepare_data(cfg), parse_references(cfg.references))
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    return result


def mean_spread(values: list[float]) -> str:
    """``0.812 ± 0.014`` (mean ± sample standard deviation over seeds)."""
    if len(values) < 2:
        return f"{values[0]:.3f}" if values else "-"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def accuracy_curve(out: Path) -> tuple[list[int], list[float]] | None:
    """(rounds, mean accuracy) of a run from its ``metrics.jsonl``; None where the run has none (a clone)."""
    path = out / "metrics.jsonl"
    if not path.exists():
        return None
    rounds, acc = [], []
    for line in path.read_text().splitlines():
        record = json.loads(line)
        if "mean_accuracy" in record:
            rounds.append(record["round"] + 1)
            acc.append(record["mean_accuracy"])
    return rounds, acc


def markdown_table(row_names: list[str], col_names: list[str], cell) -> str:
    lines = ["| | " + " | ".join(col_names) + " |", "|---" * (len(col_names) + 1) + "|"]
    for row in row_names:
        lines.append(f"| {row} | " + " | ".join(cell(row, col) for col in col_names) + " |")
    return "\n".join(lines)


def curve_points(path: Path, panels: dict[str, dict[str, Path]]) -> tuple[dict, bool]:
    """The points of ``plot_curves``'s figure at ``path``: panel -> line -> rounds and mean accuracy, from
    each run's ``metrics.jsonl`` or, for a run without it, from the points kept beside the figure; and
    whether any run had its ``metrics.jsonl``."""
    points_path = path.with_suffix(".json")
    kept = json.loads(points_path.read_text()) if points_path.exists() else {}
    points: dict[str, dict[str, dict[str, list]]] = {}
    fresh = False
    for panel, runs in panels.items():
        for label, folder in runs.items():
            curve = accuracy_curve(folder)
            fresh |= curve is not None
            if curve is not None:
                points.setdefault(panel, {})[label] = {"rounds": curve[0], "mean_accuracy": curve[1]}
            elif label in kept.get(panel, {}):
                points.setdefault(panel, {})[label] = kept[panel][label]
    return points, fresh


def plot_curves(path: Path, panels: dict[str, dict[str, Path]], title: str) -> None:
    """One panel per key of ``panels``; in each, one accuracy-against-rounds line per run folder.

    The points go beside the figure too (``path`` with ``.json``), committed with it. A run without its
    ``metrics.jsonl`` (a fresh clone keeps only the summaries) takes its line from that file; when no
    run has one, the figure and its points are left as they are."""
    points, fresh = curve_points(path, panels)
    if not fresh:
        print(f"no metrics.jsonl in these runs: {path} left as it is", file=sys.stderr)
        return
    path.with_suffix(".json").write_text(json.dumps(points, indent=2) + "\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), sharey=True, squeeze=False)
    for ax, panel in zip(axes[0], panels):
        for label, line in points.get(panel, {}).items():
            ax.plot(line["rounds"], line["mean_accuracy"], marker="o", label=label)
        ax.set_title(panel)
        ax.set_xlabel("round")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("mean validation accuracy over peers")
    axes[0][-1].legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
