"""Experts write demonstrations for a task's problems (`collect.expert`).

- `program`: the task's own solver. It can emulate an imperfect teacher with `error_rate`, so
  validation has real errors to catch; which rows were corrupted is recorded in
  `meta.injected_error` (lineage only: validation never reads it).
- `teacher`: an LLM behind an OpenAI-compatible endpoint (sftdpo.teacher).
- `policy`: samples from a local model directory (any directory this pipeline writes, or a Hugging
  Face id/path), `attempts` samples a problem, the first verified one kept.
- `files`: demonstrations imported from JSONL/JSON/CSV/parquet files (sftdpo.importers).

Every expert subclasses `Expert`: it has a `name` and `demonstrate(problem) -> (completion, meta)`;
it may override `run(problems)` (yielding `(problem, completion, meta)` in any order: concurrency,
batching), `shard_problems(shard, n_shards)` (its own problems instead of the task's), `keep_failures`
(False: rows the verifier rejects are counted, not written), `cache_token` (what its answers depend on
besides the prompt) and `summary(rows)` (for the shard summary).

The modules of the non-program experts are imported by name (`EXPERT_MODULES`), so the collect
rule's code fingerprint covers only the configured expert's code (rules/common.smk: collect_code).
"""

from __future__ import annotations

import importlib
import json
import random
import re
import zlib
from decimal import Decimal, InvalidOperation
from typing import Any, Iterator

from sftdpo.tasks import Problem, Task

# The sftdpo modules each expert runs, beyond sftdpo.collect (for code fingerprints).
EXPERT_MODULES: dict[str, tuple[str, ...]] = {
    "program": (),
    "teacher": ("sftdpo.teacher",),
    "policy": ("sftdpo.generation",),
    "files": ("sftdpo.importers",),
}
STEP_RESULT = re.compile(r"^(.*)=(-?\d+)$")


