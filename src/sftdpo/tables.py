"""The column contracts of the pipeline's tables and the layout of tokens.h5, in one place.

Stages write and read these artifacts; keeping their shape here (not in the stage that writes them)
lets a stage read another stage's output without importing it.
"""

from __future__ import annotations

from itertools import chain
from typing import Any

import numpy as np

# results/demos/*.parquet: one expert demonstration a row.
DEMO_COLUMNS = ["id", "task", "difficulty", "prompt", "completion", "answer", "expert", "correct", "meta"]

# results/rollouts/*.parquet: one sampled completion a row, scored by the task's verifier; `split` is the
# split its prompt came from (train: DPO trains on its pairs; val: DPO's held-out pairs). `prompt` is the final user
# message's text (as the prompt variant wrote it), `context` the messages before it (system message, earlier turns).
# Lineage: `prompt_id` is the id of the prompt's row in that split; `model` the sampling model's directory and
# `model_digest` its content digest (`sftdpo.io.model_digest`, as in its lineage.json); `seed` the seed of the batch
# the sample was drawn in, with `temperature`, `top_p` and `max_new_tokens`.
ROLLOUT_COLUMNS = [
    "id",
    "prompt_id",
    "split",
    "variant",
    "sample",
    "task",
    "difficulty",
    "prompt",
    "context",
    "completion",
    "answer",
    "prediction",
    "correct",
    "reason",
    "n_tokens",
    "score",
    "model",
    "model_digest",
    "seed",
    "temperature",
    "top_p",
    "max_new_tokens",
]

# results/prefs/pairs.parquet: TRL's conversational preference format plus lineage and scores.
# `split` as in the rollouts; `shared_tokens`: how many leading completion tokens chosen and rejected share
# (the first divergent token's position); `chosen_id`, `rejected_id`: the ids of the rollouts whose completions they
# are (of identical completions, the one kept when deduplicating).
PAIR_COLUMNS = [
    "id",
    "prompt_id",
    "chosen_id",
    "rejected_id",
    "split",
    "task",
    "difficulty",
    "prompt",
    "chosen",
    "rejected",
    "kind",
    "chosen_score",
    "rejected_score",
    "shared_tokens",
]

# results/eval/{stage}.parquet: one test item a row.
EVAL_COLUMNS = ["id", "stage", "task", "difficulty", "completion", "prediction", "gold", "correct", "n_tokens"]

# results/data/tokens.h5: `tokens` int32 [N, L, 3], right-padded, with these three channels.
TOKEN_LAYOUT = "input_ids,attention_mask,loss_mask"


class TokenWriter:
    """tokens.h5 written a block of rows at a time, so the whole [N, L, 3] tensor is never in memory
    (deterministic bytes: no timestamps). `close(ids)` writes the ids and attributes; the caller makes the
    file atomic. Chunks are byte-shuffled, then gzip'd at level 1: the int32 ids' zero high bytes line up, so the file
    is about the size gzip level 4 alone makes, written ~35% and read ~2× faster (README, "Data stages at scale")."""

    def __init__(self, path: str, *, tokenizer_hash: str, max_length: int):
        import h5py

        self.h5 = h5py.File(path, "w")
        self.tokens = self.h5.create_dataset(
            "tokens", shape=(0, max_length, 3), maxshape=(None, max_length, 3), dtype=np.int32,
            chunks=(256, max_length, 3), shuffle=True, compression="gzip", compression_opts=1, track_times=False,
        )  # fmt: skip
        self.h5.attrs["tokenizer_hash"] = tokenizer_hash
        self.h5.attrs["max_length"] = max_length
        self.h5.attrs["layout"] = TOKEN_LAYOUT

    def append(self, block: np.ndarray) -> None:
        start = self.tokens.shape[0]
        self.tokens.resize(start + len(block), axis=0)
        self.tokens[start:] = block

    def close(self, ids: list[str]) -> None:
        import h5py

        self.h5.create_dataset("ids", data=np.array(ids, dtype=h5py.string_dtype()), track_times=False)
        self.h5.close()


def right_padded(rows: list[list[int]], inside: np.ndarray, fill: int, dtype) -> np.ndarray:
    """`rows` laid into an array shaped like `inside` (a row-major mask of where each row's tokens go: `np.arange(
    width) < lengths[:, None]`), from each row's left, `fill` elsewhere. One numpy call for all rows."""
    padded = np.full(inside.shape, fill, dtype=dtype)
    padded[inside] = np.fromiter(chain.from_iterable(rows), dtype=dtype, count=int(inside.sum()))
    return padded


def read_token_rows(tokens_path: str, *row_lists: list[int]) -> list[list[dict[str, list[int]]]]:
    """Trainer-ready examples (`input_ids`, `completion_mask`), padding removed, for each list of rows;
    the file is read once."""
    import h5py

    with h5py.File(tokens_path, "r") as h5:
        tokens = h5["tokens"][:]

    def example(r: int) -> dict[str, Any]:
        length = int(tokens[r, :, 1].sum())
        return {"input_ids": tokens[r, :length, 0].tolist(), "completion_mask": tokens[r, :length, 2].tolist()}

    return [[example(r) for r in rows] for rows in row_lists]
