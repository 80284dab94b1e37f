"""A teacher LLM behind any OpenAI-compatible chat-completions endpoint (`collect.expert: teacher`).

The official `openai` client talks to `base_url` (OpenAI, vLLM's server, llama.cpp, a gateway ...).
The API key is read from the environment variable named by `api_key_env` and goes nowhere else: not
into rows, summaries, logs or the progress file (only the variable's name is recorded).

- `workers` threads send requests concurrently; a shared limiter keeps them under `rate_limit`
  requests per second (every attempt counts, retries included).
- A 429, a 5xx (or 408/409), a timeout (`timeout` seconds), a connection error or a malformed reply
  (invalid JSON, no choices, no content) is retried up to `max_retries` times with exponential
  backoff and jitter (`backoff_base` * 2^(attempt-1), capped at `backoff_max`, drawn in [d/2, d];
  a 429's Retry-After is honoured up to the cap). Other HTTP errors (400, 401, 404, ...) stop at once.
- A problem that still fails stops the shard with an error naming the endpoint; the rows already
  answered are in the shard's progress file, so a rerun asks only for the rest.
- Every error and retry message carries the server's own reason from the error body (OpenAI's
  `error.message`, FastAPI's `detail`, or the text), shortened, with the API key masked.
- Each row's `meta` records the endpoint, model, sampling parameters, the system prompt, the reply's id
  (`request_id`, the server's `chatcmpl-...`; None when it sends none), token usage,
  latency and the number of attempts; the shard summary adds totals, latency percentiles and retries
  by reason.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import threading
import time
import zlib
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any, Iterator

from sftdpo.experts import Expert
from sftdpo.tasks import Problem, Task

log = logging.getLogger(__name__)

DEFAULT_SYSTEM_PROMPT = (
    "Solve the problem step by step, one step a line. "
    "End with a last line of the form '#### <answer>', the final answer as a plain number."
)
RETRY_STATUS = {408, 409, 429}
REASON_CHARS = 300  # the server's reason in an error message is cut to this length
# What to check when the server refuses a request (its own reason comes first in the message).
REJECTED_HINTS = {
    400: "check that collect.teacher.model is exactly the name the server serves (for `transformers serve`: "
    "the path it was started with) and that the server accepts every request field",
    404: "check that collect.teacher.base_url ends in the API's root (usually /v1) and that the server has "
    "collect.teacher.model",
    422: "the server refuses a request field: remove it from collect.teacher.extra_body, or set request_seed: "
    "false if it is the seed (strict servers such as `transformers serve` accept only the fields they know)",
}


class TeacherError(RuntimeError):
    """The teacher endpoint cannot answer (unreachable, rejected the request, or out of retries)."""


class _Cancelled(Exception):
    pass


class RateLimiter:
    """At most `rate` acquisitions per second across threads (evenly spaced); None means no limit."""

    def __init__(self, rate: float | None):
        if rate is not None and rate <= 0:
            raise ValueError(f"collect.teacher.rate_limit must be > 0 requests/s, got {rate}")
        self.interval = 1.0 / rate if rate else 0.0
        self._next = 0.0
        self._lock = threading.Lock()

    def acquire(self) -> None:
        if not self.interval:
            return
        with self._lock:
            now = time.monotonic()
            slot = max(now, self._next)
            self._next = slot + self.interval
        if slot > now:
            time.sleep(slot - now)


def backoff_delay(
    attempt: int, base: float, cap: float, retry_after: float | None = None, rng: random.Random | None = None
) -> float:
    """Delay before retry number `attempt` (1-based): exponential, capped, with jitter in [d/2, d]."""
    delay = min(cap, base * 2 ** (attempt - 1))
    delay = delay / 2 + (rng or random).uniform(0, delay / 2)
    if retry_after is not None:
        delay = max(delay, min(cap, retry_after))
    return delay


@dataclass
class Reply:
    text: str
    usage: dict[str, int | None]
    latency_s: float
    elapsed_s: float
    attempts: int
    finish_reason: str | None
    model: str | None
    response_id: str | None  # the server's id of its reply (OpenAI: chatcmpl-...); None when it sends none


class TeacherClient:
    """One endpoint and model; `ask` sends one prompt with retries. Thread-safe."""

    def __init__(
        self,
        *,
        base_url: str,
        model: str,
        api_key_env: str | None = "OPENAI_API_KEY",
        system_prompt: str | None = DEFAULT_SYSTEM_PROMPT,
        temperature: float = 0.0,
        top_p: float = 1.0,
        max_tokens: int | None = 512,
        request_seed: bool = True,
        extra_body: dict[str, Any] | None = None,
        timeout: float = 60.0,
        max_retries: int = 5,
        backoff_base: float = 1.0,
        backoff_max: float = 30.0,
        rate_limit: float | None = None,
    ):
        import openai

        if not base_url:
            raise ValueError(
                "collect.teacher.base_url is not set (e.g. https://api.openai.com/v1 or "
                "http://localhost:8000/v1 for a vLLM server)"
            )
        if not model:
            raise ValueError("collect.teacher.model is not set")
        if api_key_env:
            api_key = os.environ.get(api_key_env)
            if not api_key:
                raise TeacherError(
                    f"collect.teacher.api_key_env: the environment variable {api_key_env} is not set; "
                    f"export it with the key for {base_url} (any value for a server without "
                    "authentication), or set api_key_env: null"
                )
        else:
            api_key = "no-key"
        self._secret = api_key if api_key_env else None
        # Requests and headers stay out of the rule log: the client logs them at DEBUG (httpx at INFO).
        for name in ("openai", "httpx", "httpx2", "httpcore"):
            logging.getLogger(name).setLevel(logging.WARNING)
        self.openai = openai
        self.base_url, self.model, self.api_key_env = base_url, model, api_key_env
        self.system_prompt = system_prompt
        self.sampling = {"temperature": temperature, "top_p": top_p, "max_tokens": max_tokens}
        self.request_seed, self.extra_body = request_seed, dict(extra_body or {})
        self.timeout, self.max_retries = timeout, max_retries
        self.backoff_base, self.backoff_max = backoff_base, backoff_max
        self.limiter = RateLimiter(rate_limit)
        self.client = openai.OpenAI(base_url=base_url, api_key=api_key, timeout=timeout, max_retries=0)
        self.retries: Counter[str] = Counter()
        self.requests = 0
        self._lock = threading.Lock()
        self.cancelled = threading.Event()

    def lineage(self) -> dict[str, Any]:
        """What made a row (no secrets: the key's variable name only)."""
        system = self.system_prompt or ""
        return {
            "base_url": self.base_url,
            "model": self.model,
            "api_key_env": self.api_key_env,
            "sampling": {k: v for k, v in self.sampling.items() if v is not None},
            "system_prompt": self.system_prompt,
            "system_prompt_sha256": hashlib.sha256(system.encode()).hexdigest()[:16] if system else None,
            "extra_body": self.extra_body,
        }

    def _mask(self, text: str) -> str:
        """The text with the API key replaced by *** (a server may echo the key in its error reply)."""
        return text.replace(self._secret, "***") if self._secret else text

    def messages(self, prompt: str) -> list[dict[str, str]]:
        head = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        return [*head, {"role": "user", "content": prompt}]

    def _request(
        self, prompt: str, seed: int | None
    ) -> tuple[str, dict[str, int | None], str | None, str | None, str | None]:
        kwargs: dict[str, Any] = {k: v for k, v in self.sampling.items() if v is not None}
        if self.request_seed and seed is not None:
            kwargs["seed"] = seed
        if self.extra_body:
            kwargs["extra_body"] = self.extra_body
        response = self.client.chat.completions.create(model=self.model, messages=self.messages(prompt), **kwargs)
        if isinstance(response, (str, bytes)) or not getattr(response, "choices", None):
            raise ValueError("reply has no choices")
        choice = response.choices[0]
        text = getattr(getattr(choice, "message", None), "content", None)
        if not isinstance(text, str):
            raise ValueError("reply's first choice has no message content")
        usage = getattr(response, "usage", None)
        tokens = {k: getattr(usage, k, None) for k in ("prompt_tokens", "completion_tokens", "total_tokens")}
        reply_id = getattr(response, "id", None)
        return (
            text,
            tokens,
            getattr(choice, "finish_reason", None),
            getattr(response, "model", None),
            reply_id if isinstance(reply_id, str) and reply_id else None,
        )

    def _classify(self, err: Exception) -> tuple[str | None, float | None]:
        """(retry reason, Retry-After seconds) for a retryable error; (None, None) for a fatal one."""
        o = self.openai
        if isinstance(err, o.APITimeoutError):
            return "timeout", None
        if isinstance(err, o.APIConnectionError):
            return "connection", None
        if isinstance(err, o.APIStatusError):
            status = err.status_code
            if status in RETRY_STATUS or status >= 500:
                retry_after = None
                try:
                    retry_after = float(err.response.headers.get("retry-after"))
                except (TypeError, ValueError):
                    pass
                return str(status), retry_after
            return None, None
        if isinstance(err, (ValueError, o.APIResponseValidationError)):  # json.JSONDecodeError is a ValueError
            return "malformed", None
        return None, None

    def ask(self, prompt: str, *, seed: int | None = None, label: str = "") -> Reply:
        started = time.monotonic()
        rng = random.Random()
        for attempt in range(1, self.max_retries + 2):
            if self.cancelled.is_set():
                raise _Cancelled()
            self.limiter.acquire()
            with self._lock:
                self.requests += 1
            sent = time.monotonic()
            try:
                text, usage, finish, served_by, response_id = self._request(prompt, seed)
            except Exception as err:
                reason, retry_after = self._classify(err)
                detail = self._mask(_describe(err))
                if reason is None or attempt > self.max_retries:
                    self.cancelled.set()  # the other workers stop before their next request
                if reason is None:
                    status = getattr(err, "status_code", None)
                    hint = (
                        f"check the key in ${self.api_key_env}" if status in (401, 403) else REJECTED_HINTS.get(status)
                    )
                    raise TeacherError(
                        f"teacher {self.base_url} (model {self.model!r}) rejected the request for "
                        f"{label}: {detail}" + (f" ({hint})" if hint else "")
                    ) from None
                if attempt > self.max_retries:
                    what = (
                        "is unreachable"
                        if reason == "connection"
                        else "did not answer in time"
                        if reason == "timeout"
                        else "kept failing"
                    )
                    hint = {
                        "connection": "; is the server running, and is collect.teacher.base_url right?",
                        "timeout": "; raise collect.teacher.timeout or lower workers",
                    }.get(reason, "")
                    raise TeacherError(
                        f"teacher {self.base_url} (model {self.model!r}) {what} for {label}: "
                        f"{self.max_retries + 1} attempts, last error: {detail}{hint}"
                    ) from None
                with self._lock:
                    self.retries[reason] += 1
                delay = backoff_delay(attempt, self.backoff_base, self.backoff_max, retry_after, rng)
                log.warning(
                    "teacher %s: %s, attempt %d/%d failed (%s); retrying in %.2f s",
                    self.base_url,
                    label,
                    attempt,
                    self.max_retries + 1,
                    detail,
                    delay,
                )
                if self.cancelled.wait(delay):
                    raise _Cancelled() from None
                continue
            now = time.monotonic()
            return Reply(
                text=text,
                usage=usage,
                latency_s=round(now - sent, 4),
                elapsed_s=round(now - started, 4),
                attempts=attempt,
                finish_reason=finish,
                model=served_by,
                response_id=response_id,
            )
        raise AssertionError("unreachable")


def _describe(err: Exception) -> str:
    """One line about a failed request: HTTP status, error type, and the server's reason when it gave one."""
    status = getattr(err, "status_code", None)
    name = type(err).__name__
    if status:
        reason = server_reason(getattr(err, "body", None))
        said = f"the server said: {reason}" if reason else f"{err} (the reply gave no reason)"
        return f"HTTP {status} {name}, {said}"
    message = _shorten(str(err))
    cause = err.__cause__ or err.__context__
    if cause is not None and str(cause) and str(cause) not in message:
        message = _shorten(f"{message} ({type(cause).__name__}: {cause})")
    return f"{name}: {message}"


def server_reason(body: Any) -> str | None:
    """The server's explanation in an error reply's body, shortened; None when it gave none.

    `body` is what the openai client kept: the parsed JSON (with an OpenAI `{"error": {...}}` already
    unwrapped to the inner object), or the text when the reply was not JSON. Understood: OpenAI's and
    vLLM's `message`, FastAPI's `detail` (a string, or a list of validation errors), a bare `error`
    string (llama.cpp and gateways); any other JSON is shown compactly.
    """
    if body is None or body == "":
        return None
    if isinstance(body, dict):
        for field in ("message", "detail", "error"):
            value = body.get(field)
            if isinstance(value, str) and value.strip():
                return _shorten(value)
            if isinstance(value, dict):
                return server_reason(value)
            if isinstance(value, list) and value:
                return _shorten("; ".join(_validation_error(item) for item in value))
        return _shorten(json.dumps(body, sort_keys=True, default=str))
    return _shorten(str(body))


def _validation_error(item: Any) -> str:
    """One FastAPI/pydantic validation error (`{"loc": ["body", "top_k"], "msg": "..."}`) as text."""
    if isinstance(item, dict) and "msg" in item:
        where = ".".join(str(part) for part in item.get("loc", ()))
        return f"{where}: {item['msg']}" if where else str(item["msg"])
    return str(item)


def _shorten(text: str) -> str:
    text = " ".join(text.split())  # one line, whatever the server sent (HTML, tracebacks, JSON)
    return text if len(text) <= REASON_CHARS else text[:REASON_CHARS] + "..."


def problem_seed(seed: int, problem_id: str) -> int:
    """A per-problem request seed: the same answer request whatever the shard layout or resume point."""
    return zlib.crc32(f"{seed}:{problem_id}".encode()) & 0x7FFFFFFF


class TeacherExpert(Expert):
    """Answers the task's problems with a teacher LLM, `workers` requests at a time."""

    name = "teacher"

    def __init__(
        self,
        task: Task,
        *,
        base_url: str,
        model: str,
        workers: int = 4,
        keep_failures: bool = True,
        seed: int = 0,
        **client_options: Any,
    ):
        if workers < 1:
            raise ValueError(f"collect.teacher.workers must be >= 1, got {workers}")
        self.task, self.workers, self.keep_failures, self.seed = task, workers, keep_failures, seed
        self.client = TeacherClient(base_url=base_url, model=model, **client_options)

    @property
    def cache_token(self) -> str:
        """What the answers depend on besides the prompt: endpoint, model, sampling, system prompt."""
        lineage = {
            **self.client.lineage(),
            "request_seed": self.client.request_seed,
            "seed": self.seed,
        }
        lineage.pop("api_key_env")
        return hashlib.sha256(json.dumps(lineage, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def demonstrate(self, problem: Problem) -> tuple[str, dict[str, Any]]:
        return self._one(problem)

    def _one(self, problem: Problem) -> tuple[str, dict[str, Any]]:
        seed = problem_seed(self.seed, problem.id)
        reply = self.client.ask(problem.prompt, seed=seed, label=f"problem {problem.id}")
        meta = {
            "teacher": self.client.lineage(),
            "request_seed": seed if self.client.request_seed else None,
            "served_by": reply.model,
            "request_id": reply.response_id,
            "usage": reply.usage,
            "latency_s": reply.latency_s,
            "elapsed_s": reply.elapsed_s,
            "attempts": reply.attempts,
            "finish_reason": reply.finish_reason,
        }
        return reply.text.strip(), meta

    def run(self, problems: list[Problem]) -> Iterator[tuple[Problem, str, dict[str, Any]]]:
        """(problem, completion, meta) as answers arrive; on a fatal error the others are cancelled."""
        if not problems:
            return
        pool = ThreadPoolExecutor(self.workers, thread_name_prefix="teacher")
        pending: dict[Any, Problem] = {}
        queue = iter(problems)

        def submit() -> None:
            for problem in queue:
                pending[pool.submit(self._one, problem)] = problem
                if len(pending) >= 2 * self.workers:
                    return

        error: BaseException | None = None
        try:
            submit()
            while pending and error is None:
                done, _ = wait(list(pending), return_when=FIRST_COMPLETED)
                for future in done:
                    problem = pending.pop(future)
                    exc = future.exception()
                    if isinstance(exc, _Cancelled):  # stopped because another worker failed: wait for that error
                        continue
                    if exc is not None:
                        error = error or exc
                        continue
                    yield problem, *future.result()
                if error is None and not self.client.cancelled.is_set():
                    submit()
            if error is not None or self.client.cancelled.is_set():
                # Keep what is already paid for: requests in flight finish (or stop at their next retry).
                self.client.cancelled.set()
                for future, problem in list(pending.items()):
                    if future.cancel():
                        continue
                    exc = future.exception()
                    if exc is None:
                        yield problem, *future.result()
                    elif not isinstance(exc, _Cancelled):
                        error = error or exc
                raise error or TeacherError(f"teacher {self.client.base_url}: collection was cancelled")
        finally:
            self.client.cancelled.set()
            for future in pending:
                future.cancel()
            pool.shutdown(wait=True)
            self.client.cancelled.clear()

    def summary(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        metas = [json.loads(r["meta"]) if isinstance(r["meta"], str) else r["meta"] for r in rows]
        usage = Counter()
        for m in metas:
            for k, v in (m.get("usage") or {}).items():
                usage[k] += v or 0
        latencies = sorted(m["latency_s"] for m in metas if m.get("latency_s") is not None)
        attempts = [m.get("attempts", 1) for m in metas]
        return {
            "teacher": {
                **self.client.lineage(),
                "rows": len(metas),
                "usage": dict(usage),
                "latency_s": _percentiles(latencies),
                "attempts": sum(attempts),
                "rows_retried": sum(a > 1 for a in attempts),
                "this_run": {
                    "requests": self.client.requests,
                    "retries": sum(self.client.retries.values()),
                    "retries_by_reason": dict(sorted(self.client.retries.items())),
                },
            }
        }


def _percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"mean": None, "p50": None, "p95": None, "max": None}

    def pick(q: float) -> float:
        return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]

    return {"mean": round(sum(values) / len(values), 4), "p50": pick(0.5), "p95": pick(0.95), "max": values[-1]}
