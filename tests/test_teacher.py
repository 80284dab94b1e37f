"""The teacher expert against a real HTTP server on 127.0.0.1 that speaks OpenAI chat completions.

The server computes the arithmetic prompts' answers (wrong on purpose when the answer is a multiple
of 7, so the verifier has failures to count) and can be told to answer a prompt's next requests with
an HTTP error (ERRORS: 400/401/404/422/429/5xx, with bodies shaped as real servers send them), a slow
reply (client timeout), malformed JSON or a reply without choices. tests/test_teacher_server.py runs
the teacher against a real server (`transformers serve`).
"""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from sftdpo.collect import collect_shard, progress_key
from sftdpo.io import read_json
from sftdpo.tasks import get_task
from sftdpo.teacher import (
    DEFAULT_SYSTEM_PROMPT,
    RateLimiter,
    TeacherClient,
    TeacherError,
    backoff_delay,
    server_reason,
)

SECRET = "sk-test-0123456789abcdef-SECRET"
EXPR = re.compile(r"What is ([0-9+\-*]+)\?")


def solve(prompt: str) -> tuple[str, int]:
    """The arithmetic task's worked solution of a prompt, and its value."""
    tokens = re.findall(r"\d+|[+\-*]", EXPR.search(prompt).group(1))
    value, lines = int(tokens[0]), []
    for op, b in zip(tokens[1::2], tokens[2::2]):
        result = {"+": value + int(b), "-": value - int(b), "*": value * int(b)}[op]
        lines.append(f"{value}{op}{b}={result}")
        value = result
    return "\n".join(lines), value


def wrong(value: int) -> bool:
    return value % 7 == 0


# Error replies by fault mode: (status, body). Bodies in the shapes real servers send, "{auth}" replaced by the
# request's Authorization header (a server echoing the key).
ERRORS = {
    "400": (400, '{"error": {"message": "Invalid value for max_tokens: -1", "type": "invalid_request_error"}}'),
    "401": (401, '{"error": {"message": "injected 401: Incorrect API key provided: {auth}", "type": "auth"}}'),
    "404": (404, '{"detail": "Not Found"}'),  # FastAPI
    "422": (422, '{"detail": [{"loc": ["body", "top_k"], "msg": "Extra inputs are not permitted"}]}'),  # pydantic
    "429": (429, '{"error": "rate limit: 2 requests/s"}'),  # a bare error string (llama.cpp, gateways)
    "500": (500, '{"object": "error", "message": "The model crashed", "type": "InternalServerError", "code": 500}'),
    "502": (502, ""),  # no body at all
    "503": (503, "upstream connect error or disconnect/reset before headers"),  # plain text from a proxy
}


class FakeOpenAI:
    """A threaded chat-completions server; `script[prompt]` lists fault modes for its next requests."""

    def __init__(self, delay: float = 0.0, slow_seconds: float = 1.0):
        self.delay, self.slow_seconds = delay, slow_seconds
        self.script: dict[str, list[str]] = {}
        self.always: str | None = None
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        self.inflight = self.max_inflight = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output quiet
                pass

            def do_POST(self):
                try:
                    server.handle(self)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout): nothing to answer

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()

    def per_prompt(self) -> Counter:
        return Counter(r["prompt"] for r in self.requests)

    def handle(self, h: BaseHTTPRequestHandler) -> None:
        body = json.loads(h.rfile.read(int(h.headers["Content-Length"])))
        prompt = body["messages"][-1]["content"]
        with self.lock:
            queue = self.script.get(prompt)
            mode = self.always or (queue.pop(0) if queue else "ok")
            # Each reply gets its own id, as OpenAI's do; mode "no_id" sends none.
            reply_id = None if mode == "no_id" else f"chatcmpl-fake{len(self.requests)}"
            self.requests.append(
                {
                    "prompt": prompt,
                    "mode": mode,
                    "time": time.monotonic(),
                    "body": body,
                    "auth": h.headers.get("Authorization"),
                    "path": h.path,
                    "reply_id": reply_id,
                }
            )
            self.inflight += 1
            self.max_inflight = max(self.max_inflight, self.inflight)
        try:
            if self.delay:
                time.sleep(self.delay)
            if mode in ERRORS:
                status, body = ERRORS[mode]
                headers = {"Retry-After": "0"} if mode == "429" else {}
                if not body.startswith("{"):
                    headers["Content-Type"] = "text/plain"
                body = body.replace("{auth}", h.headers.get("Authorization", ""))
                return self.send(h, status, body.encode(), headers)
            if mode == "slow":
                time.sleep(self.slow_seconds)
            if mode == "malformed":
                return self.send(h, 200, b'{"id": "chatcmpl-1", "choices": [{"message": ')
            if mode == "empty":
                return self.send(
                    h,
                    200,
                    json.dumps(
                        {"id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": "fake", "choices": []}
                    ).encode(),
                )
            steps, value = solve(prompt)
            answer = value + 1 if wrong(value) else value
            text = f"{steps}\n#### {answer}"
            usage = {
                "prompt_tokens": len(prompt.split()),
                "completion_tokens": len(text.split()),
                "total_tokens": len(prompt.split()) + len(text.split()),
            }
            reply = {
                **({"id": reply_id} if reply_id else {}),
                "object": "chat.completion",
                "created": 0,
                "model": body["model"],
                "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": text}}],
                "usage": usage,
            }
            self.send(h, 200, json.dumps(reply).encode())
        finally:
            with self.lock:
                self.inflight -= 1

    @staticmethod
    def send(h, status: int, data: bytes, headers: dict | None = None) -> None:
        h.send_response(status)
        headers = {"Content-Type": "application/json", **(headers or {})}
        h.send_header("Content-Length", str(len(data)))
        for k, v in headers.items():
            h.send_header(k, v)
        h.end_headers()
        h.wfile.write(data)


