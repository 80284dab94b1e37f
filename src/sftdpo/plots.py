"""Matplotlib helpers: headless backend, atomic PNG writes."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from sftdpo.io import atomic_path


def save_figure(fig: "plt.Figure", path: str) -> None:
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def plot_curve(history: list[dict], keys: list[str], path: str, title: str) -> None:
    """Training curves from a Trainer's log history (one line per key that was logged)."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for key in keys:
        points = [(h["step"], h[key]) for h in history if key in h]
        if points:
            ax.plot(*zip(*points), marker=".", label=key)
    ax.set(xlabel="step", title=title)
    ax.legend()
    save_figure(fig, path)
