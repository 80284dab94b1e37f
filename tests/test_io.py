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


def test_read_parquet_rows_reads_the_rows_of_the_groups_that_hold_them(tmp_path, monkeypatch):
    from sftdpo.io import read_parquet, read_parquet_rows

    frame = pd.DataFrame({"id": [f"r{i:03d}" for i in range(103)], "n": range(103)})
    write_parquet(frame, tmp_path / "t.parquet", row_group_rows=10)
    assert pq.ParquetFile(tmp_path / "t.parquet").num_row_groups == 11
    read_groups = []
    original = pq.ParquetFile.read_row_groups

    def read_row_groups(self, groups):
        read_groups.append(groups)
        return original(self, groups)

    monkeypatch.setattr(pq.ParquetFile, "read_row_groups", read_row_groups)
    for start, stop in [(0, 103), (0, 10), (9, 11), (25, 77), (100, 103), (40, 40)]:
        part = read_parquet_rows(tmp_path / "t.parquet", range(start, stop))
        pd.testing.assert_frame_equal(part, frame.iloc[start:stop].reset_index(drop=True), check_index_type=False)
    assert read_groups[2:4] == [[0, 1], [2, 3, 4, 5, 6, 7]]  # only the groups that hold the rows
    assert list(read_parquet(tmp_path / "t.parquet")["id"]) == list(frame["id"])
