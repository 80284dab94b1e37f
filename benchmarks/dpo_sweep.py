"""DPO variants on one finished run's SFT model and pairs, chosen on val, reported on test.

    .venv/bin/python benchmarks/dpo_sweep.py RUN_DIR --variants sweep.yaml [--configfile X.yaml ...] [--out DIR]

RUN_DIR is a finished `snakemake` run (results/sft/model, results/prefs/pairs.parquet and the splits
exist) of config/config.yaml with the given `--configfile` overlays. sweep.yaml maps a variant name to
an overlay of the run's `dpo` config keys, e.g.

    rpo-lr5e-4: {train: {learning_rate: 5.0e-4, max_steps: 600}}
    dpop:       {loss_type: [dpop, sft]}

Each variant trains DPO with the library (sftdpo.dpo.train_dpo) into OUT/<variant>/, and is evaluated
greedily on val and on test (sftdpo.evaluate). SFT is evaluated the same way. The variant with the best
val accuracy is the selection; test accuracy and the paired-bootstrap CI against SFT are printed for
every variant, marked as not used for selection. The table also lands in OUT/sweep.json.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from sftdpo.dpo import train_dpo  # noqa: E402
from sftdpo.evaluate import evaluate  # noqa: E402
from sftdpo.report import paired_bootstrap  # noqa: E402


def deep_merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in over.items():
        out[key] = deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def run_config(configfiles: list[Path]) -> dict:
    """config/config.yaml with the run's overlays, defaults filled in by the schema."""
    from snakemake.utils import validate

    config = yaml.safe_load((ROOT / "config/config.yaml").read_text())
    for path in configfiles:
        config = deep_merge(config, yaml.safe_load(path.read_text()))
    validate(config, str(ROOT / "config/schema.yaml"))
    return config


def accuracy(model_dir: str, split_path: Path, out: Path, config: dict, stage: str):
    options = {config["task"]["name"]: config["task"][config["task"]["name"]]}
    frame = evaluate(stage=stage, model_dir=model_dir, items_path=str(split_path), out_path=str(out),
                     task_options=options, max_new_tokens=config["evaluate"]["max_new_tokens"],
                     batch_size=config["evaluate"]["batch_size"], kv_cache_mb=config["evaluate"]["kv_cache_mb"],
                     seed=config["seed"])  # fmt: skip
    return frame["correct"].to_numpy().astype(float)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--variants", type=Path, required=True)
    parser.add_argument("--configfile", type=Path, nargs="*", default=[])
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    run, out = args.run.resolve(), (args.out or args.run / "sweep").resolve()
    config = run_config(args.configfile)
    variants = yaml.safe_load(args.variants.read_text())
    data = {s: run / f"results/data/{s}.parquet" for s in ("val", "test")}
    sft = str(run / "results/sft/model")
    scores = {("sft", s): accuracy(sft, data[s], out / f"sft/{s}.parquet", config, "sft") for s in data}
    rows = []
    for name, overlay in variants.items():
        dpo = deep_merge(config["dpo"], overlay or {})
        work = out / name
        if not (work / "metrics.json").exists():
            train_dpo(sft_dir=sft, pairs_path=str(run / "results/prefs/pairs.parquet"), out_dir=str(work / "adapter"),
                      metrics_path=str(work / "metrics.json"), curve_path=str(work / "curves.png"),
                      work_dir=str(work / "work"), tracking_dir=str(work / "tracking"), train=dpo["train"],
                      beta=dpo["beta"], loss_type=dpo["loss_type"],
                      loss_weights=dpo["loss_weights"], label_smoothing=dpo["label_smoothing"],
                      dpop_lambda=dpo["dpop_lambda"], lora=dpo["lora"], seed=config["seed"])  # fmt: skip
        metrics = json.loads((work / "metrics.json").read_text())
        for s in data:
            scores[(name, s)] = accuracy(str(work / "adapter"), data[s], work / f"{s}.parquet", config, "dpo")
        delta = paired_bootstrap(scores[(name, "test")], scores[("sft", "test")], n_samples=10_000, seed=0)
        rows.append({
            "variant": name, "overlay": overlay, "val": scores[(name, "val")].mean(),
            "test": scores[(name, "test")].mean(), "test_minus_sft": delta["mean"], "ci95": delta["ci95"],
            "verdict": metrics["diagnostics"].get("verdict"), "n_pairs": metrics["n_pairs"],
        })  # fmt: skip
    best = max(rows, key=lambda r: r["val"])
    sft_val, sft_test = scores[("sft", "val")].mean(), scores[("sft", "test")].mean()
    print(f"SFT: val {sft_val:.3f}, test {sft_test:.3f}  (val n={len(scores[('sft', 'val')])}, "
          f"test n={len(scores[('sft', 'test')])})\n")  # fmt: skip
    print("| variant | val | test (not used to select) | test − SFT [CI95] | chosen logp verdict |")
    print("|---|---|---|---|---|")
    for r in rows:
        mark = " **(selected on val)**" if r is best else ""
        print(f"| {r['variant']}{mark} | {r['val']:.3f} | {r['test']:.3f} | {r['test_minus_sft']:+.3f} "
              f"[{r['ci95'][0]:+.3f}, {r['ci95'][1]:+.3f}] | {r['verdict']} |")  # fmt: skip
    (out / "sweep.json").write_text(json.dumps({"sft": {"val": sft_val, "test": sft_test}, "variants": rows,
                                                "selected": best["variant"]}, indent=2, default=float))  # fmt: skip


if __name__ == "__main__":
    main()
