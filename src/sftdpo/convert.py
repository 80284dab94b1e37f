"""Conversion: validated demonstrations -> TRL conversational rows and a token tensor in HDF5.

Each conversation is the demonstration's context (`meta.context`: an imported conversation's system message
and earlier turns; `system_prompt` first when it has no system message), its prompt as the final user message
and its completion as the final assistant message.

tokens.h5 holds `tokens`, int32 [N, L, 3]: input ids, attention mask, loss mask (1 on the
assistant turns only), right-padded; `ids` gives each row's demonstration id. Attributes record the
tokenizer hash and L. chat.parquet's `token_row` points into it.

In the DAG, rule convert_shard converts a share of the rows (`convert.shards` jobs, on one machine or many) and rule
convert puts the shards together (`merge_shards`); `convert` does both in one process. The files are the same.

Rows longer than `max_length` tokens are left out and listed in convert.json; gates (`convert.gates`)
stop the stage, with the numbers per difficulty, before anything is written when more than
`max_dropped_fraction` of the rows, or all but `min_rows_per_difficulty` of a difficulty, would go.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections import Counter
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from tqdm import tqdm

from sftdpo.bulk import gc_paused, ordered_map
from sftdpo.chat import (
    chat_messages,
    demo_context,
    encode_texts,
    prompt_lengths,
    prompt_tails,
    render_chats,
)
from sftdpo.io import atomic_path, read_json, read_parquet_rows, write_json
from sftdpo.modeling import load_tokenizer, rendering, tokenizer_hash
from sftdpo.tables import TokenWriter, right_padded

log = logging.getLogger(__name__)


# Conversations templated and tokenized per call: the tokenizer's batch API amortises its per-call overhead.
BATCH = 4096
# Below this many blocks the worker processes' start-up (each loads the tokenizer) costs more than it saves.
MIN_BLOCKS_FOR_WORKERS = 8


def worker_processes(threads: int) -> int:
    """The processes a convert job of `threads` cores tokenizes in (`workers`). Up to 2 cores its own (1): with the
    encoder in a thread beside the Python steps (`pipelined_blocks`) it kept 2 cores about as busy as 2 worker
    processes, with 6-14% less CPU (no other interpreters, nothing pickled between processes) and 2-9% less wall
    (380,000 rows, 7 alternating pairs; README, "Data stages at scale"). With more cores, `threads` worker
    processes: the Python steps, about a third of the CPU time, would hold one process to the pace of one core."""
    return threads if threads > 2 else 1


def tokenize_conversations(tokenizer, conversations: list[dict[str, list]]) -> tuple[list[list[int]], list[list[int]]]:
    """(input ids, loss mask) per conversation ({"prompt": [...], "completion": [...]}); the loss mask covers
    every assistant turn (what the template appends after the assistant opener, end-of-turn token included).
    The conversations are rendered as `apply_chat_template` renders them and encoded in one batched tokenizer call,
    so their ids are exactly those of one conversation at a time. Where each assistant turn starts and ends is the
    number of ids of the conversation rendered up to it (with the generation prompt) and up to its end, found in the
    conversation's ids and checked (`chat.prompt_lengths`): the template must be prefix-consistent.
    In three steps (`rendered_texts`, `encoded_texts`, `loss_starts`), so that convert can encode one block's texts
    while it renders the next (`pipelined_blocks`)."""
    encoded = encoded_texts(tokenizer, rendered_texts(tokenizer, conversations))
    ids, starts, masks = loss_starts(tokenizer, encoded)
    written = [[0] * start + [1] * (len(row) - start) for row, start in zip(ids, starts)]
    return ids, [masks[i] if i in masks else mask for i, mask in enumerate(written)]


class RenderedBlock(NamedTuple):
    """A block's conversations as `apply_chat_template` renders them (`fulls`) and the texts where their assistant
    turns start and end (`cuts`): first each turn's start (the conversation up to it, with the generation prompt;
    `n_starts` of them), then each turn's end but the last's (the conversation up to it; the last turn ends the
    conversation); `cut_rows`: each cut's conversation; `tails`: the cuts' tails (`chat.prompt_tails`). A
    conversation whose only assistant turn is its completion (nearly all) has one cut: its prompt."""

    fulls: list[str]
    cuts: list[str]
    cut_rows: list[int]
    n_starts: int
    tails: list


class EncodedBlock(NamedTuple):
    """A block's `RenderedBlock` and the ids of its whole conversations and of its cuts' tails."""

    rendered: RenderedBlock
    full_ids: list[list[int]]
    tail_ids: dict[str, list[int]]


def rendered_texts(tokenizer, conversations: list[dict[str, list]]) -> RenderedBlock:
    """The block's texts to encode and where its assistant turns start and end (`RenderedBlock`)."""
    chats = [c["prompt"] + c["completion"] for c in conversations]
    starts: list[list] = []  # the messages before each assistant turn
    ends: list[list] = []  # the messages up to each assistant turn but a conversation's last
    start_rows: list[int] = []
    end_rows: list[int] = []
    for row, chat in enumerate(chats):
        turns = [i for i, message in enumerate(chat) if message["role"] == "assistant"]
        for i in turns:
            starts.append(chat[:i])
            start_rows.append(row)
        for i in turns[:-1]:
            ends.append(chat[: i + 1])
            end_rows.append(row)
    if not chats:
        return RenderedBlock([], [], [], 0, [])
    fulls = render_chats(tokenizer, chats, add_generation_prompt=False)
    cuts = render_chats(tokenizer, starts, add_generation_prompt=True)
    cuts += render_chats(tokenizer, ends, add_generation_prompt=False)
    cut_rows = start_rows + end_rows
    return RenderedBlock(
        fulls, cuts, cut_rows, len(starts), prompt_tails(tokenizer, cuts, [fulls[r] for r in cut_rows])
    )


