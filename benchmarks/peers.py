"""sftdpo against its peers: each stage's code path timed beside the plain way of doing the same work.

    .venv/bin/python benchmarks/peers.py --save

Inputs are built once in `--work` (default benchmarks/peers/, reused when present) through the snakemake CLI:
the whole DAG of tests/config/tiny.yaml (`tiny/`: the base and SFT models, the splits, tokens.h5) and
benchmarks/data_stages.py's run on `--rows` program-expert rows (`data/`). The settings measured are the default
config's (config/config.yaml, schema defaults filled): SFT's `sft.train` and threads for `--sft-steps` steps,
rollouts' k, temperature, max_new_tokens and batch_size on `--prompts` train prompts, evaluate's batch_size and
max_new_tokens on the tiny run's val and test splits. Rows (sftdpo first, then its peers):

- SFT: real tokens/s (attention-mask tokens trained on per second of training) of sftdpo.sft.train_sft, without its
  held-out evaluation (`sft.eval_rows: 0`: no arm evaluates, so every arm's seconds are training steps); a
  hand-written PyTorch loop (same model, rows, batch size, AdamW, warmup + cosine, grad clip 1, loss on
  completion tokens); TRL's SFTTrainer with the same settings; SFTTrainer with its defaults.
- rollouts: new tokens/s of sftdpo.generation.generate (the config's batch_size, k samples a prompt); plain
  transformers `generate` one prompt (its k samples) at a time; one batch of all prompts.
- greedy eval: new tokens/s of sftdpo.generation.greedy_verdicts (evaluate.batch_size); one batch of all items.
- data: rows/s of the library calls of validate, convert and split in one process (the rules' own params, from
  their lineage sidecars); a plain pandas/numpy script with one batch tokenizer call doing the same checks,
  templating, token tensor and a grouped, stratified split.
- trivial job: merge_demos's job time (its `benchmark:` file) against a bare `script:` rule doing the same
  pandas concat in a minimal Snakefile.
- `snakemake -n` of a ~2,000-job DAG (collect.shards 2,000) and a no-op `snakemake` on the finished tiny run,
  against a minimal Snakefile with as many jobs (wall seconds of the command).

Every figure comes from a fresh subprocess (`--measure <arm>`); a row's arms alternate (sftdpo, peer 1, peer 2,
..., then again) `--repeats` times and the table shows medians. `--save` keeps every run in
benchmarks/results/peers.json and rewrites the README's `peers-table`.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))  # this checkout's library, not whichever sftdpo is installed

from readme_table import add_save_options, replace_table, rewrite_from_saved  # noqa: E402
from sftdpo.runner import hub_offline  # noqa: E402

SAVED = ROOT / "benchmarks/results/peers.json"
TABLE = ("peers-table", "benchmarks/peers.py --save")  # the README table's marker name and command
TINY = ROOT / "tests/config/tiny.yaml"
DRY_RUN_SHARDS = 2000  # collect.shards of the big dry run

# (row, what it measures, unit, arms): the first arm is sftdpo's, the rest its peers; each arm is a function below.
ROWS = [
    ("sft", "SFT tok/s (real tokens)", "tok/s",
     [("sft_sftdpo", "sftdpo"), ("sft_hand_loop", "hand-written PyTorch loop"),
      ("sft_trl_same_settings", "TRL SFTTrainer, same settings"), ("sft_trl_defaults", "TRL SFTTrainer defaults")]),
    ("sft_grouped", "SFT tok/s (real tokens), length-grouped batches", "tok/s",
     [("sft_sftdpo_grouped", "sftdpo"), ("sft_hand_loop", "hand-written PyTorch loop")]),
    ("rollouts", "rollouts gen tok/s", "tok/s",
     [("rollouts_sftdpo", "sftdpo"), ("rollouts_one_prompt", "one prompt at a time"),
      ("rollouts_one_batch", "one batch of all")]),
    ("eval", "greedy eval tok/s", "tok/s", [("eval_sftdpo", "sftdpo"), ("eval_one_batch", "one batch of all")]),
    ("data", "validate+convert+split", "rows/s",
     [("data_sftdpo", "sftdpo"), ("data_pandas", "plain pandas/numpy + batch-tokenizer script")]),
    ("job", "trivial job (merge_demos) inside the job", "s",
     [("job_merge_demos", "sftdpo"), ("job_bare_script", "the same pandas concat as a bare script rule")]),
    ("dry_run", "`snakemake -n`", "s", [("dry_run_sftdpo", "sftdpo"), ("dry_run_minimal", "minimal Snakefile")]),
    ("no_op", "no-op `snakemake`", "s", [("no_op_sftdpo", "sftdpo"), ("no_op_minimal", "minimal Snakefile")]),
]  # fmt: skip


# ---------------------------------------------------------------- what every arm shares
def default_config() -> dict:
    """config/config.yaml with the schema's defaults filled in, as the Snakefile's `validate` fills them."""
    import yaml
    from snakemake.utils import validate

    config = yaml.safe_load((ROOT / "config/config.yaml").read_text())
    validate(config, str(ROOT / "config/schema.yaml"))
    return config


def snakemake_bin() -> str:
    return str(Path(sys.executable).parent / "snakemake")


def torch_threads(stage: str, config: dict) -> None:
    """torch's intra-op threads as the rule's runner sets them (`<stage>.resources.threads`), for every arm."""
    import torch

    torch.set_num_threads(config[stage]["resources"]["threads"])


def timed(fn) -> tuple[object, float]:
    started = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - started


def rate(amount: float, seconds: float, **details) -> dict:
    return {"value": amount / seconds, "amount": amount, "seconds": seconds, **details}


def job_threads(log: Path) -> int:
    """The threads Snakemake gave a job, from the first line sftdpo.runner writes to the rule's log."""
    return int(re.search(r"scheduled threads (\d+)", log.read_text()).group(1))


