"""Conversion: validated demonstrations -> TRL conversational rows and a token tensor in HDF5.

tokens.h5 holds `tokens`, int32 [N, L, 3]: input ids, attention mask, loss mask (1 on the
assistant turn only), right-padded; `ids` gives each row's demonstration id. Attributes record the
tokenizer hash and L. chat.parquet's `token_row` points into it.
"""

from __future__ import annotations

import logging
from typing import Any

import h5py
import numpy as np
import pandas as pd
from tqdm import tqdm

from sftdpo.io import atomic_path, read_parquet, write_json, write_parquet
from sftdpo.modeling import load_tokenizer, tokenizer_hash

log = logging.getLogger(__name__)


def chat_messages(prompt: str, completion: str | None = None) -> dict[str, list[dict[str, str]]]:
    row = {"prompt": [{"role": "user", "content": prompt}]}
    if completion is not None:
        row["completion"] = [{"role": "assistant", "content": completion}]
    return row


def prompt_ids(tokenizer, prompt_messages: list[dict[str, str]]) -> list[int]:
    return list(tokenizer.apply_chat_template(prompt_messages, add_generation_prompt=True)["input_ids"])


def tokenize_pair(tokenizer, prompt_messages, completion_messages) -> tuple[list[int], list[int]]:
    """(input ids, loss mask) for one conversation; the loss mask covers the completion only."""
    prompt = prompt_ids(tokenizer, prompt_messages)
    full = list(tokenizer.apply_chat_template(prompt_messages + completion_messages)["input_ids"])
    if full[: len(prompt)] != prompt:
        raise ValueError(
            "the tokenizer's chat template is not prefix-consistent: template(prompt, "
            "add_generation_prompt=True) is not a prefix of template(prompt + completion)"
        )
    return full, [0] * len(prompt) + [1] * (len(full) - len(prompt))


def convert(
    *,
    validated_path: str,
    model_dir: str,
    chat_path: str,
    tokens_path: str,
    report_path: str,
    max_length: int,
) -> dict[str, Any]:
    frame = read_parquet(validated_path)
    tokenizer = load_tokenizer(model_dir)
    rows, tensors, overlength = [], [], []
    for row in tqdm(frame.itertuples(index=False), total=len(frame), desc="convert", mininterval=2):
        messages = chat_messages(row.prompt, row.completion)
        ids, loss = tokenize_pair(tokenizer, messages["prompt"], messages["completion"])
        if len(ids) > max_length:
            overlength.append({"id": row.id, "n_tokens": len(ids)})
            continue
        pad = max_length - len(ids)
        tensors.append(
            np.stack(
                [
                    np.array(ids + [tokenizer.pad_token_id] * pad, dtype=np.int32),
                    np.array([1] * len(ids) + [0] * pad, dtype=np.int32),
                    np.array(loss + [0] * pad, dtype=np.int32),
                ],
                axis=-1,
            )
        )
        rows.append(
            {
                "id": row.id,
                "task": row.task,
                "difficulty": row.difficulty,
                "expert": row.expert,
                "answer": row.answer,
                **messages,
                "messages": messages["prompt"] + messages["completion"],
                "n_tokens": len(ids),
                "token_row": len(tensors) - 1,
            }
        )
    if not rows:
        raise ValueError(f"{validated_path}: no row fits convert.max_length={max_length} tokens")
    chat = pd.DataFrame(rows)
    tokens = np.stack(tensors)
    with atomic_path(tokens_path) as tmp:
        with h5py.File(tmp, "w") as h5:
            h5.create_dataset("tokens", data=tokens, compression="gzip",
                              chunks=(min(len(tokens), 256), max_length, 3), track_times=False)
            h5.create_dataset("ids", data=np.array(chat["id"].tolist(), dtype=h5py.string_dtype()), track_times=False)
            h5.attrs["tokenizer_hash"] = tokenizer_hash(tokenizer)
            h5.attrs["max_length"] = max_length
            h5.attrs["layout"] = "input_ids,attention_mask,loss_mask"
    write_parquet(chat, chat_path)
    report = {
        "n_rows": len(chat),
        "max_length": max_length,
        "tokens_shape": list(tokens.shape),
        "n_tokens": {"mean": float(chat["n_tokens"].mean()), "max": int(chat["n_tokens"].max())},
        "overlength": overlength,
        "tokenizer_hash": tokenizer_hash(tokenizer),
    }
    if overlength:
        log.warning("%d rows exceed convert.max_length=%d and were left out: %s", len(overlength), max_length,
                    overlength[:5])
    write_json(report, report_path)
    return report


def read_token_rows(tokens_path: str, *row_lists: list[int]) -> list[list[dict[str, list[int]]]]:
    """Trainer-ready examples (`input_ids`, `completion_mask`), padding removed, for each list of rows;
    the file is read once."""
    with h5py.File(tokens_path, "r") as h5:
        tokens = h5["tokens"][:]

    def example(r: int) -> dict[str, list[int]]:
        length = int(tokens[r, :, 1].sum())
        return {"input_ids": tokens[r, :length, 0].tolist(), "completion_mask": tokens[r, :length, 2].tolist()}

    return [[example(r) for r in rows] for rows in row_lists]