def encoded_texts(tokenizer, rendered: RenderedBlock) -> EncodedBlock:
    """Every use of the tokenizer's encoder for a block but a few checks: the whole conversations' and the cuts'
    tails' ids in one call (the ids `apply_chat_template` gives: the same tokenizer call, no special tokens added)."""
    tail_texts = list(dict.fromkeys(tail.text for tail in rendered.tails if tail is not None))
    encoded = encode_texts(tokenizer, rendered.fulls + tail_texts) if rendered.fulls else []
    full_ids = encoded[: len(rendered.fulls)]
    return EncodedBlock(rendered, full_ids, dict(zip(tail_texts, encoded[len(full_ids) :])))


def loss_starts(tokenizer, encoded: EncodedBlock) -> tuple[list[list[int]], list[int], dict[int, list[int]]]:
    """Per conversation: its ids and where its loss mask starts (a conversation with one assistant turn: where its
    prompt's ids end); and the whole loss masks of those with earlier assistant turns, by index. The cuts' numbers
    of ids come from `chat.prompt_lengths` (checked: ValueError where the template is not prefix-consistent)."""
    rendered, full_ids = encoded.rendered, encoded.full_ids
    lengths = prompt_lengths(
        tokenizer, rendered.cuts, [full_ids[row] for row in rendered.cut_rows], rendered.tails, encoded.tail_ids
    )
    n = rendered.n_starts
    starts = [0] * len(full_ids)
    for row, length in zip(rendered.cut_rows[:n], lengths[:n]):
        starts[row] = length
    masks: dict[int, list[int]] = {}
    if len(lengths) > n:  # conversations with earlier assistant turns: a span of ones per turn
        turn_starts: dict[int, list[int]] = {}
        turn_ends: dict[int, list[int]] = {}
        for row, length in zip(rendered.cut_rows[:n], lengths[:n]):
            turn_starts.setdefault(row, []).append(length)
        for row, length in zip(rendered.cut_rows[n:], lengths[n:]):
            turn_ends.setdefault(row, []).append(length)
        for row, ends in turn_ends.items():
            mask = [0] * len(full_ids[row])
            for start, end in zip(turn_starts[row], [*ends, len(full_ids[row])]):
                mask[start:end] = [1] * (end - start)
            masks[row] = mask
    return full_ids, starts, masks


