"""Matplotlib helpers: headless backend, atomic PNG writes."""

from __future__ import annotations

import functools
from typing import Any

from sftdpo.io import atomic_path


@functools.cache
def pyplot() -> Any:
    """matplotlib.pyplot on the headless backend, imported when a job first draws: ~0.5 s that sft and dpo would
    otherwise spend before their first training step (they draw their curves at the end)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot

    return matplotlib.pyplot


def save_figure(fig: Any, path: str) -> None:
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    pyplot().close(fig)


def plot_panels(history: list[dict], panels: list[tuple[str, list[str]]], path: str, title: str) -> None:
    """One panel a quantity: each key's train line (solid) and its held-out line (`eval_<key>`, dashed)."""
    cols = 3
    rows = -(-len(panels) // cols)
    fig, axes = pyplot().subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
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


def plot_curve(
    history: list[dict],
    keys: list[str],
    path: str,
    title: str,
    *,
    stages: list[tuple[int, int, str]] | None = None,
    events: list[dict] | None = None,
) -> None:
    """Training curves from a Trainer's log history (one line per key that was logged). A curriculum's `stages`
    ((from step, to step, name) spans) are shaded bands, its advances and rollbacks (`events`) vertical lines."""
    fig, ax = pyplot().subplots(figsize=(6, 3.5))
    for key in keys:
        points = [(h["step"], h[key]) for h in history if key in h]
        if points:
            ax.plot(*zip(*points), marker=".", label=key)
    names = list(dict.fromkeys(name for _, _, name in stages or []))
    for start, end, name in stages or []:
        ax.axvspan(start, end, color=f"C{2 + names.index(name)}", alpha=0.12, lw=0)
        ax.text((start + end) / 2, 1.0, name, transform=ax.get_xaxis_transform(), ha="center", va="bottom", fontsize=7)
    for event in events or []:
        if event["action"] in EVENT_STYLE:
            ax.axvline(event["step"], **EVENT_STYLE[event["action"]])
    ax.set(xlabel="step")
    ax.set_title(title, pad=14 if stages else 6)
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(zip(labels, handles))
    ax.legend(unique.values(), unique.keys(), fontsize=7)
    save_figure(fig, path)


# How the loss plot marks a curriculum's events (a kept advance needs no mark: the band goes on).
EVENT_STYLE = {
    "advance": dict(color="green", ls="--", lw=1, label="advance"),
    "rollback": dict(color="red", ls="-", lw=1.2, label="rollback"),
}
