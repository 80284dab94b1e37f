"""The final report: accuracy per stage and difficulty, paired bootstrap CIs (JAX), plot, markdown."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from sftdpo.io import atomic_path, read_json, read_parquet, write_json
from sftdpo.tables import EVAL_STAGES

log = logging.getLogger(__name__)

DELTAS = (("sft", "base"), ("dpo", "sft"))


def paired_bootstrap(a: np.ndarray, b: np.ndarray, *, n_samples: int, seed: int) -> dict[str, Any]:
    """Mean of (a - b) over paired items and its 95% percentile CI from `n_samples` resamples.

    One JAX key per resample; `vmap` draws and evaluates all resamples at once.
    """
    import jax
    import jax.numpy as jnp

    diff = jnp.asarray(np.asarray(a, dtype=np.float32) - np.asarray(b, dtype=np.float32))
    n = diff.shape[0]
    keys = jax.random.split(jax.random.PRNGKey(seed), n_samples)

    def resample_mean(key):
        return diff[jax.random.randint(key, (n,), 0, n)].mean()

    means = np.asarray(jax.vmap(resample_mean)(keys))
    lo, hi = np.percentile(means, [2.5, 97.5])
    return {"mean": float(diff.mean()), "ci95": [float(lo), float(hi)], "n": int(n), "n_samples": n_samples}


def bootstrap_ci(x: np.ndarray, *, n_samples: int, seed: int) -> list[float]:
    """95% CI of a mean (the paired bootstrap against zero)."""
    return paired_bootstrap(x, np.zeros_like(x, dtype=np.float32), n_samples=n_samples, seed=seed)["ci95"]


def summarise(evals: dict[str, pd.DataFrame], *, n_samples: int, seed: int) -> dict[str, Any]:
    ids = sorted(set.intersection(*(set(frame["id"]) for frame in evals.values())))
    if not ids:
        raise ValueError("the evaluation tables share no item ids; were they made from the same test split?")
    aligned = {stage: frame.set_index("id").loc[ids] for stage, frame in evals.items()}
    summary: dict[str, Any] = {
        "stages": {},
        "deltas": {},
        "n_items": len(ids),
        "bootstrap": {"samples": n_samples, "seed": seed},
    }
    for stage, frame in aligned.items():
        correct = frame["correct"].to_numpy(dtype=np.float32)
        summary["stages"][stage] = {
            "accuracy": float(correct.mean()),
            "ci95": bootstrap_ci(correct, n_samples=n_samples, seed=seed),
            "n": int(len(correct)),
            "by_difficulty": {
                str(level): float(part["correct"].mean()) for level, part in frame.groupby("difficulty", sort=True)
            },
            "n_by_difficulty": {str(level): int(len(part)) for level, part in frame.groupby("difficulty", sort=True)},
            "mean_tokens": float(frame["n_tokens"].mean()),
        }
    for later, earlier in DELTAS:
        if later in aligned and earlier in aligned:
            summary["deltas"][f"{later}-{earlier}"] = paired_bootstrap(
                aligned[later]["correct"].to_numpy(),
                aligned[earlier]["correct"].to_numpy(),
                n_samples=n_samples,
                seed=seed,
            )
    return summary


def select_dpo(
    val: dict[str, pd.DataFrame], test: dict[str, pd.DataFrame], *, n_samples: int, seed: int
) -> dict[str, Any]:
    """Every DPO run's val and test accuracy, and the run with the best val accuracy: the one called "DPO".

    Runs are the stages named dpo (the main run) and dpo-<variant>; a tie goes to the earlier run (the main
    run first). Test accuracy plays no part in the choice: it is reported once, for the selected run, and
    for the others only as information.
    """
    runs = [stage for stage in test if stage == "dpo" or stage.startswith("dpo-")]
    missing = [stage for stage in ["sft", *runs] if stage not in val]
    if missing:
        raise ValueError(f"no val evaluation for {missing}: selection needs every DPO run (and SFT) on val")

    def accuracy(frame: pd.DataFrame) -> dict[str, Any]:
        correct = frame["correct"].to_numpy(dtype=np.float32)
        ci = bootstrap_ci(correct, n_samples=n_samples, seed=seed)
        return {"accuracy": float(correct.mean()), "ci95": ci, "n": int(len(correct))}

    def minus_sft(split: dict[str, pd.DataFrame], stage: str) -> dict[str, Any]:
        sft = split["sft"].set_index("id")
        run = split[stage].set_index("id").loc[sft.index]
        return paired_bootstrap(run["correct"].to_numpy(), sft["correct"].to_numpy(), n_samples=n_samples, seed=seed)

    table = {
        stage: {
            "val": accuracy(val[stage]),
            "test": accuracy(test[stage]),
            "val_minus_sft": minus_sft(val, stage),
            "test_minus_sft": minus_sft(test, stage),
        }
        for stage in runs
    }
    best = max(runs, key=lambda stage: (table[stage]["val"]["accuracy"], -runs.index(stage)))
    # Round 1 is the main run (dpo); later rounds (dpo.rounds) are dpo-round<r>.
    rounds = ["dpo", *sorted((s for s in runs if re.fullmatch(r"dpo-round\d+", s)), key=lambda s: int(s[9:]))]
    return {
        "metric": "val accuracy (greedy); test is not used to choose",
        "selected": best,
        "sft_val": accuracy(val["sft"]),
        "runs": table,
        "by_round": [
            {
                "round": r,
                "stage": stage,
                "val": table[stage]["val"]["accuracy"],
                "test": table[stage]["test"]["accuracy"],
            }
            for r, stage in enumerate(rounds, start=1)
        ]
        if len(rounds) > 1
        else [],
    }


def plot_comparison(
    evals: dict[str, pd.DataFrame], summary: dict[str, Any], path: str, *, n_samples: int, seed: int
) -> None:
    from sftdpo.plots import plt, save_figure

    levels = sorted({str(d) for frame in evals.values() for d in frame["difficulty"]})
    groups = ["all", *levels]
    width = 0.8 / len(evals)
    fig, ax = plt.subplots(figsize=(7, 4))
    for i, (stage, frame) in enumerate(evals.items()):
        means, errors = [], []
        for group in groups:
            part = frame if group == "all" else frame[frame["difficulty"].astype(str) == group]
            correct = part["correct"].to_numpy(dtype=np.float32)
            mean = float(correct.mean()) if len(correct) else 0.0
            if group == "all":  # already in the summary
                lo, hi = summary["stages"][stage]["ci95"]
            else:
                lo, hi = bootstrap_ci(correct, n_samples=n_samples, seed=seed) if len(correct) else (0.0, 0.0)
            means.append(mean)
            errors.append([mean - lo, hi - mean])
        x = np.arange(len(groups)) + (i - (len(evals) - 1) / 2) * width
        ax.bar(x, means, width, yerr=np.array(errors).T, capsize=3, label=stage)
    ax.set_xticks(np.arange(len(groups)), ["all" if g == "all" else f"difficulty {g}" for g in groups])
    ax.set(ylabel="test accuracy (greedy)", ylim=(0, 1.18), title="Base vs SFT vs DPO (95% bootstrap CI)")
    ax.legend(loc="upper center", ncol=len(evals), frameon=False)
    save_figure(fig, path)


def markdown(summary: dict[str, Any], extras: dict[str, Any]) -> str:
    lines = [
        "# sftdpo report",
        "",
        f"Test items: {summary['n_items']} (greedy decoding).",
        "",
        "| stage | accuracy | 95% CI | "
        + " | ".join(f"difficulty {lv}" for lv in next(iter(summary["stages"].values()))["by_difficulty"])
        + " |",
        "|---|---|---|" + "---|" * len(next(iter(summary["stages"].values()))["by_difficulty"]),
    ]
    for stage, s in summary["stages"].items():
        lines.append(
            f"| {stage} | {s['accuracy']:.3f} | [{s['ci95'][0]:.3f}, {s['ci95'][1]:.3f}] | "
            + " | ".join(f"{v:.3f}" for v in s["by_difficulty"].values())
            + " |"
        )
    lines += ["", "| delta | mean | 95% CI (paired bootstrap) |", "|---|---|---|"]
    for name, d in summary["deltas"].items():
        lines.append(f"| {name} | {d['mean']:+.3f} | [{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}] |")
    verdict = summary.get("dpo_diagnostics", {}).get("verdict")
    if verdict:
        lines += ["", f"DPO: {verdict}."]
    lines += selection_markdown(summary.get("selection"))
    for title, data in extras.items():
        lines += ["", f"## {title}", "", "```json", _short_json(data), "```"]
    return "\n".join(lines) + "\n"


def selection_markdown(selection: dict[str, Any] | None) -> list[str]:
    """The table of DPO runs: val accuracy (what chose "DPO") and test accuracy (reported, not used)."""
    if not selection:
        return []
    sft = selection["sft_val"]
    lines = [
        "",
        "## DPO runs, selected on val",
        "",
        f'"DPO" above is **{selection["selected"]}**, the run with the best val accuracy (SFT on val: '
        f"{sft['accuracy']:.3f}, n {sft['n']}). The other runs' test numbers are information only: "
        "nothing was chosen on test.",
        "",
        "| run | val | val − SFT (95% CI) | test | test − SFT (95% CI) | selected |",
        "|---|---|---|---|---|---|",
    ]
    for stage, run in selection["runs"].items():
        val, test = run["val"], run["test"]
        dv, dt = run["val_minus_sft"], run["test_minus_sft"]
        lines.append(
            f"| {stage} | {val['accuracy']:.3f} | {dv['mean']:+.3f} [{dv['ci95'][0]:+.3f}, {dv['ci95'][1]:+.3f}] | "
            f"{test['accuracy']:.3f} | {dt['mean']:+.3f} [{dt['ci95'][0]:+.3f}, {dt['ci95'][1]:+.3f}] | "
            f"{'yes' if stage == selection['selected'] else ''} |"
        )
    if selection.get("by_round"):
        lines += ["", "Accuracy by DPO round (round r samples from and starts at round r-1's model):", ""]
        lines += ["| round | run | val | test |", "|---|---|---|---|"]
        lines += [f"| {r['round']} | {r['stage']} | {r['val']:.3f} | {r['test']:.3f} |" for r in selection["by_round"]]
    return lines


def _short_json(data: Any) -> str:
    import json

    return json.dumps(data, indent=2, sort_keys=True, default=str)


def make_report(
    *,
    eval_paths: dict[str, str],
    val_eval_paths: dict[str, str],
    dpo_metrics_paths: dict[str, str],
    extra_paths: dict[str, str],
    summary_path: str,
    plot_path: str,
    markdown_path: str,
    n_samples: int,
    seed: int,
) -> dict[str, Any]:
    """The report of a run. `eval_paths` / `val_eval_paths`: test / val evaluations by stage (base, sft and
    every DPO run: dpo, dpo-<variant>); `dpo_metrics_paths`: each DPO run's metrics.json."""
    tests = {stage: read_parquet(path) for stage, path in eval_paths.items()}
    vals = {stage: read_parquet(path) for stage, path in val_eval_paths.items()}
    selection = select_dpo(vals, tests, n_samples=n_samples, seed=seed)
    chosen = selection["selected"]
    selection["model"] = str(Path(dpo_metrics_paths[chosen]).parent / "adapter")
    # Base vs SFT vs DPO, where DPO is the run chosen on val.
    evals = {stage: tests[stage] for stage in EVAL_STAGES if stage != "dpo"}
    evals["dpo"] = tests[chosen]
    summary = summarise(evals, n_samples=n_samples, seed=seed)
    summary["stages"]["dpo"]["run"] = chosen
    summary["selection"] = selection
    extras = {}
    for name, path in {**extra_paths, "dpo": dpo_metrics_paths[chosen]}.items():
        data = read_json(path)
        extras[name] = {k: v for k, v in data.items() if k != "log_history"}
    summary["inputs"] = {
        name: {k: v for k, v in data.items() if not isinstance(v, (list, dict))} for name, data in extras.items()
    }
    # Did DPO lower the chosen completions' likelihood (the low-edit-distance failure)? The answer, and how
    # close the pairs are, in the summary a person reads first.
    diagnostics = extras.get("dpo", {}).get("diagnostics", {})
    summary["dpo_diagnostics"] = {
        "run": chosen,
        "verdict": diagnostics.get("verdict"),
        "heldout": diagnostics.get("heldout"),
        "train": diagnostics.get("train"),
        "pair_shared_tokens": extras.get("preferences", {}).get("shared_tokens"),
    }
    plot_comparison(evals, summary, plot_path, n_samples=n_samples, seed=seed)
    with atomic_path(markdown_path) as tmp:
        tmp.write_text(markdown(summary, extras))
    write_json(summary, summary_path)
    log.info("report: %s (DPO = %s, chosen on val)", {s: v["accuracy"] for s, v in summary["stages"].items()}, chosen)
    return summary