def sidecar_params(path: Path) -> dict:
    """The params a rule ran with, from its output's lineage sidecar (sftdpo.lineage)."""
    from sftdpo.lineage import sidecar_path

    return json.loads(sidecar_path(path).read_text())["params"]


# ---------------------------------------------------------------- SFT
def sft_examples(tiny: Path) -> list[dict]:
    from sftdpo.io import read_parquet
    from sftdpo.tables import read_token_rows

    rows = read_parquet(tiny / "results/data/train.parquet")["token_row"].tolist()
    return read_token_rows(str(tiny / "results/data/tokens.h5"), rows)[0]


# sft.train.extra of the length-grouped arm: batches of rows of similar length pad less (TRL's LengthGroupedSampler).
GROUPED = {"train_sampling_strategy": "group_by_length"}


def train_default_sft(results: Path, train: dict, *, eval_rows: int, seed: int) -> dict:
    """The metrics of `sftdpo.sft.train_sft` with `train` (sft.train) on a finished run's `results` directory (the
    default's sft.lora), its outputs in a temporary directory."""
    from sftdpo.sft import train_sft

    with tempfile.TemporaryDirectory() as tmp:
        return train_sft(
            base_dir=str(results / "base/model"), train_path=str(results / "data/train.parquet"),
            val_path=str(results / "data/val.parquet"), tokens_path=str(results / "data/tokens.h5"),
            out_dir=f"{tmp}/model", metrics_path=f"{tmp}/metrics.json", curve_path=f"{tmp}/loss.png",
            curriculum_path=f"{tmp}/curriculum.json", work_dir=f"{tmp}/work", tracking_dir=f"{tmp}/tracking",
            train=train, lora=default_config()["sft"]["lora"], eval_rows=eval_rows, seed=seed,
            conversion_path=str(results / "data/convert.json"),
        )  # fmt: skip


def sft_sftdpo(work: Path, args, extra: dict | None = None) -> dict:
    config = default_config()
    torch_threads("sft", config)
    train = {**config["sft"]["train"], "max_steps": args.sft_steps, "extra": extra}
    metrics = train_default_sft(work / "tiny/results", train, eval_rows=0, seed=config["seed"])
    tokens = metrics["tokens_this_run"]
    return rate(tokens["real"], metrics["train_seconds_this_run"], steps=metrics["global_step"],
                loss_tokens=tokens["loss"], padded_tokens=tokens["padded"])  # fmt: skip


def sft_sftdpo_grouped(work: Path, args) -> dict:
    return sft_sftdpo(work, args, GROUPED)