def metas(part: pd.DataFrame) -> list:
    """The rows' meta (JSON text; None for tables without the column)."""
    return part["meta"].tolist() if "meta" in part else [None] * len(part)


def block_columns(frame: pd.DataFrame, start: int) -> list[list]:
    """The prompts, completions and metas of the block of rows from `start`, as lists. Made a block at a time:
    the three columns of 1M rows as Python strings would hold ~0.5 GB for the whole job."""
    part = frame.iloc[start : start + BATCH]
    return [part["prompt"].tolist(), part["completion"].tolist(), metas(part)]


def token_tensor(
    ids: list[list[int]], starts: list[int], max_length: int, pad_id: int, masks: dict[int, list[int]] | None = None
) -> np.ndarray:
    """int32 [N, max_length, 3]: input ids (right-padded with pad_id), attention mask, loss mask (1 from a row's
    start on, or the row's own mask where `masks` has one). Filled for all rows at once: row by row was the larger
    part of convert's Python time after rendering."""
    lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
    columns = np.arange(max_length)
    inside = columns < lengths[:, None]
    tokens = np.zeros((len(ids), max_length, 3), dtype=np.int32)
    tokens[:, :, 0] = right_padded(ids, inside, pad_id, np.int32)
    tokens[:, :, 1] = inside
    tokens[:, :, 2] = inside & (columns >= np.asarray(starts, dtype=np.int64)[:, None])
    for row, mask in (masks or {}).items():
        tokens[row, : len(mask), 2] = mask
    return tokens


_WORKER: dict[str, Any] = {}  # a worker process's tokenizer and settings (set by _start_worker)


def _start_worker(model_dir: str, system_prompt: str | None, max_length: int, tokenizer=None) -> None:
    tokenizer = tokenizer or load_tokenizer(model_dir)
    _WORKER.update(tokenizer=tokenizer, system_prompt=system_prompt, max_length=max_length)


def shipped_tokenizer(tokenizer):
    """The job's tokenizer when a worker process can take it pickled, else None (the worker loads it from the model
    directory). One of transformers' own classes unpickles in a fraction of a millisecond without importing torch;
    loading it again costs a worker ~2 s, most of it torch's import. A model's own code (trust_remote_code) may not
    be importable in a worker, so those load."""
    return tokenizer if type(tokenizer).__module__.startswith("transformers.") else None


# A block goes through three steps: `_rendered_block` (Python: the conversations and their texts), `_encoded_block`
# (the tokenizer's encoder, whose Rust code lets go of the GIL and runs on every core) and `_finished_block` (Python:
# loss masks and the token tensor). Each runs where the block is tokenized: a worker process, or the job's own.
@gc_paused()  # lists of ids and masks for thousands of rows (sftdpo.bulk)
def _rendered_block(block: tuple[list[str], list[str], list]) -> tuple[list[dict], tuple]:
    """A block's (prompts, completions, metas) -> its conversations and their rendered texts."""
    conversations = [
        chat_messages(p, c, context=demo_context(meta, _WORKER["system_prompt"])) for p, c, meta in zip(*block)
    ]
    return conversations, rendered_texts(_WORKER["tokenizer"], conversations)


def _encoded_block(rendered: tuple[list[dict], tuple]) -> tuple[list[dict], tuple]:
    """-> the conversations and their ids (`encoded_texts`)."""
    conversations, texts = rendered
    return conversations, encoded_texts(_WORKER["tokenizer"], texts)


