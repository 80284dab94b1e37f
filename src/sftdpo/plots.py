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


def plot_panels(history: list[dict], panels: list[tuple[str, list[str]]], path: str, title: str) -> None:
    """One panel a quantity: each key's train line (solid) and its held-out line (`eval_<key>`, dashed)."""
    cols = 3
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    for ax, (panel_title, keys) in zip(axes.flat, panels):
        for i, key in enumerate(keys):
            color = f"C{i}"
            for prefix, style, where in (("", "-", "train"), ("eval_", "--", "held-out")):
                points = [(h["step"], h[prefix + key]) for h in history if prefix + key in h]
                if points:
                    ax.plot(*zip(*points), style, color=color, marker=".", label=f"{key} ({where})")
        ax.set(xlabel="step", title=panel_title)
        ax.title.set_fontsize(9)
        if ax.lines:
            ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    fig.suptitle(title)
    save_figure(fig, path)


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
