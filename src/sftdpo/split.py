"""Stratified, seeded, leakage-free train/val/test split.

Rows are grouped by normalised prompt and a group is assigned whole, so a prompt never lands in two
splits. Within each stratum (the config's keys, e.g. difficulty x task x expert) groups are ordered by
a seeded hash (independent of input row order) and cut by the fractions with largest remainders.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from sftdpo.chat import normalise_prompt
from sftdpo.io import write_arrow, write_json

__all__ = ["SPLITS", "allocate", "assign_splits", "normalise_prompt", "split"]

SPLITS = ("train", "val", "test")


def allocate(n: int, fractions: dict[str, float]) -> dict[str, int]:
    """Integer counts summing to n, by largest remainder (ties in split order)."""
    raw = {name: n * fractions[name] for name in SPLITS}
    counts = {name: int(raw[name]) for name in SPLITS}
    leftover = n - sum(counts.values())
    for name in sorted(SPLITS, key=lambda s: (-(raw[s] - counts[s]), SPLITS.index(s)))[:leftover]:
        counts[name] += 1
    return counts


def assign_splits(frame: pd.DataFrame, *, strata: list[str], fractions: dict[str, float], seed: int) -> pd.Series:
    total = sum(fractions[s] for s in SPLITS)
    if abs(total - 1.0) > 1e-6:
        raise ValueError(f"split.fractions must sum to 1, got {fractions}")
    missing = [k for k in strata if k not in frame.columns]
    if missing:
        raise ValueError(f"split.strata names unknown column(s) {missing}; columns: {list(frame.columns)}")
    # One entry per prompt group (vectorised: 1M rows in seconds), the stratum read from its first row.
    group_of_row, keys = pd.factorize(frame["prompt"].map(normalise_prompt).to_numpy())
    _, first_rows = np.unique(group_of_row, return_index=True)
    groups = pd.DataFrame({k: frame[k].iloc[first_rows].astype(str).to_numpy() for k in strata})
    stratum = groups.groupby(strata, sort=False).ngroup().to_numpy() if strata else np.zeros(len(keys), dtype=int)
    # A group's place in its stratum's seeded order (by the sha256 of seed and prompt), and the stratum's cut
    # points (largest remainders). The digests sort as four big-endian 64-bit words: the order of their hex text.
    digests = b"".join(hashlib.sha256(f"{seed}:{key}".encode()).digest() for key in keys)
    words = np.frombuffer(digests, dtype=">u8").reshape(-1, 4)
    order = np.lexsort((words[:, 3], words[:, 2], words[:, 1], words[:, 0], stratum))
    first_of_stratum = np.searchsorted(stratum[order], stratum[order], side="left")
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order)) - first_of_stratum
    counts = [[allocate(int(n), fractions)[s] for s in SPLITS] for n in np.bincount(stratum)]
    cuts = np.array(counts, dtype=int).reshape(-1, len(SPLITS)).cumsum(axis=1)
    label = np.select([rank < cuts[stratum, 0], rank < cuts[stratum, 1]], ["train", "val"], "test")
    return pd.Series(label[group_of_row].astype(object), index=frame.index)


def prompt_texts(prompts: pa.ChunkedArray) -> list[str]:
    """Each row's prompt as one string: the messages' contents joined by a space (what normalise_prompt joins)."""
    array = prompts.combine_chunks()
    if not pa.types.is_list(array.type):
        return array.to_pylist()
    contents = pa.ListArray.from_arrays(array.offsets, array.values.field("content"))
    return pc.binary_join(contents, " ").to_pylist()


def split(
    *,
    chat_path: str,
    out_paths: dict[str, str],
    report_path: str,
    strata: list[str],
    fractions: dict[str, float],
    seed: int,
) -> dict[str, Any]:
    # Arrow, not pandas, for the table: the nested message columns stay columnar (1M rows in about 1 GB less).
    table = pq.read_table(chat_path)
    frame = table.select([k for k in dict.fromkeys(["id", *strata]) if k in table.column_names]).to_pandas()
    frame["prompt"] = prompt_texts(table.column("prompt"))
    frame["split"] = assign_splits(frame, strata=strata, fractions=fractions, seed=seed).values
    report: dict[str, Any] = {"seed": seed, "strata": strata, "fractions": fractions, "counts": {}, "by_stratum": {}}
    empty = [name for name in SPLITS if fractions[name] > 0 and not (frame["split"] == name).any()]
    if empty:
        raise ValueError(
            f"{chat_path}: {len(frame)} rows give no {' and no '.join(empty)} rows with split.fractions "
            f"{fractions} (strata {strata}: {frame.groupby(strata).ngroups} groups); raise the number of rows "
            "(task.n_problems) or use fewer strata"
        )
    for name in SPLITS:
        part = table.take(np.flatnonzero(frame["split"].to_numpy() == name)).sort_by("id")
        write_arrow(part, out_paths[name])
        report["counts"][name] = part.num_rows
    for stratum, part in frame.groupby(strata, sort=True):
        label = "/".join(str(v) for v in (stratum if isinstance(stratum, tuple) else (stratum,)))
        report["by_stratum"][label] = {name: int((part["split"] == name).sum()) for name in SPLITS}
    write_json(report, report_path)
    return report