@gc_paused()
def _finished_block(encoded: tuple[list[dict], tuple]) -> tuple[list[dict], np.ndarray, np.ndarray]:
    """-> the conversations, every row's token count and the token tensor of the rows that fit max_length."""
    conversations, encoding = encoded
    ids, starts, masks = loss_starts(_WORKER["tokenizer"], encoding)
    n_tokens = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
    kept = np.flatnonzero(n_tokens <= _WORKER["max_length"]).tolist()
    tensor = token_tensor(
        [ids[i] for i in kept],
        [starts[i] for i in kept],
        _WORKER["max_length"],
        _WORKER["tokenizer"].pad_token_id,
        {row: masks[i] for row, i in enumerate(kept) if i in masks},
    )
    return conversations, n_tokens, tensor


def _tokenize_block(block: tuple[list[str], list[str], list]) -> tuple[list[dict], np.ndarray, np.ndarray]:
    """A block's three steps, one after the other (in a worker process)."""
    return _finished_block(_encoded_block(_rendered_block(block)))


def pipelined_blocks(blocks: Iterable) -> Iterator[tuple]:
    """`_tokenize_block` of every block, in order, in this process, its steps overlapped: a thread encodes block i
    while this one finishes block i-1, hands it on (the caller writes it) and renders block i+1. The encoder's time
    is most of a block's, and the Python steps would otherwise leave the second core idle while they run."""
    with ThreadPoolExecutor(1, thread_name_prefix="convert-encoder") as encoder:
        previous = None
        for block in blocks:
            current = encoder.submit(_encoded_block, _rendered_block(block))  # starts when the previous one is done
            if previous:
                yield _finished_block(previous.result())
            previous = current
        if previous:
            yield _finished_block(previous.result())


def tokenized_blocks(blocks: Iterable, n_blocks: int, workers: int, worker_args: tuple, tokenizer) -> Iterator[tuple]:
    """`_tokenize_block` of every block, in order: by `workers` processes side by side when there are enough blocks
    to pay for their start-up (`bulk.ordered_map`), else in this process (`pipelined_blocks`); a block's result does
    not depend on where it ran. `tokenizer`: the job's own, for the blocks it tokenizes itself, and handed to the
    workers when it can be (`shipped_tokenizer`)."""
    if workers <= 1 or n_blocks < MIN_BLOCKS_FOR_WORKERS:
        _start_worker(*worker_args, tokenizer)
        return pipelined_blocks(blocks)
    log.info("convert: %d blocks tokenized by %d worker processes", n_blocks, workers)
    return ordered_map(_tokenize_block, blocks, workers=workers, initializer=_start_worker,
                       initargs=(*worker_args, shipped_tokenizer(tokenizer)))  # fmt: skip


class ConvertGateError(RuntimeError):
    """convert.max_length leaves too many rows out; the message gives the numbers per difficulty."""


