"""The numbers reach people: report.md and the HTML tables of `snakemake --report`, read as Chromium renders them."""

import json
import re

import pandas as pd
import pytest

from conftest import TINY, snakemake
from report_page import rendered_dom, visible_text
from sftdpo import pages
from sftdpo.report import TABLE_PAGES, align, make_report, markdown, report_tables, sample_ids

VALIDATION = {"n_rows": 40, "n_rejected": 3, "rejections_by_reason": {"verifier:wrong_answer": 2, "empty": 1},
              "import": {"n_bad_rows": 1, "bad_by_reason": {"not valid UTF-8": 1}}}  # fmt: skip
PREFS = {"n_pairs": 7, "n_rollouts": 96, "rollout_accuracy": 0.375, "pairs_by_kind": {"correctness": 5, "quality": 2},
         "pairs_by_difficulty": {"1": 4, "2": 3}, "pairs_by_split": {"train": 6, "val": 1},
         "prompts_by_outcome": {"train": {"mixed": 3, "all_wrong": 11}, "val": {"all_right": 2}}}  # fmt: skip


def eval_table(stage, correct):
    n = len(correct)
    return pd.DataFrame({
        "id": [f"i{k}" for k in range(n)], "stage": stage, "task": "arithmetic",
        "difficulty": [str(1 + k % 2) for k in range(n)],
        "completion": [f"{stage} says {k}\n#### {k}" for k in range(n)],
        "prediction": [str(k) for k in range(n)], "gold": [str(k) for k in range(n)], "correct": correct,
        "n_tokens": [5] * n,
    })  # fmt: skip


# Two DPO runs: the report's stages are base, sft and the DPO run selected on val; the DPO runs' table has both.
EVALS = {
    "base": eval_table("base", [False] * 8),
    "sft": eval_table("sft", [True, True, False, True, False, True, True, False]),
    "dpo": eval_table("dpo", [True, True, True, True, False, True, True, False]),
    "dpo-beta0.5": eval_table("dpo-beta0.5", [True, False, True, True, True, True, True, True]),
}


@pytest.fixture(scope="module")
def report_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    paths = {}
    for stage, frame in EVALS.items():
        paths[stage] = str(root / f"{stage}.parquet")
        frame.to_parquet(paths[stage])
    extras = {"validation": VALIDATION, "preferences": PREFS, "dpo": {"global_step": 10, "beta": 0.1}}
    extra_paths = {}
    for name, data in extras.items():
        extra_paths[name] = str(root / f"{name}.json")
        (root / f"{name}.json").write_text(json.dumps(data))
    dpo_runs = ("dpo", "dpo-beta0.5")  # val = test here: dpo-beta0.5 (7/8) is selected over dpo (6/8)
    make_report(
        eval_paths=paths, val_eval_paths={s: paths[s] for s in ("sft", *dpo_runs)},
        dpo_metrics_paths={s: extra_paths.pop("dpo") if s == "dpo" else str(root / "dpo.json") for s in dpo_runs},
        extra_paths=extra_paths, summary_path=str(root / "summary.json"),
        plot_path=str(root / "comparison.png"), markdown_path=str(root / "report.md"),
        table_paths={page: str(root / f"{page}.html") for page in TABLE_PAGES}, n_samples=200, samples_shown=4, seed=0,
    )  # fmt: skip
    return root


def test_markdown_report_holds_every_stage_row_and_no_json_dumps(report_files):
    text = (report_files / "report.md").read_text()
    assert "```" not in text and "{" not in text
    assert "| dpo | 0.875 | [" in text and "| sft | 0.625 | [" in text  # dpo: the run selected on val
    assert re.search(r"\| dpo-beta0\.5 \| 0\.875 \| \+0\.250 \[[-+]\d\.\d{3}, \+\d\.\d{3}\] \| 0\.875 \|", text)
    assert "| base | 0.000 | [0.000, 0.000] | 8 |" in text
    assert "| stage | difficulty 1 (n=4) | difficulty 2 (n=4) |" in text
    assert "| sft | 0.500 | 0.750 |" in text  # items i0, i2, i4, i6 / i1, i3, i5, i7
    assert re.search(r"\| sft-base \| \+0\.625 \| \[\+0\.\d{3}, \+\d\.\d{3}\] \| 8 \|", text)
    assert "| import | not valid UTF-8 | 1 | 2.5% |" in text
    assert "| validation | verifier:wrong_answer | 2 | 5.0% |" in text
    assert "| kind | quality | 2 |" in text and "| val | all_right | 2 |" in text and "7 pairs from 96 rollouts" in text
    assert "| dpo | global_step | 10 |" in text


