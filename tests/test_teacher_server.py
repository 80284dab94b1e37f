"""The teacher against a real OpenAI-compatible server: `transformers serve` (CPU), started as a subprocess on a
free port of 127.0.0.1 with the tiny scratch model the tests build (tests/test_teacher.py has the fault server for
what a real server will not do on demand).

The server answers greedily (temperature 0) with a repetition penalty, passed in transformers serve's own
`generation_config` request field: an untrained model's answers then differ by prompt (without it every answer
is the same run of newlines). The answers are nonsense to the verifier; what is checked is the transport: rows,
token usage, a kill and restart of the server mid-run, and the server's reasons in the errors.
"""

import json
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import TINY, scratch_base_model, snakemake
from test_teacher import collect  # collect_shard of the teacher, its test defaults

from sftdpo.chat import prompt_ids
from sftdpo.io import read_json
from sftdpo.modeling import load_tokenizer
from sftdpo.tasks import get_task
from sftdpo.teacher import TeacherClient, TeacherError

pytestmark = pytest.mark.e2e  # a server start costs ~15-30 s on 2 busy cores

TRANSFORMERS = str(Path(sys.executable).with_name("transformers"))
N_PROBLEMS = 60
MAX_TOKENS = 12
GENERATION_CONFIG = json.dumps({"repetition_penalty": 3.0})


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """`transformers serve <model_dir>` on 127.0.0.1:<port>; `start` waits until /health answers, `kill` is SIGKILL.
    Both lives append to one log file."""

    def __init__(self, model_dir: str, log_path: Path):
        self.model_dir, self.log_path, self.port = model_dir, log_path, free_port()
        self.root = f"http://127.0.0.1:{self.port}"
        self.base_url = f"{self.root}/v1"
        self.proc: subprocess.Popen | None = None
        self.start_seconds: list[float] = []  # each start's seconds until /health answered

    def start(self, timeout: float = 240) -> None:
        started = time.monotonic()
        with open(self.log_path, "a") as log:
            self.proc = subprocess.Popen(
                [TRANSFORMERS, "serve", self.model_dir, "--host", "127.0.0.1", "--port", str(self.port),
                 "--device", "cpu", "--log-level", "info"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )  # fmt: skip
        while time.monotonic() - started < timeout:
            if self.proc.poll() is not None:
                raise AssertionError(f"transformers serve exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.root}/health", timeout=2) as reply:
                    if reply.status == 200:
                        self.start_seconds.append(round(time.monotonic() - started, 1))
                        return
            except OSError:
                time.sleep(0.25)
        self.kill()
        raise AssertionError(f"transformers serve did not answer /health within {timeout} s:\n{self.log_tail()}")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def log_tail(self) -> str:
        return self.log_path.read_text()[-4000:]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("served")
    task = get_task("arithmetic")
    model_dir = scratch_base_model(root / "model", task, task.problems(200, seed=0))
    server = Server(model_dir, root / "serve.log")
    server.start()
    yield server
    server.kill()


def teacher_options(server: Server, **changes) -> dict:
    """collect.teacher for the served scratch model (no key, no system prompt: as for the pipeline's own models)."""
    return {
        "base_url": server.base_url,
        "model": server.model_dir,  # transformers serve answers only to the name it was started with
        "api_key_env": None,
        "system_prompt": None,
        "temperature": 0.0,
        "max_tokens": MAX_TOKENS,
        "extra_body": {"generation_config": GENERATION_CONFIG},
        **changes,
    }


def progress_rows(work: Path) -> list[dict]:
    """The answers in the collect shards' progress files (work/collect/<key>/<shard>.jsonl)."""
    paths = sorted(work.glob("collect/*/*.jsonl"))
    return [json.loads(line) for path in paths for line in path.read_text().splitlines()]


def teacher_config(path: Path, teacher: dict, shards: int) -> Path:
    """A config overlay (on tests/config/tiny.yaml) that collects with the teacher; returns its path."""
    overlay = {
        "task": {"n_problems": N_PROBLEMS},
        "collect": {"expert": "teacher", "shards": shards, "flush_every": 1, "teacher": teacher},
    }
    path.write_text(yaml.safe_dump(overlay))
    return path


def test_collect_through_snakemake_survives_a_server_restart(server, tmp_path):
    """Two collect shards through the snakemake CLI; the server is killed after 10 answers and started again.
    Every problem is answered once (no row lost, none twice), the usage is the server's token count, and the rows
    are those of an uninterrupted run."""
    problems = get_task("arithmetic").problems(N_PROBLEMS, seed=0)
    options = teacher_options(server, workers=2, timeout=30, max_retries=30, backoff_base=0.5, backoff_max=5)
    config = teacher_config(tmp_path / "teacher.yaml", options, shards=2)
    result = {}

    def run_snakemake():
        target = "results/demos/demos.parquet"
        result["proc"] = snakemake(target, "-c2", "--configfile", TINY, config, cwd=tmp_path, check=False, timeout=900)

    run = threading.Thread(target=run_snakemake)
    started = time.monotonic()
    run.start()
    while len(progress_rows(tmp_path / "work")) < 10 and run.is_alive():
        time.sleep(0.05)
    server.kill()
    answered_before_kill = len(progress_rows(tmp_path / "work"))
    server.start()
    run.join()
    seconds = time.monotonic() - started
    proc = result["proc"]
    assert proc.returncode == 0, proc.stderr[-6000:]
    assert 10 <= answered_before_kill < N_PROBLEMS, answered_before_kill

    # Rows: every problem once, on disk (progress) and in the merged table.
    frame = pd.read_parquet(tmp_path / "results/demos/demos.parquet")
    assert sorted(frame["id"]) == sorted(p.id for p in problems) and frame["id"].is_unique
    progress_ids = [row["id"] for row in progress_rows(tmp_path / "work")]
    assert sorted(progress_ids) == sorted(frame["id"])

    # Usage is the server's count of the templated prompt's tokens and of the tokens it generated.
    tokenizer = load_tokenizer(server.model_dir)
    metas = [json.loads(m) for m in frame["meta"]]
    for row, meta in zip(frame.itertuples(), metas):
        n_prompt = len(prompt_ids(tokenizer, [{"role": "user", "content": row.prompt}]))
        usage = meta["usage"]
        assert (usage["prompt_tokens"], usage["completion_tokens"]) == (n_prompt, MAX_TOKENS)
        assert usage["total_tokens"] == n_prompt + MAX_TOKENS
        assert meta["finish_reason"] == "length" and meta["served_by"].startswith(server.model_dir)
        assert meta["teacher"]["model"] == server.model_dir and meta["teacher"]["system_prompt"] is None
    assert frame["completion"].nunique() > 5  # the answers depend on the prompt
    # Each row names the server's reply it came from (transformers serve: one id a request).
    request_ids = [meta["request_id"] for meta in metas]
    assert all(isinstance(i, str) and i for i in request_ids) and len(set(request_ids)) == len(request_ids)

    # Nothing asked twice: each shard's requests are its rows' attempts, and the extra attempts are its retries.
    summaries = [read_json(tmp_path / f"results/demos/shards/{s}.json")["teacher"] for s in range(2)]
    assert sum(s["rows"] for s in summaries) == N_PROBLEMS
    for s in summaries:
        assert s["this_run"]["requests"] == s["attempts"] == s["rows"] + s["this_run"]["retries"]
    retries = sum(s["this_run"]["retries"] for s in summaries)
    assert retries >= 1 and {r for s in summaries for r in s["this_run"]["retries_by_reason"]} == {"connection"}
    assert sum(s["rows_retried"] for s in summaries) >= 1
    assert sum(s["usage"]["total_tokens"] for s in summaries) == sum(m["usage"]["total_tokens"] for m in metas)
    logs = "".join((tmp_path / f"logs/collect/{s}.log").read_text() for s in range(2))
    assert "retrying" in logs and "APIConnectionError" in logs and server.base_url in logs

    # The same rows as an uninterrupted run against the restarted server.
    uninterrupted = {**options, "workers": 4}
    shards = [collect(tmp_path, uninterrupted, shard=s, n_shards=2, n=N_PROBLEMS, tag="again") for s in range(2)]
    again = pd.concat(shards).sort_values("id", ignore_index=True)
    columns = ["id", "prompt", "completion", "answer", "correct"]
    pd.testing.assert_frame_equal(frame[columns].reset_index(drop=True), again[columns])
    assert [m["usage"] for m in metas] == [json.loads(m)["usage"] for m in again["meta"]]
    print(
        f"\nreal server: {N_PROBLEMS} rows, {sum(s['usage']['total_tokens'] for s in summaries)} tokens "
        f"({sum(s['usage']['prompt_tokens'] for s in summaries)} prompt), {answered_before_kill} answered before "
        f"the kill, {retries} retries, server starts (s) {server.start_seconds}, snakemake run {seconds:.1f} s"
    )


@pytest.mark.parametrize(
    "change, status, reason",
    [
        ({"model": "teacher-model"}, 400, "Server is pinned to '{model}'; requested 'teacher-model'."),
        ({"extra_body": {"top_k": 20}}, 422, "Unexpected fields in the request: {{'top_k'}}"),
        ({"base_url": "{root}/v2"}, 404, "Not Found"),
    ],
)
def test_errors_carry_the_real_servers_reason(server, change, status, reason):
    """What transformers serve says about a wrong model name, a field it does not know, a wrong path."""
    change = {k: v.format(root=server.root) if isinstance(v, str) else v for k, v in change.items()}
    client = TeacherClient(**teacher_options(server, **change))
    with pytest.raises(TeacherError) as err:
        client.ask("What is 1+2?", label="problem p1")
    message = str(err.value)
    assert f"rejected the request for problem p1: HTTP {status} " in message
    assert f"the server said: {reason.format(model=server.model_dir)}" in message
    assert client.requests == 1  # refused: not retried


def test_a_wrong_model_name_stops_the_snakemake_run_with_the_servers_reason(server, tmp_path):
    config = teacher_config(tmp_path / "teacher.yaml", teacher_options(server, model="teacher-model"), shards=1)
    proc = snakemake("results/demos/demos.parquet", "-c1", "--configfile", TINY, config, cwd=tmp_path, check=False)
    assert proc.returncode != 0 and "Error in rule collect" in proc.stdout + proc.stderr
    log = (tmp_path / "logs/collect/0.log").read_text()
    assert f"the server said: Server is pinned to '{server.model_dir}'; requested 'teacher-model'." in log
    assert "check that collect.teacher.model is exactly the name the server serves" in log
