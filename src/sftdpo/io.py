"""File helpers shared by every stage: atomic writes and resumable shard progress.

Every artifact is written to a temporary name beside its target and renamed into place, so a
killed job never leaves a half-written file that looks complete.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `target`; rename it onto `target` only if the block succeeds.

    Works for files and directories (an existing target directory is replaced).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    _remove(tmp)
    try:
        yield tmp
        if target.is_dir() and tmp.is_dir():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        _remove(tmp)


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def file_digest(path: str) -> str:
    """Content digest of a file or a directory's files (inputs key the checkpoint directory)."""
    digest = hashlib.sha256()
    root = Path(path)
    files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]
    for file in files:
        digest.update(str(file.relative_to(root) if root.is_dir() else file.name).encode())
        digest.update(file.read_bytes())
    return digest.hexdigest()[:16]


# Files of a model directory that are pipeline bookkeeping, not the model: the lineage sidecar itself, the
# model card (it says whether training resumed), the Trainer's pickled arguments (paths). Hidden files too
# (Snakemake's .snakemake_timestamp, temporary names).
MODEL_BOOKKEEPING = {"lineage.json", "README.md", "training_args.bin"}
# Adapters record their base model's absolute path (sftdpo.modeling.record_base): it changes when the project
# moves, so the model digest leaves it out.
MOVING_KEYS = ("base_model_name_or_path",)
# PEFT writes these sets as lists in an order that changes from run to run: compared sorted.
UNORDERED_KEYS = ("target_modules",)


def sha256_file(path: str | os.PathLike) -> str:
    """sha256 of a file's bytes, read in blocks (model weights can be GBs)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def model_digest(model_dir: str | os.PathLike) -> str:
    """sha256 over a model directory's weight, config and tokenizer files (name and content, sorted by name),
    without bookkeeping (`MODEL_BOOKKEEPING`, hidden files), without absolute paths in its JSON (`MOVING_KEYS`)
    and with PEFT's unordered lists sorted: the same model gives the same digest after a copy or move of the
    project, or when trained again."""
    root = Path(model_dir)
    if not root.is_dir():
        raise NotADirectoryError(f"{root}: not a model directory")
    digest = hashlib.sha256()
    for file in sorted(root.rglob("*")):
        name = file.relative_to(root).as_posix()
        if (
            not file.is_file()
            or name in MODEL_BOOKKEEPING
            or any(part.startswith(".") for part in file.parts[len(root.parts) :])
        ):
            continue
        if file.suffix == ".json":
            config = json.loads(file.read_text())
            if isinstance(config, dict):
                config = {k: v for k, v in config.items() if k not in MOVING_KEYS}
                config.update({k: sorted(config[k]) for k in UNORDERED_KEYS if isinstance(config.get(k), list)})
            part = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()
        else:
            part = sha256_file(file)
        digest.update(f"{name}\0{part}\n".encode())
    return digest.hexdigest()


def content_digest(path: str | os.PathLike) -> str:
    """sha256 of what a table or tokens.h5 holds, not of its bytes (parquet and HDF5 writers stamp their
    versions into the files): a table's columns, dtypes and values; an HDF5 file's attributes and arrays."""
    path = Path(path)
    digest = hashlib.sha256()
    if path.suffix == ".h5":
        import h5py

        with h5py.File(path, "r") as h5:
            digest.update(json.dumps({k: str(v) for k, v in sorted(h5.attrs.items())}).encode())
            for name in sorted(h5):
                data = h5[name][()]
                # Strings come back as bytes objects: hash their text, not the array's pointers.
                raw = json.dumps([v.decode() for v in data]).encode() if data.dtype == object else data.tobytes()
                digest.update(name.encode() + raw)
    else:
        frame = read_parquet(path)
        digest.update(json.dumps([list(frame.columns), [str(t) for t in frame.dtypes]]).encode())
        digest.update(frame.to_json(orient="split", double_precision=15, default_handler=str).encode())
    return digest.hexdigest()


def params_hash(params: dict[str, Any]) -> str:
    """Short digest of a stage's parameters: keys work directories, so stale progress is never reused."""
    return hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()[:12]


def resume_dir(work_dir: str | os.PathLike, params: dict[str, Any]) -> Path:
    """`<work_dir>/<hash of params>/`: where a resumable stage keeps its progress or checkpoints.

    Every resumable stage (collect, rollouts, sft, dpo) passes what decides its result (arguments,
    input digests, code fingerprint), so only an identical rerun resumes and any change starts afresh.
    The params are written beside the progress as params.json, for people.
    """
    path = Path(work_dir) / params_hash(params)
    path.mkdir(parents=True, exist_ok=True)
    write_json(params, path / "params.json")
    return path


