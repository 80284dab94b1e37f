"""The final report: accuracy per stage and difficulty, paired bootstrap CIs (JAX), plot, tables (markdown, HTML)."""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

import sftdpo.pages as pages
from sftdpo.io import read_json, read_parquet, write_json, write_text
from sftdpo.pages import Table, ci, fmt

log = logging.getLogger(__name__)

DELTAS = (("sft", "base"), ("dpo", "sft"))
# The HTML pages of tables (results/report/<page>.html, outputs of rule report).
TABLE_PAGES = ("accuracy", "rejections", "pairs", "samples")


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


def align(evals: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """Each stage's rows for the items every stage evaluated, indexed and ordered by id."""
    ids = sorted(set.intersection(*(set(frame["id"]) for frame in evals.values())))
    if not ids:
        raise ValueError("the evaluation tables share no item ids; were they made from the same test split?")
    return {stage: frame.set_index("id").loc[ids] for stage, frame in evals.items()}


def summarise(evals: dict[str, pd.DataFrame], *, n_samples: int, seed: int) -> dict[str, Any]:
    aligned = align(evals)
    summary: dict[str, Any] = {
        "stages": {},
        "deltas": {},
        "n_items": len(next(iter(aligned.values()))),
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
    # summary.json is written with sorted keys: the order to show stages and deltas in.
    summary["order"] = {"stages": list(summary["stages"]), "deltas": list(summary["deltas"])}
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
    later = {int(m[1]): m[0] for m in (re.fullmatch(r"dpo-round(\d+)", s) for s in runs) if m}
    rounds = ["dpo", *(later[r] for r in sorted(later))]
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


def in_order(summary: dict[str, Any], key: str) -> list[tuple[str, dict[str, Any]]]:
    """The entries of summary[key] ("stages" or "deltas") in the order the report shows them."""
    names = summary.get("order", {}).get(key, list(summary[key]))
    return [(name, summary[key][name]) for name in names]


def plot_comparison(
    evals: dict[str, pd.DataFrame], summary: dict[str, Any], path: str, *, n_samples: int, seed: int
) -> None:
    """Bars per stage and difficulty with CIs, each labelled with its value; a bar at 0 gets a visible mark."""
    from sftdpo.plots import pyplot, save_figure

    plt = pyplot()

    levels = sorted({str(d) for frame in evals.values() for d in frame["difficulty"]})
    groups = ["all", *levels]
    width = 0.8 / len(evals)
    fig, ax = plt.subplots(figsize=(max(7.0, 0.6 * len(groups) * len(evals) + 1.5), 4.2))
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
        bars = ax.bar(x, means, width, yerr=np.array(errors).T, capsize=3, label=stage, color=f"C{i}")
        ax.bar_label(bars, labels=[f"{m:.2f}" for m in means], padding=2, fontsize=7)
        # A bar of height 0 is invisible: mark it on the axis in the stage's colour.
        zero = [xi for xi, m in zip(x, means) if m == 0]
        ax.plot(zero, [0.004] * len(zero), linestyle="none", marker="_", markersize=width * 60, mew=3, color=f"C{i}")
    ax.set_xticks(np.arange(len(groups)), ["all" if g == "all" else f"difficulty {g}" for g in groups])
    title = " vs ".join(evals) + " (95% bootstrap CI)"
    ax.set(ylabel="test accuracy (greedy)", ylim=(0, 1.22), title=title)
    ax.legend(loc="upper center", ncol=len(evals), frameon=False)
    save_figure(fig, path)


# -- tables for people (report.md and the HTML tables of the Snakemake report) ------------------------------
def accuracy_table(summary: dict[str, Any]) -> Table:
    rows = [
        [stage, s["accuracy"], ci(s["ci95"]), s["n"], fmt(s.get("mean_tokens"), ".1f")]
        for stage, s in in_order(summary, "stages")
    ]
    resamples = summary["bootstrap"]["samples"]
    note = f"{summary['n_items']} test items, greedy decoding; 95% CI from {resamples} bootstrap resamples."
    return Table("Accuracy per stage", ["stage", "accuracy", "95% CI", "n", "mean tokens"], rows, note)


def difficulty_table(summary: dict[str, Any]) -> Table:
    """Accuracy per stage and difficulty; the stages are aligned on the same items, so n is per column."""
    stages = in_order(summary, "stages")
    counts = stages[0][1]["n_by_difficulty"]
    columns = ["stage", *(f"difficulty {lv} (n={n})" for lv, n in counts.items())]
    rows = [[stage, *(s["by_difficulty"].get(lv) for lv in counts)] for stage, s in stages]
    return Table("Accuracy per difficulty", columns, rows)


def delta_table(summary: dict[str, Any]) -> Table:
    rows = [[name, fmt(d["mean"], "+.3f"), ci(d["ci95"], "+.3f"), d["n"]] for name, d in in_order(summary, "deltas")]
    return Table("Paired differences", ["delta", "mean", "95% CI (paired bootstrap)", "n"], rows)


def rejection_table(validation: dict[str, Any]) -> Table:
    """Rows the pipeline did not use, by reason: the importer's bad rows, then validation's rejections."""
    n_rows = validation.get("n_rows")
    sources = (("import", validation.get("import", {}).get("bad_by_reason", {})),
               ("validation", validation.get("rejections_by_reason", {})))  # fmt: skip
    rows = [
        [step, reason, count, fmt(count / n_rows if n_rows else None, ".1%")]
        for step, reasons in sources
        for reason, count in sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0]))
    ]
    note = f"{validation.get('n_rejected', 0)} of {n_rows} demonstrations rejected by validation."
    return Table("Rejected rows by reason", ["step", "reason", "rows", "share of rows"], rows, note)


