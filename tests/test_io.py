import pytest

from sftdpo.io import ShardProgress, atomic_path


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
