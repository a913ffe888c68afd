"""The figures of a run directory: curves.png of a trained run, and of a soup."""

from __future__ import annotations

import json
from pathlib import Path

__all__ = ["plot_curves", "plot_soup"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curves(run_dir: Path) -> Path:
    """Draws curves.png from metrics.jsonl: training loss per task and dev metrics per evaluation (by epoch,
    counted from 0 as the logs count them). A run of one task shows its metric without the overall score, which
    would hide it."""
    plt = _pyplot()
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    x = [r.get("epoch_progress", r["epoch"]) for r in records]
    fig, (ax_loss, ax_dev) = plt.subplots(1, 2, figsize=(10, 4))
    for task in records[0]["loss"]:
        ax_loss.plot(x, [r["loss"][task] for r in records], marker="o", label=task)
    metrics = [m for m in records[0]["dev"] if m != "overall" or len(records[0]["dev"]) > 2]
    for metric in metrics:
        ax_dev.plot(x, [r["dev"][metric] for r in records], marker="o", label=metric)
    ax_loss.set(title="training loss", xlabel="epoch")
    ax_dev.set(title="dev metrics", xlabel="epoch")
    for ax in (ax_loss, ax_dev):
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.legend()
        ax.grid(alpha=0.3)
    fig.suptitle(run_dir.name)
    fig.tight_layout()
    fig.savefig(run_dir / "curves.png", dpi=100)
    plt.close(fig)
    return run_dir / "curves.png"


def plot_soup(run_dir: Path, ingredients: list[tuple[Path, list[dict]]], dev: dict) -> Path:
    """Draws curves.png: each ingredient's dev metrics per epoch (from its metrics records), the soup's as
    horizontal dashed lines."""
    plt = _pyplot()
    metrics = list(dev)
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.2 * len(metrics), 4.0), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        for ingredient, records in ingredients:
            ax.plot([r["epoch"] for r in records], [r["dev"][metric] for r in records], marker="o",
                    label=ingredient.name)
        ax.axhline(dev[metric], color="black", linestyle="--", label="soup")
        ax.set(title=f"dev {metric}", xlabel="epoch")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
    fig.legend(*axes[0, 0].get_legend_handles_labels(), loc="lower center", ncol=2, fontsize=8)
    fig.suptitle(f"{run_dir.name}: mean of {len(ingredients)} runs' best parameters")
    fig.tight_layout(rect=(0, 0.04 + 0.045 * ((len(ingredients) + 2) // 2), 1, 1))
    fig.savefig(run_dir / "curves.png", dpi=100)
    plt.close(fig)
    return run_dir / "curves.png"