def pair_table(prefs: dict[str, Any]) -> Table:
    rows = [
        [by, value, count]
        for by in ("kind", "difficulty", "split")
        for value, count in prefs.get(f"pairs_by_{by}", {}).items()
    ]
    note = (
        f"{prefs.get('n_pairs')} pairs from {prefs.get('n_rollouts')} rollouts "
        f"(rollout accuracy {fmt(prefs.get('rollout_accuracy'))})."
    )
    return Table("Preference pairs", ["by", "value", "pairs"], rows, note)


def outcome_table(prefs: dict[str, Any]) -> Table:
    rows = [
        [split, outcome, count]
        for split, outcomes in prefs.get("prompts_by_outcome", {}).items()
        for outcome, count in outcomes.items()
    ]
    return Table("Prompts by rollout outcome", ["split", "outcome", "prompts"], rows)


def figures_table(summary: dict[str, Any]) -> Table:
    """The scalar figures of each stage's report (steps, losses, counts)."""
    rows = [
        [name, key, fmt(value, ".4g")]
        for name, data in summary["inputs"].items()
        for key, value in sorted(data.items())
    ]
    return Table("Figures of the stages", ["stage", "figure", "value"], rows)


def curriculum_tables(curriculum: dict[str, Any]) -> list[Table]:
    """Curriculum SFT (results/sft/curriculum.json), when it ran: where it ended and every check."""
    if not curriculum.get("enabled"):
        return []

    def mix(weights: dict[str, Any]) -> str:
        return ", ".join(f"{d}: {fmt(w, '.2f')}" for d, w in sorted(weights.items()))

    figures = [
        ["final stage", curriculum["final_stage"]],
        ["final weights (difficulty: share)", mix(curriculum["final_weights"])],
        ["advances", curriculum["advances"]],
        ["rollbacks", curriculum["rollbacks"]],
        ["checks", curriculum["checks"]],
        [
            "samples seen per difficulty",
            ", ".join(f"{d}: {n}" for d, n in curriculum["samples_per_difficulty"].items()),
        ],
        ["evaluation seconds", fmt(curriculum["eval_seconds"], ".1f")],
        ["evaluation share of SFT time", fmt(curriculum["eval_share_of_train_time"], ".1%")],
    ]
    note = (
        f"Checks every {curriculum['config']['advancement_interval']} steps (stretched at each rollback): greedy "
        f"exact-match accuracy on {curriculum['config']['eval_items']} fixed val items."
    )
    events = [
        [e["step"], e["action"], e["from_stage"], e["stage"], fmt(e["performance_before"]),
         fmt(e["performance_after"]), fmt(e["delta"], "+.3f"), e["reason"]]
        for e in curriculum["events"]
    ]  # fmt: skip
    columns = ["step", "action", "from", "to", "accuracy before", "after", "delta", "why"]
    return [Table("Curriculum SFT", ["figure", "value"], figures, note), Table("Curriculum checks", columns, events)]


