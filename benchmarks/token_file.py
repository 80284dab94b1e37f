"""tokens.h5's compression: the writer's filters (`sftdpo.tables.TokenWriter`: byte shuffle, then gzip level 1)
against gzip level 4 alone (its filter before 2026-12-06), on a run's own token tensor.

    .venv/bin/python benchmarks/token_file.py path/to/results/data/tokens.h5 [--repeats 3]

Writes the tensor in convert's blocks of 4,096 rows with each setting, reads it back whole (as sft, dpo and evaluate
do), checks the arrays are equal and prints a markdown table: write and read seconds (median of `--repeats`), µs a
row, and the dataset's stored bytes.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
from sftdpo.convert import BATCH  # noqa: E402
from sftdpo.tables import TokenWriter  # noqa: E402


def write_gzip4(path: Path, tokens: np.ndarray) -> None:
    with h5py.File(path, "w") as h5:
        dataset = h5.create_dataset(
            "tokens", shape=(0, *tokens.shape[1:]), maxshape=(None, *tokens.shape[1:]), dtype=np.int32,
            chunks=(256, *tokens.shape[1:]), compression="gzip", track_times=False,
        )  # fmt: skip
        for start in range(0, len(tokens), BATCH):
            block = tokens[start : start + BATCH]
            dataset.resize(dataset.shape[0] + len(block), axis=0)
            dataset[-len(block) :] = block


def write_writer(path: Path, tokens: np.ndarray) -> None:
    writer = TokenWriter(str(path), tokenizer_hash="-", max_length=tokens.shape[1])
    for start in range(0, len(tokens), BATCH):
        writer.append(tokens[start : start + BATCH])
    writer.h5.close()  # no ids: the tensor alone is compared


def measure(write, tokens: np.ndarray, repeats: int) -> dict[str, float]:
    writes, reads = [], []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "tokens.h5"
        for _ in range(repeats):
            started = time.perf_counter()
            write(path, tokens)
            writes.append(time.perf_counter() - started)
            started = time.perf_counter()
            with h5py.File(path, "r") as h5:
                back = h5["tokens"][:]
                stored = h5["tokens"].id.get_storage_size()
            reads.append(time.perf_counter() - started)
            if not np.array_equal(back, tokens):
                raise AssertionError(f"{write.__name__}: the tensor read back differs")
    return {"write": statistics.median(writes), "read": statistics.median(reads), "bytes": stored}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("tokens", type=Path)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with h5py.File(args.tokens, "r") as h5:
        tokens = h5["tokens"][:]
    rows = len(tokens)
    print(f"{rows:,} rows × {tokens.shape[1]} × 3 int32 ({tokens.nbytes / 1e6:,.0f} MB uncompressed)\n")
    print("| filters | write s (µs a row) | read s (µs a row) | stored MB |\n|---|---|---|---|")
    for name, write in (("gzip level 4", write_gzip4), ("shuffle + gzip level 1 (TokenWriter)", write_writer)):
        m = measure(write, tokens, args.repeats)
        print(f"| {name} | {m['write']:.2f} ({m['write'] / rows * 1e6:.1f}) | {m['read']:.2f} "
              f"({m['read'] / rows * 1e6:.1f}) | {m['bytes'] / 1e6:.1f} |")  # fmt: skip


if __name__ == "__main__":
    main()
