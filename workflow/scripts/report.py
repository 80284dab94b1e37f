"""Rule report: summary, comparison plot and markdown report (adapter: reads `snakemake`, calls the library)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))
from sftdpo.runner import run, start_job

start_job()
from sftdpo.report import TABLE_PAGES, make_report

sm = snakemake  # noqa: F821
i, o = sm.input, sm.output


def by_stage(paths):
    """{stage: path} from results/eval/[val/]<stage>.parquet paths."""
    return {Path(path).stem: path for path in paths}


run(
    sm,
    lambda: make_report(
        eval_paths=by_stage(i.evals),
        val_eval_paths=by_stage(i.val_evals),
        dpo_metrics_paths=dict(zip(sm.params.dpo_stages, i.dpo_metrics)),
        extra_paths={
            "validation": i.validation,
            "split": i.split,
            "sft": i.sft,
            "curriculum": i.curriculum,
            "preferences": i.preferences,
        },
        summary_path=o.summary,
        plot_path=o.plot,
        markdown_path=o.markdown,
        table_paths={name: o[name] for name in TABLE_PAGES},
        n_samples=sm.params.bootstrap_samples,
        samples_shown=sm.params.samples_shown,
        seed=sm.params.seed,
    ),
)