def sample_ids(aligned: dict[str, pd.DataFrame], n: int) -> list[str]:
    """Up to `n` items, one outcome pattern (which stages were right) after another, disagreements first."""
    correct = pd.DataFrame({stage: frame["correct"].astype(bool) for stage, frame in aligned.items()})
    patterns = correct.apply(tuple, axis=1)
    by_pattern = {p: list(ids) for p, ids in patterns.groupby(patterns).groups.items()}
    order = sorted(by_pattern, key=lambda p: (len(set(p)) == 1, p))  # mixed outcomes first
    picked: list[str] = []
    while len(picked) < min(n, len(correct)):
        for p in order:
            if by_pattern[p] and len(picked) < n:
                picked.append(by_pattern[p].pop(0))
    return picked


def verdict_cell(row: pd.Series) -> str:
    answer = "no answer" if row["prediction"] is None else f"answer {row['prediction']}"
    completion = str(row["completion"]).strip() or "(empty completion)"
    return f"{'right' if row['correct'] else 'wrong'}, {answer}\n{completion}"


def samples_table(aligned: dict[str, pd.DataFrame], n: int) -> Table:
    first = next(iter(aligned.values()))
    rows = []
    for item in sample_ids(aligned, n):
        cells = [verdict_cell(frame.loc[item]) for frame in aligned.values()]
        rows.append([item, first.loc[item, "difficulty"], first.loc[item, "gold"], *cells])
    note = "The same test items side by side: each stage's verdict (its final answer) and completion."
    return Table("Sample completions", ["item", "difficulty", "gold", *aligned], rows, note)


def verdict_line(summary: dict[str, Any]) -> str:
    verdict = summary.get("dpo_diagnostics", {}).get("verdict")
    return f"DPO: {verdict}." if verdict else ""


def report_tables(
    summary: dict[str, Any], aligned: dict[str, pd.DataFrame], extras: dict[str, Any], n_samples_shown: int
) -> dict[str, list[Table]]:
    """The report's tables by page: accuracy, rejections, pairs, samples."""
    accuracy = [accuracy_table(summary), difficulty_table(summary), delta_table(summary)]
    if verdict_line(summary):
        accuracy[-1].note = verdict_line(summary)
    accuracy += selection_tables(summary.get("selection"))
    prefs = extras.get("preferences", {})
    return {
        "accuracy": accuracy,
        "rejections": [rejection_table(extras.get("validation", {}))],
        "pairs": [
            pair_table(prefs),
            outcome_table(prefs),
            *curriculum_tables(extras.get("curriculum", {})),
            figures_table(summary),
        ],
        "samples": [samples_table(aligned, n_samples_shown)],
    }


