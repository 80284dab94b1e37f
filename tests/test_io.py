import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sftdpo.io import ShardProgress, atomic_path, content_digest, write_parquet
from sftdpo.tables import TokenWriter


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.txt"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []
    with atomic_path(target) as tmp:
        tmp.write_text("whole")
    assert target.read_text() == "whole" and list(tmp_path.iterdir()) == [target]


def test_atomic_path_replaces_a_directory(tmp_path):
    target = tmp_path / "model"
    target.mkdir()
    (target / "old").write_text("x")
    with atomic_path(target) as tmp:
        tmp.mkdir()
        (tmp / "new").write_text("y")
    assert [p.name for p in target.iterdir()] == ["new"]


def test_shard_progress_resumes_and_drops_a_torn_line(tmp_path):
    path = tmp_path / "p.jsonl"
    progress = ShardProgress(path)
    progress.append([{"id": "a", "v": 1}, {"id": "b", "v": 2}])
    progress.close()
    with path.open("a") as fh:
        fh.write('{"id": "c", "v"')  # killed mid-write
    progress = ShardProgress(path)
    assert progress.done == {"a", "b"}
    progress.append([{"id": "b", "v": 99}, {"id": "c", "v": 3}])  # b is not written twice
    progress.close()
    assert [r["id"] for r in ShardProgress(path).rows] == ["a", "b", "c"]
    assert ShardProgress(path).rows[1]["v"] == 2


def test_content_digest_reads_content_not_bytes(tmp_path):
    frame = pd.DataFrame({"id": ["a", "b"], "n": [1, 2]})
    write_parquet(frame, tmp_path / "one.parquet")
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), tmp_path / "two.parquet", row_group_size=1)
    assert (tmp_path / "one.parquet").read_bytes() != (tmp_path / "two.parquet").read_bytes()
    assert content_digest(tmp_path / "one.parquet") == content_digest(tmp_path / "two.parquet")
    write_parquet(frame.assign(n=[1, 3]), tmp_path / "three.parquet")
    assert content_digest(tmp_path / "three.parquet") != content_digest(tmp_path / "one.parquet")
    digests = []
    for name, ids in (("a.h5", ["x", "y"]), ("b.h5", ["x", "y"]), ("c.h5", ["x", "z"])):
        writer = TokenWriter(str(tmp_path / name), tokenizer_hash="h", max_length=4)
        writer.append(np.ones((2, 4, 3), dtype=np.int32))
        writer.close(ids)
        digests.append(content_digest(tmp_path / name))
    assert digests[0] == digests[1] != digests[2]  # string ids hashed by their text