def check_gates(
    total: Counter, n_rows: int, overlength: list[dict[str, Any]], max_length: int, gates: dict[str, Any]
) -> list[str]:
    """Messages for every failed gate of convert (empty when all pass); `total`: the validated rows by difficulty
    (as text), `n_rows` of them."""
    dropped = Counter(str(o["difficulty"]) for o in overlength)
    by_level = ", ".join(f"{level!r}: {dropped[level]}/{n}" for level, n in sorted(total.items()))
    longest = max((o["n_tokens"] for o in overlength), default=0)
    hint = f"raise convert.max_length (the longest row has {longest} tokens) and sft.train.max_length with it"
    failed = []
    limit = gates.get("max_dropped_fraction", 1.0)
    if n_rows and len(overlength) / n_rows > limit:
        failed.append(
            f"gate max_dropped_fraction: {len(overlength)}/{n_rows} rows "
            f"({len(overlength) / n_rows:.1%}) are longer than convert.max_length={max_length} tokens "
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


@gc_paused()  # the chat rows of up to millions of conversations (sftdpo.bulk)
def convert_shard(
    *,
    validated_path: str,
    model_dir: str,
    shard: int,
    n_shards: int,
    chat_path: str,
    tokens_path: str,
    summary_path: str,
    max_length: int,
    system_prompt: str | None = None,
    workers: int = 1,
) -> dict[str, Any]:
    """Convert shard `shard` of `n_shards` of the validated rows (`shard_rows`): its chat rows (`token_row` counts
    from 0 in the shard), its token tensor, and a summary `merge_shards` adds up. A shard's rows do not depend on
    the others', so shards run side by side, on one machine or many.
    `workers`: processes that template and tokenize blocks side by side (the outputs are the same for any number)."""
    rows = shard_rows(pq.ParquetFile(validated_path).metadata.num_rows, shard, n_shards)
    frame = read_parquet_rows(validated_path, rows)  # its row groups only (validate writes groups of 65,536 rows)
    tokenizer = load_tokenizer(model_dir)
    digest = tokenizer_hash(tokenizer)
    summary: dict[str, Any] = {
        "rows": [rows.start, rows.stop],
        "n_input_rows": len(frame),
        "input_by_difficulty": _counts(frame["difficulty"]),
        "n_rows": 0,
        "kept_by_difficulty": Counter(),
        "total_tokens": 0,
        "longest": 0,
        "multi_turn_rows": 0,
        "overlength": [],
        "tokenizer_hash": digest,
        "rendering": rendering(tokenizer),
    }
    starts = range(0, len(frame), BATCH)
    blocks = (block_columns(frame, start) for start in starts)
    # Blocks of rows from start to end: the token tensor and the chat rows go to temporary files as they are
    # made (memory stays flat at 1M rows).
    with atomic_path(tokens_path) as tokens_tmp, atomic_path(chat_path) as chat_tmp:
        writer = TokenWriter(str(tokens_tmp), tokenizer_hash=digest, max_length=max_length)
        chat_writer = None
        kept_ids: list[str] = []
        bar = tqdm(total=len(frame), desc=f"convert shard {shard}", mininterval=2)
        results = tokenized_blocks(blocks, len(starts), workers, (model_dir, system_prompt, max_length), tokenizer)
        for start, (conversations, n_tokens, tensor) in zip(starts, results):
            part = frame.iloc[start : start + BATCH]
            fits = n_tokens <= max_length
            summary["overlength"] += [
                {"id": part["id"].iat[i], "difficulty": part["difficulty"].iat[i], "n_tokens": int(n_tokens[i])}
                for i in np.flatnonzero(~fits)
            ]
            kept = np.flatnonzero(fits)
            rows = part[CARRIED_COLUMNS].iloc[kept].reset_index(drop=True)
            prompts = [conversations[i]["prompt"] for i in kept]
            completions = [conversations[i]["completion"] for i in kept]
            chat = {
                **{name: rows[name] for name in CARRIED_COLUMNS},
                "prompt": prompts,
                "completion": completions,
                "messages": [prompt + completion for prompt, completion in zip(prompts, completions)],
                "n_tokens": n_tokens[kept],
                "token_row": np.arange(len(kept_ids), len(kept_ids) + len(kept), dtype=np.int64),
            }
            writer.append(tensor)
            if len(kept):  # an empty block has no column types to give the file's schema
                table = chat_table(chat, chat_writer.schema if chat_writer else None)
                chat_writer = chat_writer or pq.ParquetWriter(chat_tmp, table.schema)
                chat_writer.write_table(table)
            kept_ids += rows["id"].tolist()
            summary["kept_by_difficulty"].update(rows["difficulty"].astype(str).value_counts(dropna=False).to_dict())
            summary["total_tokens"] += int(chat["n_tokens"].sum())
            summary["longest"] = max([summary["longest"], *chat["n_tokens"].tolist()])
            # conversations with earlier exchanges before the final user message (two messages at least)
            summary["multi_turn_rows"] += sum(
                sum(m["role"] == "user" for m in prompt) > 1 for prompt in prompts if len(prompt) > 1
            )
            bar.update(len(part))
        bar.close()
        writer.close(kept_ids)
        if chat_writer:
            chat_writer.close()
        else:  # no row of this shard fits (or it has none): an empty table, which merge_shards skips
            pq.write_table(pa.table({"id": pa.array([], pa.string())}), chat_tmp)
    summary["n_rows"] = len(kept_ids)
    summary["kept_by_difficulty"] = dict(sorted(summary["kept_by_difficulty"].items()))
    write_json(summary, summary_path)
    return summary


# The validated rows' columns chat.parquet carries, before the conversations and token counts.
CARRIED_COLUMNS = ["id", "task", "difficulty", "expert", "answer"]


def chat_table(columns: dict[str, Any], schema: pa.Schema | None = None) -> pa.Table:
    """A block of chat.parquet's rows from its columns (pandas Series, lists, arrays). The first block goes
    through pandas, whose schema (its metadata included) becomes the file's (`schema` None); later ones are built
    as that schema from their columns: the same table in a third of the time (pandas infers the nested messages'
    types for every block: ~2 µs a row against ~0.7)."""
    if schema is None:
        return pa.Table.from_pandas(pd.DataFrame(columns), preserve_index=False)
    return pa.Table.from_arrays([pa.array(columns[field.name], type=field.type) for field in schema], schema=schema)


def shard_rows(n_rows: int, shard: int, n_shards: int) -> range:
    """The validated rows of convert shard `shard` of `n_shards`: consecutive, as even as can be."""
    if not 0 <= shard < n_shards:
        raise ValueError(f"convert shard {shard} is not one of {n_shards} shards")
    return range(shard * n_rows // n_shards, (shard + 1) * n_rows // n_shards)


def _counts(values: pd.Series) -> dict[str, int]:
    return dict(sorted(Counter(values.astype(str)).items()))


TOKEN_COPY_ROWS = 65_536  # rows of a shard's token tensor merge_shards copies at a time


def merge_shards(
    *,
    validated_path: str,
    shards: list[dict[str, str]],
    chat_path: str,
    tokens_path: str,
    report_path: str,
    max_length: int,
    gates: dict[str, Any] | None = None,
    system_prompt: str | None = None,
) -> dict[str, Any]:
    """chat.parquet, tokens.h5 and convert.json from the shards' (`chat`, `tokens`, `summary` paths, in row
    order): the shards' rows one after another, `token_row` counted over all of them. The gates (`convert.gates`)
    apply to the totals; a failed gate raises before anything is written. No tokenizer is loaded."""
    summaries = [read_json(shard["summary"]) for shard in shards]
    overlength = [o for s in summaries for o in s["overlength"]]
    totals = sum((Counter(s["input_by_difficulty"]) for s in summaries), Counter())
    n_input = sum(s["n_input_rows"] for s in summaries)
    failed = check_gates(totals, n_input, overlength, max_length, gates or {})
    if failed:
        raise ConvertGateError(f"convert of {validated_path} failed:\n  " + "\n  ".join(failed))
    n_rows = sum(s["n_rows"] for s in summaries)
    if not n_rows:
        raise ValueError(f"{validated_path}: no row fits convert.max_length={max_length} tokens")
    if len(shards) == 1:  # its files are the result (token_row from 0, the same attributes): copied, not rewritten
        for source, target in ((shards[0]["tokens"], tokens_path), (shards[0]["chat"], chat_path)):
            with atomic_path(target) as tmp:
                shutil.copyfile(source, tmp)
    else:
        _concatenate(shards, summaries, chat_path, tokens_path, max_length)
    kept_by_difficulty = sum((Counter(s["kept_by_difficulty"]) for s in summaries), Counter())
    report = {
        "n_rows": n_rows,
        "max_length": max_length,
        "tokens_shape": [n_rows, max_length, 3],
        "n_tokens": {
            "mean": sum(s["total_tokens"] for s in summaries) / n_rows,
            "max": max(s["longest"] for s in summaries),
        },
        "overlength": overlength,
        "dropped_fraction": len(overlength) / max(n_input, 1),
        "kept_by_difficulty": dict(sorted(kept_by_difficulty.items())),
        "gates": gates or {},
        "tokenizer_hash": summaries[0]["tokenizer_hash"],
        # What sft, rollouts, dpo and evaluate check their model's tokenizer against (modeling.check_rendering).
        "rendering": summaries[0]["rendering"],
        "system_prompt": system_prompt,
        "multi_turn_rows": sum(s["multi_turn_rows"] for s in summaries),
    }
    if overlength:
        log.warning(
            "%d rows exceed convert.max_length=%d and were left out: %s", len(overlength), max_length, overlength[:5]
        )
    write_json(report, report_path)
    return report


def _concatenate(
    shards: list[dict[str, str]], summaries: list[dict[str, Any]], chat_path: str, tokens_path: str, max_length: int
) -> None:
    """The shards' chat rows and token tensors one after another, `token_row` shifted by the rows before."""
    import h5py

    with atomic_path(tokens_path) as tokens_tmp, atomic_path(chat_path) as chat_tmp:
        writer = TokenWriter(str(tokens_tmp), tokenizer_hash=summaries[0]["tokenizer_hash"], max_length=max_length)
        chat_writer = None
        ids: list[str] = []
        for shard, summary in zip(shards, summaries):
            if not summary["n_rows"]:
                continue
            chat = pq.ParquetFile(shard["chat"])
            chat_writer = chat_writer or pq.ParquetWriter(chat_tmp, chat.schema_arrow)
            for group in range(chat.num_row_groups):
                table = chat.read_row_group(group)
                column = table.schema.get_field_index("token_row")
                token_row = pc.add(table["token_row"], pa.scalar(len(ids), pa.int64()))
                chat_writer.write_table(table.set_column(column, "token_row", token_row))
            with h5py.File(shard["tokens"], "r") as h5:
                tokens = h5["tokens"]
                for start in range(0, len(tokens), TOKEN_COPY_ROWS):
                    writer.append(tokens[start : start + TOKEN_COPY_ROWS])
                ids += [v.decode() for v in h5["ids"][()]]
        writer.close(ids)
        chat_writer.close()


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
    workers: int = 1,
    shards: int = 1,
) -> dict[str, Any]:
    """The whole conversion in this process: `convert_shard` of each of `shards` shards, one after another, into a
    temporary directory beside `chat_path`, then `merge_shards` (what rules convert_shard and convert do as jobs).
    `system_prompt` (convert.system_prompt) opens every conversation that has no system message of its own."""
    out = Path(chat_path).parent
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out, prefix=".convert-shards-") as tmp:
        paths = [{name: f"{tmp}/{i}.{name}.{ext}" for name, ext in SHARD_FILES.items()} for i in range(shards)]
        for i, shard in enumerate(paths):
            convert_shard(validated_path=validated_path, model_dir=model_dir, shard=i, n_shards=shards,
                          chat_path=shard["chat"], tokens_path=shard["tokens"], summary_path=shard["summary"],
                          max_length=max_length, system_prompt=system_prompt, workers=workers)  # fmt: skip
        return merge_shards(validated_path=validated_path, shards=paths, chat_path=chat_path, tokens_path=tokens_path,
                            report_path=report_path, max_length=max_length, gates=gates,
                            system_prompt=system_prompt)  # fmt: skip


SHARD_FILES = {"chat": "parquet", "tokens": "h5", "summary": "json"}  # a convert shard's outputs