def selection_tables(selection: dict[str, Any] | None) -> list[Table]:
    """The DPO runs: val accuracy (what chose "DPO") and test accuracy (reported, not used); by round."""
    if not selection:
        return []
    sft = selection["sft_val"]
    note = (
        f'"DPO" is **{selection["selected"]}**, the run with the best val accuracy (SFT on val: '
        f"{sft['accuracy']:.3f}, n {sft['n']}). The other runs' test numbers are information only: "
        "nothing was chosen on test."
    )

    def delta(d: dict[str, Any]) -> str:
        return f"{d['mean']:+.3f} {ci(d['ci95'], '+.3f')}"

    rows = [
        [stage, fmt(run["val"]["accuracy"]), delta(run["val_minus_sft"]), fmt(run["test"]["accuracy"]),
         delta(run["test_minus_sft"]), "yes" if stage == selection["selected"] else ""]
        for stage, run in selection["runs"].items()
    ]  # fmt: skip
    columns = ["run", "val", "val − SFT (95% CI)", "test", "test − SFT (95% CI)", "selected"]
    tables = [Table("DPO runs, selected on val", columns, rows, note)]
    if selection.get("by_round"):
        rounds = [[r["round"], r["stage"], fmt(r["val"]), fmt(r["test"])] for r in selection["by_round"]]
        note = "Round r samples from, starts at and is referenced to round r-1's model."
        tables.append(Table("Accuracy by DPO round", ["round", "run", "val", "test"], rounds, note))
    return tables


def selection_markdown(selection: dict[str, Any] | None) -> list[str]:
    return pages.markdown(selection_tables(selection)).splitlines()


def markdown(summary: dict[str, Any], tables: dict[str, list[Table]]) -> str:
    header = ["# sftdpo report", "", f"Test items: {summary['n_items']} (greedy decoding).", ""]
    return "\n".join(header) + "\n" + pages.markdown([t for page in tables.values() for t in page])


def run_summary(summary_path: str, markdown_path: str) -> str:
    """What the console shows after a successful run: accuracy per stage, the paired differences, and
    where the report is."""
    if not Path(summary_path).exists():
        return ""
    summary = read_json(summary_path)
    written = time.strftime("%Y-%m-%d %H:%M", time.localtime(Path(summary_path).stat().st_mtime))
    return "\n".join([
        f"Test accuracy ({summary_path}, written {written}):",
        pages.text(accuracy_table(summary)),
        "",
        pages.text(delta_table(summary)),
        "",
        f"Report: {markdown_path}; the HTML report with every table and plot: snakemake --report report.html",
    ])  # fmt: skip


def make_report(
    *,
    eval_paths: dict[str, str],
    val_eval_paths: dict[str, str],
    dpo_metrics_paths: dict[str, str],
    extra_paths: dict[str, str],
    summary_path: str,
    plot_path: str,
    markdown_path: str,
    table_paths: dict[str, str],
    n_samples: int,
    samples_shown: int,
    seed: int,
) -> dict[str, Any]:
    """summary.json, the comparison plot, report.md and one HTML page of tables per key of `table_paths`
    (accuracy, rejections, pairs, samples). `eval_paths` / `val_eval_paths`: test / val evaluations by stage
    (base, sft and every DPO run: dpo, dpo-<variant>, dpo-round<r>); `dpo_metrics_paths`: each DPO run's
    metrics.json."""
    tests = {stage: read_parquet(path) for stage, path in eval_paths.items()}
    vals = {stage: read_parquet(path) for stage, path in val_eval_paths.items()}
    selection = select_dpo(vals, tests, n_samples=n_samples, seed=seed)
    chosen = selection["selected"]
    selection["model"] = str(Path(dpo_metrics_paths[chosen]).parent / "adapter")
    # Base vs SFT vs DPO, where DPO is the run chosen on val.
    evals = {stage: tests[stage] for stage in ("base", "sft")}
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
    tables = report_tables(summary, align(evals), extras, samples_shown)
    for name, path in table_paths.items():
        write_text(pages.html_page(tables[name], f"sftdpo: {name}"), path)
    write_text(markdown(summary, tables), markdown_path)
    write_json(summary, summary_path)
    log.info("report: %s (DPO = %s, chosen on val)", {s: v["accuracy"] for s, v in summary["stages"].items()}, chosen)
    return summary
