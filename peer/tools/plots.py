"""``tadlora plot DIR [DIR ...]``: PNGs of one or several runs, simulator or daemons.

A run folder is either a simulator's ``--out`` (``metrics.jsonl``) or a testbed's (``peer-*/rounds.jsonl``,
one folder per daemon; a single daemon's ``--out`` works too). Written to ``--out`` (default: the first
run folder):

- ``accuracy.png``: mean validation accuracy over peers against rounds, one line per run, with the
  network average (dotted) and the references of the run's ``summary.json`` (dashed: each peer
  alone, one model on all the data; see ``peer.sim.references``);
- ``loss.png``: mean training loss over peers against rounds, one line per run;
- ``consensus.png``: consensus distance of A and of B against rounds (simulator runs: only the
  simulator sees every peer at once);
- ``links.png``: which links were up in each round, one panel per run (peers x rounds, the number
  of neighbours each peer mixed with; simulator runs show the round's edge count).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from peer.errors import UsageError
from peer.strict_json import number


@dataclass
class RunCurves:
    label: str
    accuracy: dict[int, float] = field(default_factory=dict)  # round (1-based, after it) -> mean accuracy
    loss: dict[int, float] = field(default_factory=dict)
    consensus_a: dict[int, float] = field(default_factory=dict)
    consensus_b: dict[int, float] = field(default_factory=dict)
    links: dict[str, dict[int, int]] = field(default_factory=dict)  # row name -> round -> links
    network_average: dict[int, float] = field(default_factory=dict)  # round -> accuracy of the averaged factors
    summary: dict = field(default_factory=dict)  # the run's summary.json (references, final network average)


REFERENCE_STYLES = {"alone": ("tab:red", "each peer alone"), "centralized": ("tab:green", "one model on all data")}


def draw_references(ax, summary: dict, label_prefix: str = "") -> None:
    """Horizontal lines at the references' accuracies (and the final network average) of a summary."""
    for name, value in summary.get("references", {}).items():
        color, label = REFERENCE_STYLES.get(name, ("grey", name))
        ax.axhline(value, color=color, linestyle="--", linewidth=1, label=f"{label_prefix}{label} {value:.3f}")
    if summary.get("network_average") is not None:
        ax.axhline(
            summary["network_average"],
            color="black",
            linestyle=":",
            linewidth=1,
            label=f"{label_prefix}network average {summary['network_average']:.3f}",
        )


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def load_run(folder: Path, label: str | None = None) -> RunCurves:
    """Curves of one run folder; a folder with neither layout is a ValueError that says so."""
    folder = Path(folder)
    curves = RunCurves(label or folder.name)
    if (folder / "summary.json").exists():
        curves.summary = json.loads((folder / "summary.json").read_text())
    if (folder / "metrics.jsonl").exists():
        for r in _jsonl(folder / "metrics.jsonl"):
            step = r["round"] + 1
            peer_losses = r["train_loss"]
            values = peer_losses.values() if isinstance(peer_losses, dict) else peer_losses
            curves.loss[step] = float(np.mean([number(v) for v in values]))
            curves.consensus_a[step], curves.consensus_b[step] = r["consensus_a"], r["consensus_b"]
            curves.links.setdefault("edges", {})[step] = r.get("edges", 0)
            if "mean_accuracy" in r:
                curves.accuracy[step] = number(r["mean_accuracy"])
            if r.get("network_average") is not None:
                curves.network_average[step] = r["network_average"]
        return curves
    peers = sorted(p.parent for p in folder.glob("*/rounds.jsonl")) or (
        [folder] if (folder / "rounds.jsonl").exists() else []
    )
    if not peers:
        raise UsageError(f"{folder}: neither metrics.jsonl (tadlora simulate) nor */rounds.jsonl (daemons)")
    losses: dict[int, list[float]] = {}
    accuracies: dict[int, list[float]] = {}
    for peer in peers:
        name = peer.name if peer != folder else "peer"
        for r in _jsonl(peer / "rounds.jsonl"):
            step = r["round"] + 1
            losses.setdefault(step, []).append(number(r["train_loss"]))
            curves.links.setdefault(name, {})[step] = len(r["neighbours"])
            if "accuracy" in r:
                accuracies.setdefault(step, []).append(number(r["accuracy"]))
        summary = peer / "summary.json"
        if summary.exists():
            s = json.loads(summary.read_text())
            accuracies.setdefault(s["rounds"], []).append(number(s["mean_accuracy"]))
    curves.loss = {k: float(np.mean(v)) for k, v in sorted(losses.items())}
    curves.accuracy = {k: float(np.mean(v)) for k, v in sorted(accuracies.items())}
    return curves


def plot_runs(runs: list[RunCurves], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    written = []

    def line_plot(name: str, attr: str, ylabel: str) -> None:
        fig, ax = plt.subplots(figsize=(6, 4))
        for run in runs:
            values = getattr(run, attr)
            if values:
                ax.plot(list(values), list(values.values()), marker="o" if len(values) < 15 else None, label=run.label)
            if attr == "accuracy":
                prefix = f"{run.label}: " if len(runs) > 1 else ""
                if run.network_average:
                    ax.plot(
                        list(run.network_average),
                        list(run.network_average.values()),
                        linestyle=":",
                        label=f"{prefix}network average",
                    )
                draw_references(ax, {"references": run.summary.get("references", {})}, prefix)
        ax.set(xlabel="round", ylabel=ylabel)
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
        written.append(out / name)

    line_plot("accuracy.png", "accuracy", "mean validation accuracy over peers")
    line_plot("loss.png", "loss", "mean training loss over peers")
    with_consensus = [r for r in runs if r.consensus_a]
    if with_consensus:
        fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
        for ax, attr, title in ((axes[0], "consensus_a", "A"), (axes[1], "consensus_b", "B")):
            for run in with_consensus:
                values = getattr(run, attr)
                ax.plot(list(values), list(values.values()), label=run.label)
            ax.set(xlabel="round", title=f"consensus distance of {title}", yscale="symlog")
            ax.grid(alpha=0.3)
        axes[0].set_ylabel("(1/N) sum_i ||X_i - mean||^2")
        axes[1].legend()
        fig.tight_layout()
        fig.savefig(out / "consensus.png", dpi=110)
        plt.close(fig)
        written.append(out / "consensus.png")
    fig, axes = plt.subplots(
        len(runs), 1, figsize=(10, 1.2 + 0.45 * sum(len(r.links) for r in runs) + len(runs)), squeeze=False
    )
    for ax, run in zip(axes[:, 0], runs):
        rows = sorted(run.links)
        last = max((max(v) for v in run.links.values() if v), default=0)
        grid = np.full((len(rows), last), np.nan)
        for i, row in enumerate(rows):
            for step, count in run.links[row].items():
                grid[i, step - 1] = count
        image = ax.imshow(
            grid,
            aspect="auto",
            interpolation="nearest",
            cmap="viridis",
            extent=(0.5, last + 0.5, len(rows) - 0.5, -0.5),
        )
        ax.set_yticks(range(len(rows)), rows)
        ax.set(xlabel="round", title=f"{run.label}: links up per round")
        fig.colorbar(image, ax=ax, label="links")
    fig.tight_layout()
    fig.savefig(out / "links.png", dpi=110)
    plt.close(fig)
    written.append(out / "links.png")
    return written