def write_json(obj: Any, path: str | os.PathLike) -> None:
    write_text(json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n", path)


def write_text(text: str, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):  # numpy / jax scalars
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


# json.dumps(row, sort_keys=True, default=_json_default), one encoder for every progress row (millions of calls)
PROGRESS_JSON = json.JSONEncoder(sort_keys=True, default=_json_default)


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text())


def write_parquet(frame: pd.DataFrame, path: str | os.PathLike, *, row_group_rows: int | None = None) -> None:
    """Write a frame deterministically (no pandas index, fixed row order as given). `row_group_rows`: rows per
    row group (pyarrow's default, ~1M, when None), so that a reader of some rows reads only theirs."""
    write_arrow(pa.Table.from_pandas(frame, preserve_index=False), path, row_group_rows=row_group_rows)


def write_arrow(table: pa.Table, path: str | os.PathLike, *, row_group_rows: int | None = None) -> None:
    """Write an Arrow table to parquet atomically."""
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, row_group_size=row_group_rows)


def read_parquet(path: str | os.PathLike) -> pd.DataFrame:
    return pq.read_table(path).to_pandas()


def read_parquet_rows(path: str | os.PathLike, rows: range) -> pd.DataFrame:
    """Rows `rows.start` to `rows.stop` of a parquet file, reading only the row groups that hold them."""
    file = pq.ParquetFile(path)
    ends = np.cumsum([file.metadata.row_group(g).num_rows for g in range(file.num_row_groups)])
    starts = ends - np.diff(ends, prepend=0)
    groups = [g for g in range(file.num_row_groups) if starts[g] < rows.stop and ends[g] > rows.start]
    if not groups:
        return file.schema_arrow.empty_table().to_pandas()
    return file.read_row_groups(groups).slice(rows.start - int(starts[groups[0]]), len(rows)).to_pandas()


def concat_parquet(paths: list[str], out_path: str, sort_by: str | None = None) -> pd.DataFrame:
    """Merge shard tables into one (optionally sorted, so the result is independent of shard order)."""
    frame = pd.concat([read_parquet(p) for p in paths], ignore_index=True)
    if sort_by:
        frame = frame.sort_values(sort_by, kind="stable").reset_index(drop=True)
    write_parquet(frame, out_path)
    return frame


class ShardProgress:
    """Append-only JSONL progress for one shard, kept outside Snakemake's declared outputs.

    Rows are appended and flushed as they are produced; a rerun reads the done ids back and skips
    them, so a killed job continues where it stopped without regenerating or duplicating rows.
    A torn last line (killed mid-write) is ignored and its row is produced again.

    Every append reaches the operating system (a killed job loses nothing it appended); it is synced to disk
    at most every `SYNC_SECONDS` and at close, so a crash of the machine itself loses at most that much work:
    a sync per flush cost ~4 ms, 40% of a 1M-row program-expert collect.
    """

    SYNC_SECONDS = 1.0

    def __init__(self, path: str | os.PathLike, key: str = "id"):
        self.path = Path(path)
        self.key = key
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.rows: list[dict] = []
        if self.path.exists():
            self.rows = list(_read_complete_jsonl(self.path))
            # Rewrite without a torn tail so appends start on a clean line.
            with atomic_path(self.path) as tmp:
                tmp.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in self.rows))
        self.done = {row[key] for row in self.rows}
        self._fh = self.path.open("a")
        self._synced = time.monotonic()

    def append(self, rows: Iterable[dict]) -> None:
        for row in rows:
            if row[self.key] in self.done:
                continue
            self._fh.write(PROGRESS_JSON.encode(row) + "\n")
            self.rows.append(row)
            self.done.add(row[self.key])
        self._fh.flush()
        if time.monotonic() - self._synced >= self.SYNC_SECONDS:
            os.fsync(self._fh.fileno())
            self._synced = time.monotonic()
        # Test-only pacing, so kill -9 tests can hit a shard between two flushes (sleep(0) would still yield
        # the processor: ~1 ms a flush on a busy machine).
        delay = float(os.environ.get("SFTDPO_TEST_FLUSH_DELAY", "0"))
        if delay:
            time.sleep(delay)

    def close(self) -> None:
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()


def _read_complete_jsonl(path: Path) -> Iterator[dict]:
    with path.open() as fh:
        for line in fh:
            if not line.endswith("\n"):
                return
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                return
