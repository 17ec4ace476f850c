"""Shared helpers of the accuracy benchmarks: run a grid of simulator configs, resume, tabulate, plot.

Each run writes its own folder (``metrics.jsonl``, ``summary.json``); a run whose ``summary.json``
exists is not run again, so an interrupted benchmark continues where it stopped.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from peer.config import load_config  # noqa: E402
from peer.sim import simulate  # noqa: E402


def run(out: Path, **settings) -> dict:
    summary_path = out / "summary.json"
    if summary_path.exists():
        return json.loads(summary_path.read_text())
    cfg = load_config(overrides=settings)
    print(f"running {out.name}: {settings}", file=sys.stderr, flush=True)
    return simulate(cfg, out=out, progress=True)


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