def test_sample_items_put_disagreements_first_and_show_right_and_wrong():
    aligned = align(EVALS)
    picked = sample_ids(aligned, 3)
    patterns = [tuple(bool(aligned[s].loc[i, "correct"]) for s in aligned) for i in picked]
    assert len(set(patterns)) == 3 and all(len(set(p)) == 2 for p in patterns)  # three different mixed outcomes
    assert sorted(sample_ids(aligned, 100)) == sorted(aligned["sft"].index)
    assert sample_ids(aligned, 0) == []


def test_html_tables_escape_cells_and_render_in_chromium(report_files, tmp_path):
    summary = json.loads((report_files / "summary.json").read_text())
    tables = report_tables(summary, align(EVALS), {"validation": VALIDATION, "preferences": PREFS}, 2)
    tables["samples"][0].rows[0][-1] = "<b>not bold</b> & 1 < 2"
    page = tmp_path / "samples.html"
    page.write_text(pages.html_page(tables["samples"], "samples"))
    text = visible_text(rendered_dom(page.as_uri()))
    assert "<b>not bold</b> & 1 < 2" in text
    assert "Sample completions" in text and "dpo-beta0.5" in text and "sft says" in text
    assert sum(line.startswith("## ") for line in markdown(summary, tables).splitlines()) == 9  # + DPO runs


@pytest.mark.e2e
def test_snakemake_report_shows_the_numbers_in_chromium(finished):
    """`snakemake --report`: the front page shows accuracy, per-difficulty and delta tables; each table page
    (what the report's frame loads) shows rejections, pairs and sample completions with the run's numbers."""
    snakemake("--configfile", TINY, "--report", "report.html", cwd=finished)
    summary = json.loads((finished / "results/report/summary.json").read_text())
    front = visible_text(rendered_dom((finished / "report.html").as_uri()))
    for stage, s in summary["stages"].items():
        lo, hi = s["ci95"]
        assert f"{stage} {s['accuracy']:.3f} [{lo:.3f}, {hi:.3f}] {s['n']}" in front
        assert f"{stage} " + " ".join(f"{v:.3f}" for v in s["by_difficulty"].values()) in front
    for name, d in summary["deltas"].items():
        assert f"{name} {d['mean']:+.3f} [{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}] {d['n']}" in front

    html = (finished / "report.html").read_text()
    frames = dict(re.findall(r'"data_uri": "(data:text/html;[^"]*filename=(\w+)\.html;base64,[^"]+)"', html))
    frames = {name: uri for uri, name in frames.items()}
    assert set(frames) == set(TABLE_PAGES)
    shown = {name: visible_text(rendered_dom(uri)) for name, uri in frames.items()}
    validation = json.loads((finished / "results/demos/validation.json").read_text())
    for reason, count in validation["rejections_by_reason"].items():
        assert f"validation {reason} {count} {count / validation['n_rows']:.1%}" in shown["rejections"]
    prefs = json.loads((finished / "results/prefs/report.json").read_text())
    for kind, count in prefs["pairs_by_kind"].items():
        assert f"kind {kind} {count}" in shown["pairs"]
    for split, outcomes in prefs["prompts_by_outcome"].items():
        for outcome, count in outcomes.items():
            assert f"{split} {outcome} {count}" in shown["pairs"]
    evals = {stage: pd.read_parquet(finished / f"results/eval/{stage}.parquet") for stage in summary["stages"]}
    item = re.search(r"Sample completions .*? (\S+-\d+) ", shown["samples"]).group(1)
    for stage, frame in evals.items():
        row = frame.set_index("id").loc[item]
        assert " ".join(row["completion"].split()) in shown["samples"], stage
