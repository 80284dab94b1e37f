"""Conversion: validated demonstrations -> TRL conversational rows and a token tensor in HDF5.

tokens.h5 holds `tokens`, int32 [N, L, 3]: input ids, attention mask, loss mask (1 on the
assistant turn only), right-padded; `ids` gives each row's demonstration id. Attributes record the
tokenizer hash and L. chat.parquet's `token_row` points into it.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from sftdpo.chat import chat_messages, prompt_ids
from sftdpo.io import atomic_path, read_parquet, write_json, write_parquet
from sftdpo.modeling import load_tokenizer, tokenizer_hash
from sftdpo.tables import write_tokens

log = logging.getLogger(__name__)


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
        write_tokens(
            str(tmp), tokens, chat["id"].tolist(), tokenizer_hash=tokenizer_hash(tokenizer), max_length=max_length
        )
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
        log.warning(
            "%d rows exceed convert.max_length=%d and were left out: %s", len(overlength), max_length, overlength[:5]
        )
    write_json(report, report_path)
    return report