@pytest.fixture
def key_env(monkeypatch):
    monkeypatch.setenv("SFTDPO_TEST_KEY", SECRET)
    return "SFTDPO_TEST_KEY"


def options(server, key_env, **extra):
    return {
        "base_url": server.base_url,
        "model": "fake-teacher",
        "api_key_env": key_env,
        "workers": 4,
        "timeout": 0.5,
        "max_retries": 3,
        "backoff_base": 0.01,
        "backoff_max": 0.05,
        **extra,
    }


def collect(tmp_path, opts, *, shard=0, n_shards=1, n=40, tag="run", flush_every=5):
    return collect_shard(
        task="arithmetic",
        task_options={},
        n_problems=n,
        expert="teacher",
        expert_options=opts,
        seed=0,
        shard=shard,
        n_shards=n_shards,
        work_dir=str(tmp_path / tag / "work"),
        out_path=str(tmp_path / tag / f"{shard}.parquet"),
        summary_path=str(tmp_path / tag / f"{shard}.json"),
        flush_every=flush_every,
    )


def progress_file(run_dir, shard=0):
    """The shard's progress file: <run_dir>/work/<key of the shard's arguments>/<shard>.jsonl, if written yet."""
    return next((run_dir / "work").glob(f"*/{shard}.jsonl"), None)


def test_faults_are_retried_and_no_id_is_lost_or_duplicated(tmp_path, key_env, caplog):
    problems = get_task("arithmetic").problems(40, seed=0)
    faults = {
        problems[0].prompt: ["429", "429"],
        problems[1].prompt: ["500"],
        problems[2].prompt: ["slow"],
        problems[3].prompt: ["malformed"],
        problems[5].prompt: ["empty", "503"],
    }
    expected_retries = {"429": 2, "500": 1, "timeout": 1, "malformed": 2, "503": 1}
    caplog.set_level("DEBUG")
    with FakeOpenAI() as server:
        server.script = {k: list(v) for k, v in faults.items()}
        frames = [collect(tmp_path, options(server, key_env), shard=s, n_shards=2) for s in range(2)]
    ids = [i for f in frames for i in f["id"]]
    assert len(ids) == len(set(ids)) == 40 and set(ids) == {p.id for p in problems}
    # Every prompt was answered once, plus exactly one extra request per injected fault.
    per_prompt = server.per_prompt()
    for p in problems:
        assert per_prompt[p.prompt] == 1 + len(faults.get(p.prompt, []))
    assert len(server.requests) == 40 + sum(expected_retries.values())
    assert {r["auth"] for r in server.requests} == {f"Bearer {SECRET}"}
    assert {r["path"] for r in server.requests} == {"/v1/chat/completions"}
    assert {r["body"]["messages"][0]["content"] for r in server.requests} == {DEFAULT_SYSTEM_PROMPT}
    summaries = [read_json(tmp_path / "run" / f"{s}.json") for s in range(2)]
    retries = Counter()
    for s in summaries:
        retries.update(s["teacher"]["this_run"]["retries_by_reason"])
    assert dict(retries) == expected_retries
    # Rows: the verifier's verdict, the answers and lineage in meta.
    rows = {r.id: r for f in frames for r in f.itertuples()}
    by_id = {p.id: p for p in problems}
    for row_id, row in rows.items():
        _, value = solve(by_id[row_id].prompt)
        assert row.correct == (not wrong(value))
        assert row.completion.endswith(f"#### {value + 1 if wrong(value) else value}")
        meta = json.loads(row.meta)
        assert meta["attempts"] == 1 + len(faults.get(by_id[row_id].prompt, []))
        assert meta["usage"]["completion_tokens"] == len(row.completion.split())
        assert meta["teacher"]["model"] == "fake-teacher" and meta["teacher"]["base_url"] == server.base_url
        assert meta["teacher"]["sampling"] == {"temperature": 0.0, "top_p": 1.0, "max_tokens": 512}
        assert meta["teacher"]["system_prompt"] == DEFAULT_SYSTEM_PROMPT  # what was sent, in every row
        assert meta["latency_s"] > 0 and meta["finish_reason"] == "stop"
    assert rows[problems[2].id] is not None and json.loads(rows[problems[2].id].meta)["elapsed_s"] >= 0.5
    n_wrong = sum(wrong(solve(p.prompt)[1]) for p in problems)
    assert 0 < n_wrong < 40
    assert sum(s["n_incorrect"] for s in summaries) == n_wrong
    assert sum(s["teacher"]["usage"]["total_tokens"] for s in summaries) == sum(
        json.loads(r.meta)["usage"]["total_tokens"] for r in rows.values()
    )
    # The key was sent but never written anywhere.
    files = [path for path in (tmp_path / "run").rglob("*") if path.is_file()]
    assert any(path.name == "params.json" for path in files)  # the progress's key, for people
    for path in files:
        assert SECRET.encode() not in path.read_bytes(), path
    assert SECRET not in caplog.text
    assert "retrying" in caplog.text and server.base_url in caplog.text