class Expert:
    name: str
    keep_failures: bool = True
    cache_token: str = ""

    def demonstrate(self, problem: Problem) -> tuple[str, dict[str, Any]]:
        """Return (completion, meta) for one problem."""
        raise NotImplementedError

    def run(self, problems: list[Problem]) -> Iterator[tuple[Problem, str, dict[str, Any]]]:
        """(problem, completion, meta) for each problem; one at a time unless an expert batches."""
        for problem in problems:
            completion, meta = self.demonstrate(problem)
            yield problem, completion, meta

    def shard_problems(self, shard: int, n_shards: int) -> list[Problem] | None:
        """This expert's own problems of a shard, or None: the task's problems."""
        return None

    def summary(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        """Extra entries of the shard summary."""
        return {}


class ProgramExpert(Expert):
    name = "program"

    def __init__(self, task: Task, error_rate: float = 0.0, seed: int = 0):
        if not 0.0 <= error_rate <= 1.0:
            raise ValueError(f"collect.error_rate must be in [0, 1], got {error_rate}")
        self.task, self.error_rate, self.seed = task, error_rate, seed
        self.rng = random.Random()

    def demonstrate(self, problem: Problem) -> tuple[str, dict[str, Any]]:
        completion = self.task.solve(problem)
        meta: dict[str, Any] = {"seed": self.seed, "error_rate": self.error_rate}
        if not self.error_rate:  # never corrupted: no draw needed
            return completion, meta
        # A generator seeded by the problem: the same row whatever the shard layout or resume point.
        rng = self.rng
        rng.seed(f"{self.seed}:{problem.id}")
        if rng.random() < self.error_rate:
            completion, kind = _corrupt(completion, rng)
            meta["injected_error"] = kind
        return completion, meta


def _corrupt(completion: str, rng: random.Random) -> tuple[str, str]:
    """Either a wrong final answer or a wrong intermediate result (steps still well-formed).

    A wrong intermediate result needs a first line `...=<integer>` (the arithmetic task's steps); other
    solutions (GSM8K prose) get a wrong final answer, which their verifier can see.
    """
    lines = completion.split("\n")
    try:
        value = Decimal(lines[-1].removeprefix("#### ").strip())
    except InvalidOperation:
        return completion + "\n#### ?", "wrong_answer"
    delta = rng.choice([-3, -2, -1, 1, 2, 3])
    if len(lines) > 1 and rng.random() < 0.5:
        step = STEP_RESULT.match(lines[0])
        if step:
            lines[0] = f"{step.group(1)}={int(step.group(2)) + delta}"
            return "\n".join(lines), "invalid_step"
    lines[-1] = f"#### {value + delta}"
    return "\n".join(lines), "wrong_answer"


class PolicyExpert(Expert):
    """Samples from a model directory; with `require_success` only verified trajectories are written."""

    name = "policy"

    def __init__(
        self,
        task: Task,
        *,
        model: str,
        require_success: bool = True,
        attempts: int = 1,
        temperature: float = 0.7,
        top_p: float = 1.0,
        max_new_tokens: int = 256,
        batch_size: int = 16,
        backend: str = "auto",
        seed: int = 0,
    ):
        if not model:
            raise ValueError(
                "collect.policy.model is not set: a model directory this pipeline wrote, or a Hugging Face id/path"
            )
        if attempts < 1:
            raise ValueError(f"collect.policy.attempts must be >= 1, got {attempts}")
        if temperature == 0 and attempts > 1:
            raise ValueError(
                "collect.policy: greedy decoding (temperature 0) gives the same sample every "
                f"attempt; set attempts: 1 or a temperature > 0 (got attempts: {attempts})"
            )
        if backend not in ("auto", "transformers", "vllm"):
            raise ValueError(f"collect.policy.backend: unknown backend {backend!r}; use auto, transformers or vllm")
        self.task, self.model_dir, self.keep_failures = task, model, not require_success
        self.attempts, self.temperature, self.top_p = attempts, temperature, top_p
        self.max_new_tokens, self.batch_size, self.backend, self.seed = max_new_tokens, batch_size, backend, seed

    def lineage(self) -> dict[str, Any]:
        return {
            "model": self.model_dir,
            "seed": self.seed,
            "attempts": self.attempts,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "max_new_tokens": self.max_new_tokens,
        }

    def demonstrate(self, problem: Problem) -> tuple[str, dict[str, Any]]:
        ((_, completion, meta),) = self.run([problem])
        return completion, meta

    def run(self, problems: list[Problem]) -> Iterator[tuple[Problem, str, dict[str, Any]]]:
        if not problems:
            return
        generation = importlib.import_module("sftdpo.generation")
        use_vllm = self.backend == "vllm" or (self.backend == "auto" and generation.vllm_available())
        model = tokenizer = None
        if not use_vllm:
            model, tokenizer = generation.load_for_inference(self.model_dir)
        # vLLM schedules its own batches: one call. transformers: fixed chunks, each seeded by its first id.
        size = len(problems) if use_vllm else self.batch_size
        for start in range(0, len(problems), size):
            chunk = problems[start : start + size]
            chunk_seed = (self.seed * 1_000_003 + zlib.crc32(chunk[0].id.encode())) & 0x7FFFFFFF
            prompts = [p.prompt for p in chunk]
            if use_vllm:
                outputs = generation.generate_vllm(
                    self.model_dir,
                    prompts,
                    k=self.attempts,
                    temperature=self.temperature,
                    top_p=self.top_p,
                    max_new_tokens=self.max_new_tokens,
                    seed=chunk_seed,
                )
            else:
                outputs = generation.generate(
                    model,
                    tokenizer,
                    prompts,
                    k=self.attempts,
                    temperature=self.temperature,
                    top_p=self.top_p,
                    max_new_tokens=self.max_new_tokens,
                    batch_size=len(chunk),
                    seed=chunk_seed,
                    desc=f"policy [{start}/{len(problems)}]",
                )
            for problem, samples in zip(chunk, outputs):
                verdicts = [self.task.verify(s["text"], problem.answer) for s in samples]
                pick = next((i for i, v in enumerate(verdicts) if v.correct), 0)
                meta = {
                    "policy": self.lineage(),
                    "generation_seed": chunk_seed,
                    "sample_index": pick,
                    "samples_correct": sum(v.correct for v in verdicts),
                    "n_tokens": samples[pick]["n_tokens"],
                    "backend": "vllm" if use_vllm else "transformers",
                }
                yield problem, samples[pick]["text"], meta

    def summary(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        metas = [json.loads(r["meta"]) if isinstance(r["meta"], str) else r["meta"] for r in rows]
        samples = len(metas) * self.attempts
        correct = sum(m.get("samples_correct", 0) for m in metas)
        return {
            "policy": {
                **self.lineage(),
                "require_success": not self.keep_failures,
                "samples": samples,
                "samples_correct": correct,
                "sample_success_rate": correct / samples if samples else None,
            }
        }


def get_expert(name: str, task: Task, **options: Any) -> Expert:
    if name == "program":
        return ProgramExpert(task, **options)
    if name == "policy":
        return PolicyExpert(task, **options)
    if name == "teacher":
        return importlib.import_module("sftdpo.teacher").TeacherExpert(task, **options)
    if name == "files":
        return importlib.import_module("sftdpo.importers").FilesExpert(task, **options)
    raise ValueError(f"unknown expert {name!r}; known experts: {sorted(EXPERT_MODULES)}")