def sft_hand_loop(work: Path, args) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, get_scheduler

    config, base = default_config(), work / "tiny/results/base/model"
    train = config["sft"]["train"]
    torch_threads("sft", config)
    torch.manual_seed(config["seed"])
    examples = sft_examples(work / "tiny")
    pad = AutoTokenizer.from_pretrained(base).pad_token_id
    model = AutoModelForCausalLM.from_pretrained(base).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=train["learning_rate"], weight_decay=train["weight_decay"])
    schedule = get_scheduler(train["lr_scheduler"], optimizer, train["warmup_steps"], args.sft_steps)
    batch_size = train["batch_size"]
    order = torch.cat([torch.randperm(len(examples)) for _ in range(args.sft_steps * batch_size // len(examples) + 1)])

    def loop() -> dict[str, int]:
        tokens = {"real": 0, "loss": 0, "padded": 0}
        for step in range(args.sft_steps):
            batch = [examples[i] for i in order[step * batch_size : (step + 1) * batch_size].tolist()]
            width = max(len(e["input_ids"]) for e in batch)
            ids = torch.tensor([e["input_ids"] + [pad] * (width - len(e["input_ids"])) for e in batch])
            mask = torch.tensor([[1] * len(e["input_ids"]) + [0] * (width - len(e["input_ids"])) for e in batch])
            loss_on = torch.tensor([e["completion_mask"] + [0] * (width - len(e["input_ids"])) for e in batch])
            loss = model(input_ids=ids, attention_mask=mask, labels=ids.masked_fill(loss_on == 0, -100)).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad()
            tokens["real"] += int(mask.sum())
            tokens["loss"] += int(loss_on[:, 1:].sum())  # the first position is never a target
            tokens["padded"] += ids.numel()
        return tokens

    tokens, seconds = timed(loop)
    return rate(tokens["real"], seconds, steps=args.sft_steps, loss_tokens=tokens["loss"],
                padded_tokens=tokens["padded"])  # fmt: skip


def trl_sft(work: Path, args, settings: dict) -> dict:
    """TRL's SFTTrainer on the same rows and base model; `settings`: SFTConfig's arguments beyond the common ones
    (counting the attention-mask tokens, as sftdpo does, is the only one added to its defaults)."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    config, base = default_config(), work / "tiny/results/base/model"
    torch_threads("sft", config)
    with tempfile.TemporaryDirectory() as tmp:
        sft_args = SFTConfig(output_dir=tmp, max_steps=args.sft_steps, use_cpu=True, report_to="none",
                             save_strategy="no", include_num_input_tokens_seen="non_padding", **settings)  # fmt: skip
        trainer = SFTTrainer(
            model=AutoModelForCausalLM.from_pretrained(base),
            args=sft_args,
            train_dataset=Dataset.from_list(sft_examples(work / "tiny")),
            processing_class=AutoTokenizer.from_pretrained(base),
        )
        _, seconds = timed(trainer.train)
    return rate(int(trainer.state.num_input_tokens_seen), seconds, steps=trainer.state.global_step)


def sft_trl_same_settings(work: Path, args) -> dict:
    config = default_config()
    train = config["sft"]["train"]
    return trl_sft(work, args, dict(
        per_device_train_batch_size=train["batch_size"], gradient_accumulation_steps=train["grad_accum"],
        learning_rate=train["learning_rate"], lr_scheduler_type=train["lr_scheduler"],
        warmup_steps=train["warmup_steps"], weight_decay=train["weight_decay"], logging_steps=train["logging_steps"],
        max_length=train["max_length"], seed=config["seed"], data_seed=config["seed"], dataloader_num_workers=0,
        completion_only_loss=True, packing=False, bf16=False, gradient_checkpointing=False,
    ))  # fmt: skip


def sft_trl_defaults(work: Path, args) -> dict:
    return trl_sft(work, args, {})


# ---------------------------------------------------------------- generation (rollouts, greedy eval)
def generation_inputs(work: Path, split: str, n: int | None = None):
    """The first `n` rows of a split of the tiny run (all with None); split "eval": its val and test items."""
    import pandas as pd

    from sftdpo.io import read_parquet

    names = ["val", "test"] if split == "eval" else [split]
    items = pd.concat([read_parquet(work / f"tiny/results/data/{name}.parquet") for name in names], ignore_index=True)
    return items if n is None else items.head(n)


def plain_generate(model_dir: Path, prompts: list, *, batch_size: int, k: int, temperature: float, top_p: float,
                   max_new_tokens: int) -> int:  # fmt: skip
    """The peers: transformers' chat template and `generate`, `batch_size` prompts a call; new tokens counted up to
    and including each sample's end-of-sequence token, as sftdpo counts them. Returns the new tokens."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    sampling = dict(do_sample=True, temperature=temperature, top_p=top_p, top_k=None) if temperature > 0 else {}
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id

    @torch.inference_mode()
    def run() -> int:
        torch.manual_seed(0)
        tokens = 0
        for start in range(0, len(prompts), batch_size):
            encoded = tokenizer.apply_chat_template(prompts[start : start + batch_size], add_generation_prompt=True,
                                                    padding=True, return_tensors="pt", return_dict=True)  # fmt: skip
            out = model.generate(**encoded, max_new_tokens=max_new_tokens, num_return_sequences=k,
                                 pad_token_id=pad, eos_token_id=eos, **sampling)  # fmt: skip
            new = out[:, encoded["input_ids"].shape[1] :]
            ended = (new == eos).cumsum(dim=1)
            tokens += int(((ended == 0) | ((new == eos) & (ended == 1))).sum())
            tokenizer.batch_decode(new, skip_special_tokens=True)
        return tokens

    return timed(run)


def rollout_settings(config: dict) -> dict:
    r = config["rollouts"]
    return dict(k=r["k"], temperature=r["temperature"], top_p=r["top_p"], max_new_tokens=r["max_new_tokens"])


def rollouts_sftdpo(work: Path, args) -> dict:
    from sftdpo.generation import generate, load_for_inference

    config = default_config()
    torch_threads("rollouts", config)
    prompts = [list(p) for p in generation_inputs(work, "train", args.prompts)["prompt"]]
    model, tokenizer = load_for_inference(str(work / "tiny/results/sft/model"))
    batch_size = config["rollouts"]["batch_size"]
    outputs, seconds = timed(
        lambda: generate(
            model, tokenizer, prompts, **rollout_settings(config), batch_size=batch_size, seed=config["seed"]
        )
    )
    return rate(sum(s["n_tokens"] for samples in outputs for s in samples), seconds, prompts=len(prompts))


def rollouts_plain(work: Path, args, batch_size: int | None) -> dict:
    config = default_config()
    torch_threads("rollouts", config)
    prompts = [[dict(m) for m in p] for p in generation_inputs(work, "train", args.prompts)["prompt"]]
    tokens, seconds = plain_generate(work / "tiny/results/sft/model", prompts, batch_size=batch_size or len(prompts),
                                     **rollout_settings(config))  # fmt: skip
    return rate(tokens, seconds, prompts=len(prompts))


def rollouts_one_prompt(work: Path, args) -> dict:
    return rollouts_plain(work, args, 1)


def rollouts_one_batch(work: Path, args) -> dict:
    return rollouts_plain(work, args, None)


def eval_sftdpo(work: Path, args) -> dict:
    from sftdpo.generation import greedy_verdicts, load_for_inference

    config = default_config()
    torch_threads("evaluate", config)
    items = generation_inputs(work, "eval")
    model, tokenizer = load_for_inference(str(work / "tiny/results/sft/model"))
    rows, seconds = timed(lambda: greedy_verdicts(
        model, tokenizer, items, task_options={config["task"]["name"]: config["task"][config["task"]["name"]]},
        max_new_tokens=config["evaluate"]["max_new_tokens"], batch_size=config["evaluate"]["batch_size"],
        kv_cache_mb=config["evaluate"]["kv_cache_mb"], seed=config["seed"], desc="evaluate",
    ))  # fmt: skip
    return rate(sum(r["n_tokens"] for r in rows), seconds, items=len(items))


def eval_one_batch(work: Path, args) -> dict:
    config = default_config()
    torch_threads("evaluate", config)
    items = generation_inputs(work, "eval")
    prompts = [[dict(m) for m in p] for p in items["prompt"]]
    greedy = dict(k=1, temperature=0.0, top_p=1.0, max_new_tokens=config["evaluate"]["max_new_tokens"])
    tokens, seconds = plain_generate(work / "tiny/results/sft/model", prompts, batch_size=len(prompts), **greedy)
    return rate(tokens, seconds, items=len(items))


# ---------------------------------------------------------------- data stages
def validate_params(results: Path) -> dict:
    """validate's params as its rules ran: its own (gates) and its shards' (verifier and limits)."""
    return {**sidecar_params(results / "demos/checks/0.parquet"), **sidecar_params(results / "demos/validated.parquet")}


def data_sftdpo(work: Path, args) -> dict:
    """validate, convert and split as their rules call them (params from the data run's lineage sidecars)."""
    from sftdpo.convert import convert, worker_processes
    from sftdpo.split import split
    from sftdpo.validate import validate

    results = work / "data/results"
    checks = validate_params(results)
    conversion = sidecar_params(results / "data/tokens.h5")
    splitting = sidecar_params(results / "data/train.parquet")
    # a shard tokenizes with its threads as the job does
    conversion["workers"] = worker_processes(job_threads(work / "data/logs/convert_shard/0.log"))
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)

        def stages() -> None:
            validate(demos_path=str(results / "demos/demos.parquet"), validated_path=f"{out}/validated.parquet",
                     rejected_path=f"{out}/rejected.parquet", report_path=f"{out}/validation.json",
                     plot_paths={p: f"{out}/{p}.png" for p in ("difficulty", "lengths", "rejections")},
                     import_summaries=[str(p) for p in sorted((results / "demos/shards").glob("*.json"))],
                     **checks)  # fmt: skip
            convert(validated_path=f"{out}/validated.parquet", model_dir=str(results / "base/model"),
                    chat_path=f"{out}/chat.parquet", tokens_path=f"{out}/tokens.h5",
                    report_path=f"{out}/convert.json", **conversion)  # fmt: skip
            split(chat_path=f"{out}/chat.parquet", report_path=f"{out}/split.json",
                  out_paths={s: f"{out}/{s}.parquet" for s in ("train", "val", "test")}, **splitting)  # fmt: skip

        _, seconds = timed(stages)
        kept = json.loads((out / "convert.json").read_text())["n_rows"]
    return rate(args.rows, seconds, kept=kept)


def data_pandas(work: Path, args) -> dict:
    """The plain script: pandas string methods for the checks and the verifier, one batch template + tokenizer
    call, a numpy token tensor in HDF5, a split of prompt groups by hash within each difficulty."""
    import h5py
    import numpy as np
    import pandas as pd
    from transformers import AutoTokenizer

    results = work / "data/results"
    tokenizer = AutoTokenizer.from_pretrained(results / "base/model")
    max_length = sidecar_params(results / "data/tokens.h5")["max_length"]
    checks = validate_params(results)

    def script(out: Path) -> int:
        demos = pd.read_parquet(results / "demos/demos.parquet")
        ok = demos["prompt"].str.strip().str.len().between(1, checks["max_prompt_chars"])
        ok &= demos["completion"].str.strip().str.len().between(1, checks["max_completion_chars"])
        ok &= ~demos["id"].duplicated() & ~demos["prompt"].str.lower().str.split().str.join(" ").duplicated()
        lines = demos["completion"].str.strip().str.split("\n")
        ok &= lines.str[-1].str.extract(r"^####\s*(-?\d+)\s*$")[0] == demos["answer"].astype(str).str.strip()
        steps = lines.str[:-1].explode().dropna().str.extract(r"^(\d+)([+\-*])(\d+)=(-?\d+)$")
        a, b, result = (pd.to_numeric(steps[i]) for i in (0, 2, 3))
        value = np.select([steps[1] == "+", steps[1] == "-"], [a + b, a - b], a * b)
        wrong_step = pd.Series(value != result, index=steps.index).groupby(level=0).any()
        ok &= ~wrong_step.reindex(demos.index, fill_value=False)
        demos[ok].to_parquet(out / "validated.parquet")
        demos[~ok].to_parquet(out / "rejected.parquet")
        kept = demos[ok].reset_index(drop=True)
        prompts = [[{"role": "user", "content": p}] for p in kept["prompt"]]
        fulls = [p + [{"role": "assistant", "content": c}] for p, c in zip(prompts, kept["completion"])]
        encode = dict(add_special_tokens=False, return_attention_mask=False)
        prompt_texts = tokenizer.apply_chat_template(prompts, add_generation_prompt=True, tokenize=False)
        prompt_ids = tokenizer(prompt_texts, **encode)["input_ids"]
        full_ids = tokenizer(tokenizer.apply_chat_template(fulls, tokenize=False), **encode)["input_ids"]
        lengths = np.array([len(ids) for ids in full_ids])
        prompt_lengths = np.array([len(ids) for ids in prompt_ids])
        fits = np.flatnonzero(lengths <= max_length)
        tokens = np.zeros((len(fits), max_length, 3), dtype=np.int32)
        tokens[:, :, 0] = tokenizer.pad_token_id
        positions = np.arange(max_length)
        tokens[:, :, 1] = positions < lengths[fits, None]
        tokens[:, :, 2] = (positions >= prompt_lengths[fits, None]) & (tokens[:, :, 1] == 1)
        for row, i in enumerate(fits):
            tokens[row, : lengths[i], 0] = full_ids[i]
        with h5py.File(out / "tokens.h5", "w") as h5:
            h5["tokens"] = tokens
        chat = kept.iloc[fits].reset_index(drop=True)
        chat["messages"] = [fulls[i] for i in fits]
        chat["token_row"] = np.arange(len(fits))
        chat.to_parquet(out / "chat.parquet")
        group = pd.util.hash_pandas_object(chat["prompt"].str.lower().str.split().str.join(" "), index=False)
        rank = group.groupby(chat["difficulty"]).rank(pct=True, method="dense")
        where = np.select([rank <= 0.6, rank <= 0.8], ["train", "val"], "test")
        for name in ("train", "val", "test"):
            chat[where == name].sort_values("id").to_parquet(out / f"{name}.parquet")
        return len(fits)

    with tempfile.TemporaryDirectory() as tmp:
        kept, seconds = timed(lambda: script(Path(tmp)))
    return rate(args.rows, seconds, kept=kept)


# ---------------------------------------------------------------- Snakemake jobs
MINIMAL_SNAKEFILE = """\
N = int(config["shards"])

rule all:
    input: "merged.txt"

rule shard:
    output: "shards/{i}.txt"
    shell: "echo {wildcards.i} > {output}"

rule merge:
    input: expand("shards/{i}.txt", i=range(N))
    output: "merged.txt"
    shell: "cat {input} > {output}"
"""
MERGE_SNAKEFILE = """\
rule merge:
    input: expand("shards/{shard}.parquet", shard=[0, 1])
    output: "demos.parquet"
    benchmark: "merge.tsv"
    script: "merge.py"
"""
MERGE_SCRIPT = """\
import pandas as pd

frames = [pd.read_parquet(path) for path in snakemake.input]
pd.concat(frames).sort_values("id").to_parquet(snakemake.output[0], index=False)
"""


def snakemake(workdir: Path, *args: str) -> tuple[str, float]:
    """Run snakemake in `workdir`; its output and wall seconds."""
    out, seconds = timed(lambda: subprocess.run([snakemake_bin(), *args], cwd=workdir, capture_output=True, text=True))
    if out.returncode != 0:
        raise SystemExit(f"snakemake {' '.join(args)} failed in {workdir}:\n{(out.stdout + out.stderr)[-3000:]}")
    return out.stdout + out.stderr, seconds


def sftdpo_snakemake(workdir: Path, *args: str, overlays: tuple[Path, ...] = ()) -> tuple[str, float]:
    """The project's Snakefile with the tiny config (and `overlays` on it) in `workdir`."""
    return snakemake(
        workdir, "-s", str(ROOT / "Snakefile"), "-c2", *args, "--configfile", str(TINY), *map(str, overlays)
    )


def job_count(output: str) -> int:
    """The `total` of a dry run's job stats."""
    return int(re.search(r"^total\s+(\d+)", output, re.M).group(1))


def job_merge_demos(work: Path, args) -> dict:
    from data_stages import stage_times

    sftdpo_snakemake(work / "jobs/sftdpo", "results/demos/demos.parquet", "--forcerun", "merge_demos")
    return {"value": stage_times(work / "jobs/sftdpo/results/benchmarks")["merge_demos"]["seconds"]}


def job_bare_script(work: Path, args) -> dict:
    snakemake(work / "jobs/bare", "-c2", "--forcerun", "merge")
    return {"value": float((work / "jobs/bare/merge.tsv").read_text().splitlines()[-1].split("\t")[0])}


def dry_run_sftdpo(work: Path, args) -> dict:
    out, seconds = sftdpo_snakemake(work / "dry-run/sftdpo", "-n", overlays=(work / "dry-run/shards.yaml",))
    return {"value": seconds, "jobs": job_count(out)}


def dry_run_minimal(work: Path, args) -> dict:
    n = json.loads((work / "prepared.json").read_text())["dry_run_jobs"] - 2
    out, seconds = snakemake(work / "dry-run/minimal", "-c2", "-n", "--config", f"shards={n}")
    return {"value": seconds, "jobs": job_count(out)}


def no_op_sftdpo(work: Path, args) -> dict:
    out, seconds = sftdpo_snakemake(work / "tiny")
    assert "Nothing to be done" in out, out[-2000:]
    return {"value": seconds, "jobs": json.loads((work / "prepared.json").read_text())["tiny_jobs"]}


def no_op_minimal(work: Path, args) -> dict:
    n = json.loads((work / "prepared.json").read_text())["tiny_jobs"] - 2
    out, seconds = snakemake(work / "no-op/minimal", "-c2", "--config", f"shards={n}")
    assert "Nothing to be done" in out, out[-2000:]
    return {"value": seconds, "jobs": n + 2}


# ---------------------------------------------------------------- inputs, alternation, the table
def prepare(work: Path, rows: int) -> dict:
    """Build (or reuse) every arm's inputs in `work`; returns the job counts the minimal Snakefiles copy."""
    import data_stages

    tiny = work / "tiny"
    tiny.mkdir(parents=True, exist_ok=True)
    # Built once, then brought up to date with the checkout: the no-op row needs a run this code has nothing to do in.
    print("inputs: the tiny config's DAG, up to date (snakemake -c2 --configfile tests/config/tiny.yaml)", flush=True)
    sftdpo_snakemake(tiny)
    data = work / "data"
    data.mkdir(parents=True, exist_ok=True)
    print(f"inputs: {rows:,} program-expert rows, up to date (benchmarks/data_stages.py's run)", flush=True)
    data_stages.build(rows, data)  # the data arms read the rules' params from its outputs' sidecars
    shards = f"task:\n  n_problems: 8000\ncollect:\n  shards: {DRY_RUN_SHARDS}\n"  # 4 problems a shard
    for name, text in {"jobs/bare/Snakefile": MERGE_SNAKEFILE, "jobs/bare/merge.py": MERGE_SCRIPT,
                       "dry-run/minimal/Snakefile": MINIMAL_SNAKEFILE, "no-op/minimal/Snakefile": MINIMAL_SNAKEFILE,
                       "dry-run/shards.yaml": shards}.items():  # fmt: skip
        (work / name).parent.mkdir(parents=True, exist_ok=True)
        (work / name).write_text(text)
    (work / "dry-run/sftdpo").mkdir(exist_ok=True)
    for copy in (work / "jobs/sftdpo/results/demos/shards", work / "jobs/bare/shards"):
        if not copy.exists():
            shutil.copytree(tiny / "results/demos/shards", copy)
    (work / "jobs/sftdpo/results/demos/demos.parquet").unlink(missing_ok=True)
    sftdpo_snakemake(work / "jobs/sftdpo", "results/demos/demos.parquet")  # first run: Snakemake's metadata
    with tempfile.TemporaryDirectory() as empty:
        tiny_jobs = job_count(sftdpo_snakemake(Path(empty), "-n")[0])
    dry_run_jobs = dry_run_sftdpo(work, None)["jobs"]
    snakemake(work / "no-op/minimal", "-c2", "--config", f"shards={tiny_jobs - 2}")  # the minimal DAG, finished
    prepared = {"tiny_jobs": tiny_jobs, "dry_run_jobs": dry_run_jobs}
    (work / "prepared.json").write_text(json.dumps(prepared))
    return prepared


def schedule(arms: list[str], repeats: int) -> list[str]:
    """The order of a row's runs: its arms one after another, `repeats` times (sftdpo, peer, ..., sftdpo, peer)."""
    return [arm for _ in range(repeats) for arm in arms]


def summarise(unit: str, runs: dict[str, list[float]]) -> dict[str, dict[str, float]]:
    """Each arm's median and best run (the fastest: the least disturbed when the cores are shared), and the ratios
    of sftdpo's (the first arm's) to them: sftdpo's speed ÷ the arm's, above 1 when sftdpo is faster (a rate divided
    by a rate; for seconds, the arm's time ÷ sftdpo's)."""
    best = min if unit == "s" else max
    figures = {arm: {"median": statistics.median(v), "best": best(v)} for arm, v in runs.items()}
    first = next(iter(figures.values()))
    for arm in figures.values():
        for key in ("median", "best"):
            a, b = (arm[key], first[key]) if unit == "s" else (first[key], arm[key])
            arm[f"{key}_ratio"] = a / b
    return figures


def measure(arm: str, args) -> dict:
    """One figure of one arm, in a fresh interpreter."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--measure", arm, "--work", str(args.work)]
    cmd += ["--sft-steps", str(args.sft_steps), "--prompts", str(args.prompts), "--rows", str(args.rows)]
    load = os.getloadavg()[0]  # the machine's 1-minute load before the run (the cores may be shared)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{arm} failed:\n{(proc.stdout + proc.stderr)[-3000:]}")
    return {**json.loads(proc.stdout.strip().splitlines()[-1]), "load_before": load}


def fmt(value: float, unit: str) -> str:
    return f"{value:.2f} s" if unit == "s" else f"{value:,.0f}"


def sizes(record: dict) -> dict[str, str]:
    """What each row measured, in words (from the record's settings and run details)."""
    s = record["settings"]
    return {
        "sft": f"{s['sft_steps']} steps × batch {s['sft_batch_size']}, {s['sft_threads']} threads, "
        "no held-out evaluation",
        "sft_grouped": "`sft.train.extra: {train_sampling_strategy: group_by_length}`, otherwise as above",
        "rollouts": f"{s['prompts']} prompts × k={s['k']}, batch {s['rollouts_batch_size']}, "
        f"≤{s['rollouts_max_new_tokens']} new tokens, T={s['temperature']}",
        "eval": f"{s['eval_items']} items, batch {s['eval_batch_size']}"
        + (", longest prompts first" if s.get("eval_sorted") else "")
        + f", ≤{s['eval_max_new_tokens']} new tokens",
        "data": f"{s['rows']:,} rows, in-process library calls",
        "job": "job time from the `benchmark:` file",
        "dry_run": f"{s['dry_run_jobs']:,} jobs",
        "no_op": f"{s['tiny_jobs']} jobs: the finished tiny run",
    }


def render(record: dict) -> str:
    lines = ["| what | sftdpo | peer | ratio |", "|---|---|---|---|"]
    described = sizes(record)
    for key, what, unit, arms in ROWS:
        row = record["rows"].get(key)
        title = f"{what} ({described[key]})"
        if not row:
            lines.append(f"| {title} | not measured | | |")
            continue
        ours = row["arms"][arms[0][0]]
        peers = [(label, row["arms"][arm]) for arm, label in arms[1:]]
        lines.append(
            f"| {title} | {fmt(ours['median'], unit)} ({fmt(ours['best'], unit)}) | "
            + " · ".join(f"{label} {fmt(a['median'], unit)} ({fmt(a['best'], unit)})" for label, a in peers)
            + " | "
            + " · ".join(f"{a['median_ratio']:.2f} ({a['best_ratio']:.2f})" for _, a in peers)
            + " |"
        )
    m = record["machine"]
    where = f"{m['platform']}, {m['cores']} cores, Python {m['python']}, torch {m['torch']}"
    lines += ["", f"Median of {record['repeats']} alternating runs (in brackets: the best run); ratio: sftdpo's "
              f"speed ÷ the peer's (above 1: sftdpo faster), of the medians (of the best runs). Measured on {where}, "
              f"commit {record['commit']}, {record['date']}, in {record['wall_seconds'] / 60:.0f} min."]  # fmt: skip
    return "\n".join(lines)


def machine() -> dict:
    return {"platform": platform.platform(), "cores": os.cpu_count(), "python": platform.python_version(),
            "torch": importlib.metadata.version("torch")}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=ROOT / "benchmarks/peers", help="inputs and scratch (reused)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each arm (median shown)")
    parser.add_argument("--rows", type=int, default=100_000, help="program-expert rows of the data row")
    parser.add_argument("--sft-steps", type=int, default=60)
    parser.add_argument("--prompts", type=int, default=256, help="train prompts of the rollouts row")
    parser.add_argument("--only", nargs="+", choices=[r[0] for r in ROWS], help="measure these rows only")
    parser.add_argument("--measure", help=argparse.SUPPRESS)  # one arm, in this (fresh) process
    add_save_options(parser)
    args = parser.parse_args()
    args.work = args.work.resolve()
    if args.measure:
        # Offline as every job runs: else TRL's trainers send a telemetry request to the Hub from a thread while they
        # train, which a job never does.
        hub_offline()
        print(json.dumps(globals()[args.measure](args.work, args)))
        return 0
    if args.readme:
        rewrite_from_saved(TABLE, render, SAVED)
        return 0
    started = time.perf_counter()
    prepared = prepare(args.work, args.rows)
    config = default_config()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    record = {
        "machine": machine(),
        "commit": commit.stdout.strip(),
        "date": time.strftime("%Y-%m-%d"),
        "repeats": args.repeats,
        "settings": {
            "sft_steps": args.sft_steps,
            "sft_batch_size": config["sft"]["train"]["batch_size"],
            "sft_threads": config["sft"]["resources"]["threads"],
            "prompts": args.prompts,
            "k": config["rollouts"]["k"],
            "rollouts_batch_size": config["rollouts"]["batch_size"],
            "rollouts_max_new_tokens": config["rollouts"]["max_new_tokens"],
            "temperature": config["rollouts"]["temperature"],
            "eval_batch_size": config["evaluate"]["batch_size"],
            "eval_max_new_tokens": config["evaluate"]["max_new_tokens"],
            "eval_sorted": True,  # greedy_verdicts decodes the longest prompts first (since issue 11's batching)
            "eval_items": len(generation_inputs(args.work, "eval")),
            "rows": args.rows,
            **prepared,
        },  # fmt: skip
        "rows": {},
    }
    for key, _, unit, arms in ROWS:
        if args.only and key not in args.only:
            continue
        runs: dict[str, list[dict]] = {arm: [] for arm, _ in arms}
        for arm in schedule([a for a, _ in arms], args.repeats):
            runs[arm].append(measure(arm, args))
            print(f"{key} {arm}: {fmt(runs[arm][-1]['value'], unit)}{'' if unit == 's' else ' ' + unit}", flush=True)
        summary = summarise(unit, {arm: [r["value"] for r in got] for arm, got in runs.items()})
        record["rows"][key] = {"arms": {arm: {**summary[arm], "runs": runs[arm]} for arm in runs}}
    record["wall_seconds"] = time.perf_counter() - started
    print(render(record))
    if args.save:
        SAVED.parent.mkdir(parents=True, exist_ok=True)
        SAVED.write_text(json.dumps(record, indent=1) + "\n")
        replace_table(TABLE[0], render(record), TABLE[1])
        print(f"saved to {SAVED.relative_to(ROOT)} and the README's {TABLE[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
