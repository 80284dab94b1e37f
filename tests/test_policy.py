"""The policy expert: samples from a tiny model directory on CPU, seeded; with `require_success` only
verified trajectories are written; success rates per difficulty in the shard summary.

A stub task makes the verdicts exact: a completion is correct when it equals the problem's answer. A
first run records what the model samples; the answers of every fourth problem are then set to that
sample, so a second run with the same seed must write exactly those problems."""

import json

import pytest

from conftest import scratch_base_model
import sftdpo.collect
from sftdpo.collect import collect_shard
from sftdpo.experts import PolicyExpert
from sftdpo.io import read_json
from sftdpo.modeling import make_base_model
from sftdpo.tasks import Problem, Verdict, get_task

N = 16


class StubTask:
    name = "stub"

    def __init__(self, answers: dict[str, str] | None = None):
        self.answers = answers or {}

    def problems(self, n, seed):
        return [
            Problem(
                id=f"stub-{i:03d}",
                prompt=f"What is {i}+{i % 3}?",
                answer=self.answers.get(f"stub-{i:03d}", "never"),
                difficulty="even" if i % 2 == 0 else "odd",
            )
            for i in range(n)
        ]

    def extract_answer(self, completion):
        return completion.strip()

    def verify(self, completion, answer):
        ok = completion.strip() == answer
        return Verdict(ok, completion.strip(), None if ok else "wrong_answer")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    task = get_task("arithmetic")
    problems = task.problems(200, seed=0)
    return scratch_base_model(
        tmp_path_factory.mktemp("policy") / "base", task, problems, hidden_size=32, intermediate_size=64
    )


def run(tmp_path, monkeypatch, model_dir, stub, tag, **options):
    monkeypatch.setattr(sftdpo.collect, "get_task", lambda name, **kw: stub)
    opts = {
        "model": model_dir,
        "attempts": 2,
        "temperature": 1.0,
        "max_new_tokens": 6,
        "batch_size": 5,
        "backend": "transformers",
        **options,
    }
    frame = collect_shard(
        task="stub",
        task_options={},
        n_problems=N,
        expert="policy",
        expert_options=opts,
        seed=3,
        shard=0,
        n_shards=1,
        work_dir=str(tmp_path / tag / "work"),
        flush_every=10,
        out_path=str(tmp_path / tag / "0.parquet"),
        summary_path=str(tmp_path / tag / "0.json"),
    )
    return frame, read_json(tmp_path / tag / "0.json")


def test_policy_keeps_only_verified_trajectories(tmp_path, monkeypatch, model_dir):
    first, summary = run(tmp_path, monkeypatch, model_dir, StubTask(), "all", require_success=False)
    assert len(first) == N and not first["correct"].any()
    assert summary["success_by_difficulty"] == {
        "even": {"n": 8, "correct": 0, "rate": 0.0},
        "odd": {"n": 8, "correct": 0, "rate": 0.0},
    }
    samples = dict(zip(first["id"], first["completion"]))
    assert len(set(samples.values())) > 1  # sampled, not one constant string
    meta = json.loads(first["meta"].iloc[0])
    assert meta["policy"] == {
        "model": model_dir,
        "seed": 3,
        "attempts": 2,
        "temperature": 1.0,
        "top_p": 1.0,
        "max_new_tokens": 6,
    }
    assert meta["sample_index"] == 0 and meta["samples_correct"] == 0 and meta["backend"] == "transformers"

    # Every fourth problem's answer is what the model sampled: the same seed must reproduce it.
    chosen = {pid: text for i, (pid, text) in enumerate(samples.items()) if i % 4 == 0}
    kept, summary = run(tmp_path, monkeypatch, model_dir, StubTask(chosen), "verified", require_success=True)
    assert sorted(kept["id"]) == sorted(chosen) and kept["correct"].all()
    assert dict(zip(kept["id"], kept["completion"])) == chosen
    assert summary["n_written"] == 4 and summary["n_dropped_incorrect"] == N - 4
    assert summary["dropped_ids"] == sorted(set(samples) - set(chosen))
    assert summary["success_by_difficulty"] == {
        "even": {"n": 8, "correct": 4, "rate": 0.5},
        "odd": {"n": 8, "correct": 0, "rate": 0.0},
    }
    assert summary["policy"]["samples"] == 2 * N and summary["policy"]["require_success"] is True
    assert summary["policy"]["samples_correct"] >= 4


def test_policy_reads_a_reference_directory_and_greedy_rules(tmp_path, model_dir):
    reference = tmp_path / "reference"
    make_base_model(
        name_or_path=model_dir,
        out_dir=str(reference),
        scratch={},
        tokenizer_texts=None,
        trust_remote_code=False,
        seed=0,
    )
    stub = StubTask()
    problems = stub.problems(6, 0)
    greedy = dict(attempts=1, temperature=0.0, max_new_tokens=5, batch_size=4, backend="transformers", seed=1)
    direct = [c for _, c, _ in PolicyExpert(stub, model=model_dir, **greedy).run(problems)]
    via_reference = [c for _, c, _ in PolicyExpert(stub, model=str(reference), **greedy).run(problems)]
    assert direct == via_reference and len(direct) == 6
    with pytest.raises(ValueError, match="greedy decoding .* gives the same sample every attempt"):
        PolicyExpert(stub, model=model_dir, attempts=3, temperature=0.0)
    with pytest.raises(ValueError, match="collect.policy.model is not set"):
        PolicyExpert(stub, model="")
