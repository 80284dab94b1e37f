"""Conversion: validated demonstrations -> TRL conversational rows and a token tensor in HDF5.

Each conversation is the demonstration's context (`meta.context`: an imported conversation's system message
and earlier turns; `system_prompt` first when it has no system message), its prompt as the final user message
and its completion as the final assistant message.

tokens.h5 holds `tokens`, int32 [N, L, 3]: input ids, attention mask, loss mask (1 on the
assistant turns only), right-padded; `ids` gives each row's demonstration id. Attributes record the
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

from sftdpo.chat import assistant_token_mask, chat_messages, demo_context
from sftdpo.io import atomic_path, read_parquet, write_json, write_parquet
from sftdpo.modeling import load_tokenizer, tokenizer_hash
from sftdpo.tables import write_tokens

log = logging.getLogger(__name__)


def tokenize_pair(tokenizer, prompt_messages, completion_messages) -> tuple[list[int], list[int]]:
    """(input ids, loss mask) for one conversation; the loss mask covers every assistant turn (the completion,
    and the assistant turns of an imported conversation's earlier exchanges)."""
    return assistant_token_mask(tokenizer, [*prompt_messages, *completion_messages])


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
    system_prompt: str | None = None,
) -> dict[str, Any]:
    """`system_prompt` (convert.system_prompt) opens every conversation that has no system message of its own."""
    frame = read_parquet(validated_path)
    tokenizer = load_tokenizer(model_dir)
    rows, tensors, overlength = [], [], []
    for row in tqdm(frame.itertuples(index=False), total=len(frame), desc="convert", mininterval=2):
        messages = chat_messages(
            row.prompt, row.completion, context=demo_context(getattr(row, "meta", None), system_prompt)
        )
        ids, loss = tokenize_pair(tokenizer, messages["prompt"], messages["completion"])
        if len(ids) > max_length:
            overlength.append({"id": row.id, "difficulty": row.difficulty, "n_tokens": len(ids)})
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
    failed = check_gates(frame, overlength, max_length, gates or {})
    if failed:
        raise ConvertGateError(f"convert of {validated_path} failed:\n  " + "\n  ".join(failed))
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
        "dropped_fraction": len(overlength) / max(len(frame), 1),
        "kept_by_difficulty": {str(k): int(v) for k, v in sorted(Counter(chat["difficulty"].astype(str)).items())},
        "gates": gates or {},
        "tokenizer_hash": tokenizer_hash(tokenizer),
        "system_prompt": system_prompt,
        # conversations with earlier exchanges before the final user message
        "multi_turn_rows": sum(sum(m["role"] == "user" for m in prompt) > 1 for prompt in chat["prompt"]),
    }
    if overlength:
        log.warning(
            "%d rows exceed convert.max_length=%d and were left out: %s", len(overlength), max_length, overlength[:5]
        )
    write_json(report, report_path)
    return report
