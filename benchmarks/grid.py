"""Shared helpers of the accuracy benchmarks: run a grid of simulator configs, resume, tabulate, plot.

Each run writes its own folder (``metrics.jsonl``, ``summary.json``); a run whose ``summary.json``
exists is not run again, so an interrupted benchmark continues where it stopped.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

from peer.config import load_config
from peer.run_setup import prepare_data
from peer.sim import simulate
from peer.sim.references import parse_references, run_references


def run(out: Path, **settings) -> dict:
    """A simulator run (without references unless ``settings`` ask for them), resumed from its summary."""
    summary_path = out / "summary.json"
    if summary_path.exists():
        return json.loads(summary_path.read_text())
    cfg = load_config(overrides={"references": "none", **settings})
    print(f"running {out.name}: {settings}", file=sys.stderr, flush=True)
    return simulate(cfg, out=out, progress=True)


def references(out: Path, **settings) -> dict[str, float]:
    """Only the references (alone, centralized) of a configuration, resumed from ``out/references.json``.
    They depend on the data, the seed, the budget and the learning settings, not on the strategy or the
    graph, so one folder serves every method and edge probability of a seed."""
    path = out / "references.json"
    if path.exists():
        return json.loads(path.read_text())
    cfg = load_config(overrides={"references": "alone,centralized", **settings})
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


def accuracy_curve(out: Path) -> tuple[list[int], list[float]]:
    rounds, acc = [], []
    for line in (out / "metrics.jsonl").read_text().splitlines():
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


def plot_curves(path: Path, panels: dict[str, dict[str, Path]], title: str) -> None:
    """One panel per key of ``panels``; in each, one accuracy-against-rounds line per run folder."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), sharey=True, squeeze=False)
    for ax, (panel, runs) in zip(axes[0], panels.items()):
        for label, folder in runs.items():
            ax.plot(*accuracy_curve(folder), marker="o", label=label)
        ax.set_title(panel)
        ax.set_xlabel("round")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("mean validation accuracy over peers")
    axes[0][-1].legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
