"""SFT with length-grouped batches, four ways, against random batches: what grouping does to learning (issue 11).

    .venv/bin/python benchmarks/sft_grouping.py RUN_DIR [--seed 0] [--arms random trainer shuffled:35 ...]

RUN_DIR: a finished run of the default config (its results/base/model, results/data/{train,val}.parquet, tokens.h5
and convert.json; e.g. `snakemake -c2 results/sft/model` in an empty directory). Each arm trains the default SFT
(`sft.train` of config/config.yaml, 500 steps) through `sftdpo.sft.train_sft`, in a fresh process of its own, and
prints one JSON line: its held-out loss on the first `sft.eval_rows` val rows, train loss, real and padded tokens. Arms:
- `random`: the default (Trainer's random sampler);
- `trainer`: `sft.train.extra: {train_sampling_strategy: group_by_length}` (transformers' LengthGroupedSampler:
  megabatches of up to 50 batches, each sorted longest first, taken in that order);
- `shuffled:M`: a random permutation cut into megabatches of M batches, each sorted by length and cut into batches,
  every full batch then taken in a shuffled order (no longest-first sweep);
- `constnorm:M`: `shuffled:M` with every step's loss divided by the same number (the mean loss tokens of a random
  batch) instead of its own batch's loss tokens.
Only `random` and `trainer` are configurations of sftdpo; the others patch transformers' Trainer in their process.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))
from peers import default_config, train_default_sft  # noqa: E402


class ShuffledLengthBatches:
    """Dataset indices: batches of rows of similar length (sorted within megabatches of `mega` batches), in a
    shuffled order; a megabatch's partial batch goes last, so every other batch of `batch_size` stays whole."""

    def __init__(self, lengths: list[int], batch_size: int, seed: int, mega: int):
        self.lengths, self.batch_size, self.seed, self.mega, self.epoch = np.asarray(lengths), batch_size, seed, mega, 0

    def __len__(self) -> int:
        return len(self.lengths)

    def set_epoch(self, epoch: int) -> None:  # Trainer calls it at each epoch's start
        self.epoch = epoch

    def __iter__(self):
        rng = np.random.default_rng([self.seed, self.epoch])
        order, size = rng.permutation(len(self.lengths)), self.mega * self.batch_size
        batches = []
        for start in range(0, len(order), size):
            group = order[start : start + size]
            group = group[np.argsort(self.lengths[group], kind="stable")]
            batches += [group[i : i + self.batch_size] for i in range(0, len(group), self.batch_size)]
        whole = [b for b in batches if len(b) == self.batch_size]
        partial = [b for b in batches if len(b) < self.batch_size]
        return iter([int(i) for b in [whole[p] for p in rng.permutation(len(whole))] + partial for i in b])


def patch_trainer(arm: str, run: Path) -> None:
    """Patch transformers' Trainer for the `shuffled:M` and `constnorm:M` arms."""
    import torch
    import transformers

    from sftdpo.io import read_parquet
    from sftdpo.tables import read_token_rows

    mega = int(arm.split(":")[1])

    def sampler(self, train_dataset=None):
        dataset = train_dataset or self.train_dataset
        batch = self.args.train_batch_size * self.args.gradient_accumulation_steps
        return ShuffledLengthBatches([len(ids) for ids in dataset["input_ids"]], batch, self.args.seed, mega)

    transformers.Trainer._get_train_sampler = sampler
    if arm.startswith("constnorm"):
        rows = read_parquet(run / "results/data/train.parquet")["token_row"].tolist()
        examples = read_token_rows(str(run / "results/data/tokens.h5"), rows)[0]
        per_row = float(np.mean([sum(e["completion_mask"][1:]) for e in examples]))  # position 0 is never a target

        def num_items(self, batch_samples, device):
            return torch.tensor(per_row * self.args.train_batch_size * len(batch_samples), device=device)

        transformers.Trainer._get_num_items_in_batch = num_items


def train(arm: str, run: Path, seed: int) -> dict:
    config = default_config()
    settings = dict(config["sft"]["train"])
    if arm == "trainer":
        settings["extra"] = {"train_sampling_strategy": "group_by_length"}
    elif arm != "random":
        patch_trainer(arm, run)
    metrics = train_default_sft(run / "results", settings, eval_rows=config["sft"]["eval_rows"], seed=seed)
    tokens = metrics["tokens_this_run"]
    return {"arm": arm, "seed": seed, "held_out_loss": metrics["final_eval_loss"], "train_loss": metrics["train_loss"],
            "real_tokens": tokens["real"], "padded_tokens": tokens["padded"]}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="a finished run of the default config")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--arms", nargs="+", default=["random", "trainer", "shuffled:35", "shuffled:4", "constnorm:35"])
    args = parser.parse_args()
    for arm in args.arms:
        print(json.dumps(train_in_subprocess(arm, args.run, args.seed)), flush=True)


def train_in_subprocess(arm: str, run: Path, seed: int) -> dict:
    """`train(arm, run, seed)` in a fresh interpreter (an arm's patches of Trainer stay in its process)."""
    import subprocess

    code = (
        f"import json, sys; sys.path.insert(0, {str(ROOT / 'benchmarks')!r}); import sft_grouping; "
        f"print(json.dumps(sft_grouping.train({arm!r}, sft_grouping.Path({str(run)!r}), {seed})))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"arm {arm} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    main()