def test_each_row_records_the_id_of_the_reply_it_came_from(tmp_path, key_env):
    """meta.request_id is the id of the server's reply that answered the row (a retried problem: the last
    request's), None when the server sends no id."""
    problems = get_task("arithmetic").problems(12, seed=0)
    with FakeOpenAI() as server:
        server.script = {problems[0].prompt: ["no_id"], problems[1].prompt: ["500"]}
        frame = collect(tmp_path, options(server, key_env), n=12)
    answered_by = {r["prompt"]: r["reply_id"] for r in server.requests if r["mode"] in ("ok", "no_id")}
    prompts = {p.id: p.prompt for p in problems}
    request_ids = {row.id: json.loads(row.meta)["request_id"] for row in frame.itertuples()}
    assert request_ids == {row_id: answered_by[prompt] for row_id, prompt in prompts.items()}
    assert request_ids[problems[0].id] is None and request_ids[problems[1].id].startswith("chatcmpl-")
    assert len({v for v in request_ids.values() if v}) == 11  # one reply each


def test_keep_failures_false_counts_but_does_not_write_failures(tmp_path, key_env):
    problems = get_task("arithmetic").problems(30, seed=0)
    with FakeOpenAI() as server:
        frame = collect(tmp_path, options(server, key_env, keep_failures=False), n=30)
        # A rerun asks nothing: the failures are in the progress file too.
        server.requests.clear()
        again = collect(tmp_path, options(server, key_env, keep_failures=False), n=30)
    assert server.requests == [] and again.equals(frame)
    expected_wrong = sorted(p.id for p in problems if wrong(solve(p.prompt)[1]))
    summary = read_json(tmp_path / "run" / "0.json")
    assert frame["correct"].all() and len(frame) == 30 - len(expected_wrong)
    assert summary["dropped_ids"] == expected_wrong and summary["n_dropped_incorrect"] == len(expected_wrong)
    assert summary["n_written"] == len(frame) and summary["incorrect_by_reason"] == {
        "wrong_answer": len(expected_wrong)
    }
    rates = summary["success_by_difficulty"]
    assert sum(v["n"] for v in rates.values()) == 30
    for level, v in rates.items():
        at_level = [p for p in problems if p.difficulty == level]
        assert v["n"] == len(at_level)
        assert v["correct"] == sum(not wrong(solve(p.prompt)[1]) for p in at_level)


