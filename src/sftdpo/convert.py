"""Conversion: validated demonstrations -> TRL conversational rows and a token tensor in HDF5.

tokens.h5 holds `tokens`, int32 [N, L, 3]: input ids, attention mask, loss mask (1 on the
assistant turn only), right-padded; `ids` gives each row's demonstration id. Attributes record the
tokenizer hash and L. chat.parquet's `token_row` points into it.

Rows longer than `max_length` tokens are left out and listed in convert.json; gates (`convert.gates`)
stop the stage, with the numbers per difficulty, before anything is written when more than
`max_dropped_fraction` of the rows, or all but `min_rows_per_difficulty` of a difficulty, would go.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from sftdpo.chat import chat_messages
from sftdpo.io import atomic_path, read_parquet, write_json, write_parquet
from sftdpo.modeling import load_tokenizer, tokenizer_hash
from sftdpo.tables import write_tokens

log = logging.getLogger(__name__)


# Conversations templated and tokenized per call: the tokenizer's batch API amortises its per-call overhead.
BATCH = 4096


def tokenize_conversations(tokenizer, conversations: list[dict[str, list]]) -> tuple[list[list[int]], list[int]]:
    """(input ids, prompt length) per conversation ({"prompt": [...], "completion": [...]}); the loss mask
    covers the tokens after the prompt. Batched through `apply_chat_template`, so the ids are exactly those of
    one conversation at a time."""
    ids: list[list[int]] = []
    prompt_lengths: list[int] = []
    bar = tqdm(total=len(conversations), desc="convert", mininterval=2)
    for start in range(0, len(conversations), BATCH):
        batch = conversations[start : start + BATCH]
        prompts = tokenizer.apply_chat_template([c["prompt"] for c in batch], add_generation_prompt=True)
        fulls = tokenizer.apply_chat_template([c["prompt"] + c["completion"] for c in batch])
        for prompt, full in zip(prompts["input_ids"], fulls["input_ids"]):
            if full[: len(prompt)] != prompt:
                raise ValueError(
                    "the tokenizer's chat template is not prefix-consistent: template(prompt, "
                    "add_generation_prompt=True) is not a prefix of template(prompt + completion)"
                )
            ids.append(list(full))
            prompt_lengths.append(len(prompt))
        bar.update(len(batch))
    bar.close()
    return ids, prompt_lengths


def token_tensor(ids: list[list[int]], prompt_lengths: list[int], max_length: int, pad_id: int) -> np.ndarray:
    """int32 [N, max_length, 3]: input ids (right-padded with pad_id), attention mask, loss mask."""
    tokens = np.zeros((len(ids), max_length, 3), dtype=np.int32)
    tokens[:, :, 0] = pad_id
    for row, (row_ids, prompt_length) in enumerate(zip(ids, prompt_lengths)):
        tokens[row, : len(row_ids), 0] = row_ids
        tokens[row, : len(row_ids), 1] = 1
        tokens[row, prompt_length : len(row_ids), 2] = 1
    return tokens


class ConvertGateError(RuntimeError):
    """convert.max_length leaves too many rows out; the message gives the numbers per difficulty."""


def check_gates(
    frame: pd.DataFrame, overlength: list[dict[str, Any]], max_length: int, gates: dict[str, Any]
) -> list[str]:
    """Messages for every failed gate of convert (empty when all pass)."""
    total = Counter(str(d) for d in frame["difficulty"])
    dropped = Counter(str(o["difficulty"]) for o in overlength)
    by_level = ", ".join(f"{level!r}: {dropped[level]}/{n}" for level, n in sorted(total.items()))
    longest = max((o["n_tokens"] for o in overlength), default=0)
    hint = f"raise convert.max_length (the longest row has {longest} tokens) and sft.train.max_length with it"
    failed = []
    limit = gates.get("max_dropped_fraction", 1.0)
    if frame.shape[0] and len(overlength) / frame.shape[0] > limit:
        failed.append(
            f"gate max_dropped_fraction: {len(overlength)}/{frame.shape[0]} rows "
            f"({len(overlength) / frame.shape[0]:.1%}) are longer than convert.max_length={max_length} tokens "
            f"> {limit:.1%}; dropped by difficulty: {by_level}; {hint}"
        )
    minimum = gates.get("min_rows_per_difficulty", 0)
    short = [level for level, n in sorted(total.items()) if n - dropped[level] < minimum]
    if short:
        failed.append(
            f"gate min_rows_per_difficulty: difficulty {', '.join(map(repr, short))} would keep fewer than "
            f"{minimum} rows (dropped by difficulty: {by_level}); {hint}"
        )
    return failed


def convert(
    *,
    validated_path: str,
    model_dir: str,
    chat_path: str,
    tokens_path: str,
    report_path: str,
    max_length: int,
    gates: dict[str, Any] | None = None,
) -> dict[str, Any]:
    frame = read_parquet(validated_path)
    tokenizer = load_tokenizer(model_dir)
    conversations = [chat_messages(p, c) for p, c in zip(frame["prompt"].tolist(), frame["completion"].tolist())]
    ids, prompt_lengths = tokenize_conversations(tokenizer, conversations)
    n_tokens = np.array([len(row_ids) for row_ids in ids], dtype=np.int64)
    fits = n_tokens <= max_length
    overlength = [
        {"id": frame["id"].iat[i], "difficulty": frame["difficulty"].iat[i], "n_tokens": int(n_tokens[i])}
        for i in np.flatnonzero(~fits)
    ]
    failed = check_gates(frame, overlength, max_length, gates or {})
    if failed:
        raise ConvertGateError(f"convert of {validated_path} failed:\n  " + "\n  ".join(failed))
    if not fits.any():
        raise ValueError(f"{validated_path}: no row fits convert.max_length={max_length} tokens")
    kept = np.flatnonzero(fits)
    kept_conversations = [conversations[i] for i in kept]
    chat = frame[["id", "task", "difficulty", "expert", "answer"]].iloc[kept].reset_index(drop=True)
    chat["prompt"] = [c["prompt"] for c in kept_conversations]
    chat["completion"] = [c["completion"] for c in kept_conversations]
    chat["messages"] = [c["prompt"] + c["completion"] for c in kept_conversations]
    chat["n_tokens"] = n_tokens[kept]
    chat["token_row"] = np.arange(len(kept), dtype=np.int64)
    tokens = token_tensor([ids[i] for i in kept], [prompt_lengths[i] for i in kept], max_length, tokenizer.pad_token_id)
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
        "dropped_fraction": len(overlength) / max(len(frame), 1),
        "kept_by_difficulty": {str(k): int(v) for k, v in sorted(Counter(chat["difficulty"].astype(str)).items())},
        "gates": gates or {},
        "tokenizer_hash": tokenizer_hash(tokenizer),
    }
    if overlength:
        log.warning(
            "%d rows exceed convert.max_length=%d and were left out: %s", len(overlength), max_length, overlength[:5]
        )
    write_json(report, report_path)
    return report