def test_kill_and_resume_keeps_written_rows_and_asks_only_for_the_rest(tmp_path, key_env):
    n, workers = 40, 2
    with FakeOpenAI(delay=0.1) as server:
        opts = options(server, key_env, workers=workers)
        code = (
            "import sys, json; from sftdpo.collect import collect_shard; "
            f"collect_shard(task='arithmetic', task_options={{}}, n_problems={n}, expert='teacher', "
            f"expert_options=json.loads(sys.argv[1]), seed=0, shard=0, n_shards=1, "
            f"work_dir={str(tmp_path / 'run' / 'work')!r}, "
            f"out_path={str(tmp_path / 'run' / '0.parquet')!r}, flush_every=1)"
        )
        proc = subprocess.Popen(
            [sys.executable, "-c", code, json.dumps(opts)],
            env={**os.environ},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            progress = progress_file(tmp_path / "run")
            if progress and len(progress.read_text().splitlines()) >= 10:
                break
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kept = [json.loads(line) for line in progress.read_text().splitlines()]
        assert 10 <= len(kept) < n and not (tmp_path / "run" / "0.parquet").exists()
        before = server.per_prompt()
        frame = collect(tmp_path, opts, n=n, flush_every=1)
    summary = read_json(tmp_path / "run" / "0.json")
    assert summary["resumed"] == len(kept)
    assert len(frame) == n and frame["id"].is_unique
    after = server.per_prompt()
    kept_prompts = {r["prompt"] for r in kept}
    for row in frame.itertuples():
        if row.prompt in kept_prompts:  # written before the kill: kept as is, not asked again
            assert after[row.prompt] == before[row.prompt] == 1
            assert row.completion == next(r["completion"] for r in kept if r["prompt"] == row.prompt)
        else:  # asked once by the rerun, plus once more if it was in flight when the process died
            assert after[row.prompt] - before[row.prompt] == 1
    in_flight_at_kill = sum(before.values()) - len(kept)
    assert 0 <= in_flight_at_kill <= workers
    assert sum(after.values()) == n + in_flight_at_kill


def test_unreachable_endpoint_names_the_base_url(tmp_path, key_env):
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    base_url = f"http://127.0.0.1:{port}/v1"
    started = time.monotonic()
    opts = {
        "base_url": base_url,
        "model": "m",
        "api_key_env": key_env,
        "max_retries": 2,
        "backoff_base": 0.01,
        "timeout": 2,
    }
    with pytest.raises(TeacherError) as err:
        collect(tmp_path, opts, n=6)
    message = str(err.value)
    assert base_url in message and "unreachable" in message and "3 attempts" in message
    assert "Connection refused" in message and "is the server running" in message
    assert "arithmetic-" in message and SECRET not in message
    assert time.monotonic() - started < 20


def test_rejected_request_stops_at_once_with_a_key_hint(tmp_path, key_env):
    with FakeOpenAI() as server:
        server.always = "401"
        with pytest.raises(TeacherError, match=r"rejected the request .*HTTP 401.*check the key in \$SFTDPO_TEST_KEY"):
            collect(tmp_path, options(server, key_env, workers=1), n=5)
    assert len(server.requests) == 1


@pytest.mark.parametrize(
    "mode, reason, hint",
    [
        ("400", "HTTP 400 BadRequestError, the server said: Invalid value for max_tokens: -1", "collect.teacher.model"),
        ("401", "HTTP 401 AuthenticationError, the server said: injected 401: Incorrect API key provided: Bearer ***",
         "check the key in $SFTDPO_TEST_KEY"),
        ("404", "HTTP 404 NotFoundError, the server said: Not Found", "collect.teacher.base_url ends in"),
        ("422", "HTTP 422 UnprocessableEntityError, the server said: body.top_k: Extra inputs are not permitted",
         "remove it from collect.teacher.extra_body"),
        ("429", "HTTP 429 RateLimitError, the server said: rate limit: 2 requests/s", None),
        ("500", "HTTP 500 InternalServerError, the server said: The model crashed", None),
        ("502", "HTTP 502 InternalServerError, Error code: 502 (the reply gave no reason)", None),
        ("503", "HTTP 503 InternalServerError, the server said: upstream connect error or disconnect/reset before "
         "headers", None),
    ],
)  # fmt: skip
def test_errors_carry_the_servers_reason(tmp_path, key_env, caplog, mode, reason, hint):
    """Every teacher error says what the server said (retried errors: in each retry's log line and the final
    error), with the API key masked if the server echoes it."""
    problem = get_task("arithmetic").problems(1, seed=0)[0]
    caplog.set_level("WARNING")
    with FakeOpenAI() as server:
        server.always = mode
        with pytest.raises(TeacherError) as err:
            collect(tmp_path, options(server, key_env, workers=1, max_retries=1), n=1)
    message = str(err.value)
    assert message.startswith(f"teacher {server.base_url} (model 'fake-teacher') ")
    assert f"for problem {problem.id}: " in message and reason in message
    if hint is None:  # retried: out of retries, and the retry's log line has the reason too
        assert len(server.requests) == 2 and "kept failing" in message and "2 attempts, last error: " in message
        assert reason in caplog.text and "retrying" in caplog.text
    else:  # refused: stops at once with what to check
        assert len(server.requests) == 1 and "rejected the request" in message and hint in message.split(reason)[1]
    assert SECRET not in message and SECRET not in caplog.text


def test_server_reason_shapes_and_length():
    assert server_reason({"message": "a"}) == "a"
    assert server_reason({"detail": {"message": "nested"}}) == "nested"
    assert server_reason({"detail": [{"loc": ["body", "n"], "msg": "too big"}, "other"]}) == "body.n: too big; other"
    assert server_reason({"code": 7}) == '{"code": 7}'
    assert server_reason("<html>\n  <h1>Bad   Gateway</h1>\n</html>") == "<html> <h1>Bad Gateway</h1> </html>"
    assert server_reason(None) is None and server_reason("") is None
    long = server_reason("x" * 5000)
    assert long == "x" * 300 + "..."


def test_out_of_retries_stops_the_shard_and_keeps_answered_rows(tmp_path, key_env):
    problems = get_task("arithmetic").problems(12, seed=0)
    with FakeOpenAI() as server:
        server.script = {problems[6].prompt: ["500"] * 10}
        with pytest.raises(TeacherError, match=rf"kept failing for problem {problems[6].id}: 3 attempts"):
            collect(tmp_path, options(server, key_env, workers=1, max_retries=2), n=12, flush_every=100)
        done = [json.loads(line)["id"] for line in progress_file(tmp_path / "run").read_text().splitlines()]
        assert done == [p.id for p in problems[:6]]  # answered before the failure: saved, not lost
        server.script = {}
        frame = collect(tmp_path, options(server, key_env, workers=1), n=12)
    assert list(frame["id"]) == [p.id for p in problems]
    assert server.per_prompt()[problems[0].prompt] == 1


def test_missing_key_names_the_variable(monkeypatch):
    monkeypatch.delenv("SFTDPO_NO_SUCH_KEY", raising=False)
    with pytest.raises(TeacherError, match="SFTDPO_NO_SUCH_KEY is not set"):
        TeacherClient(base_url="http://127.0.0.1:1/v1", model="m", api_key_env="SFTDPO_NO_SUCH_KEY")


def test_concurrency_and_rate_limit(tmp_path, key_env):
    with FakeOpenAI(delay=0.2) as server:
        collect(tmp_path, options(server, key_env, workers=4), n=12, tag="concurrent")
        assert server.max_inflight == 4
    with FakeOpenAI() as server:
        collect(tmp_path, options(server, key_env, workers=4, rate_limit=20), n=16, tag="limited")
        times = sorted(r["time"] for r in server.requests)
    assert len(times) == 16 and times[-1] - times[0] >= 15 / 20 * 0.9


def test_backoff_and_limiter_units():
    import random

    rng = random.Random(0)
    for attempt, full in [(1, 1.0), (2, 2.0), (3, 4.0), (6, 10.0)]:
        delays = [backoff_delay(attempt, 1.0, 10.0, rng=rng) for _ in range(200)]
        assert full / 2 <= min(delays) and max(delays) <= full and len(set(delays)) > 100  # jittered
    assert backoff_delay(1, 0.1, 5.0, retry_after=3.0, rng=rng) == 3.0
    assert backoff_delay(1, 0.1, 5.0, retry_after=60.0, rng=rng) == 5.0
    limiter, start = RateLimiter(50), time.monotonic()
    for _ in range(11):
        limiter.acquire()
    assert time.monotonic() - start >= 10 / 50 * 0.95
    with pytest.raises(ValueError, match="rate_limit"):
        RateLimiter(0)


def test_progress_key_ignores_code_and_transport_for_a_teacher():
    base = {
        "code": "a",
        "task": "arithmetic",
        "expert": "teacher",
        "expert_options": {"model": "m", "base_url": "u", "workers": 4, "rate_limit": 2},
    }
    assert progress_key(base) == progress_key(
        {**base, "code": "b", "expert_options": {**base["expert_options"], "workers": 16}}
    )
    assert progress_key(base) != progress_key({**base, "expert_options": {**base["expert_options"], "model": "n"}})
    program = {**base, "expert": "program"}
    assert progress_key(program) != progress_key({**program, "code": "b"})
