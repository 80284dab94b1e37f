"""Curriculum SFT: which difficulty mix the train sampler draws from, and when that mix changes.

Two pure pieces, no torch, so they are unit-tested on scripted numbers and saved as JSON with each checkpoint:

- `decide`: the decision rule. Every `interval` steps the SFT callback measures greedy exact-match accuracy on
  a fixed val subset and calls it. With no advance on trial, a check advances to the next stage's mix when the
  accuracy reaches `min_performance_for_advance` (not during a cooldown, not past the last stage). The next check
  judges that advance: it is kept when accuracy fell by at most `rollback_threshold` and is still at least the
  minimum; otherwise the previous stage's mix comes back, advances wait `rollback_cooldown` steps and the interval
  between checks is multiplied by `rollback_factor`. Once the last stage is kept there is nothing left to decide
  and checks stop (no more evaluation cost).
- `DifficultySampler`: the train order. Sample position p draws a difficulty bucket with the weights in force at p
  and the next item of that bucket's seeded shuffle (cycled, reshuffled each pass). A weight change is recorded
  with the position it starts at, so the whole order is a function of (seed, schedule): a resumed run that
  restores the schedule replays exactly the order an uninterrupted run drew.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections import Counter
from typing import Any

import numpy as np

# What a check did: an advance put on trial, the trial kept or rolled back, or no change (and why).
ACTIONS = ("advance", "keep", "rollback", "hold", "cooldown")


@dataclasses.dataclass(frozen=True)
class Curriculum:
    """`sft.curriculum` of the config (see config/schema.yaml for each key)."""

    stages: list[dict[str, Any]]  # {name, difficulty_mix: {difficulty: weight}}
    advancement_interval: int
    min_performance_for_advance: float
    rollback_threshold: float
    rollback_cooldown: int
    rollback_factor: float
    eval_items: int

    @classmethod
    def from_config(cls, block: dict[str, Any]) -> Curriculum:
        fields = {f.name for f in dataclasses.fields(cls)}
        stages = [
            {"name": stage["name"], "difficulty_mix": {str(k): float(v) for k, v in stage["difficulty_mix"].items()}}
            for stage in block["stages"]
        ]
        return cls(**{**{k: v for k, v in block.items() if k in fields}, "stages": stages})

    def weights(self, stage: int) -> dict[str, float]:
        """The stage's mix normalised to sum 1 (difficulties it leaves out: weight 0)."""
        mix = self.stages[stage]["difficulty_mix"]
        total = sum(mix.values())
        return {d: w / total for d, w in mix.items()}

    def check_difficulties(self, available: list[str]) -> None:
        """Every difficulty a mix names must be in the train split, and every stage must draw from one."""
        for stage in self.stages:
            unknown = sorted(set(stage["difficulty_mix"]) - set(available))
            if unknown:
                raise ValueError(
                    f"sft.curriculum: stage {stage['name']!r} mixes difficulties {unknown} that the train split does "
                    f"not have (its difficulties: {sorted(available)})"
                )
            if sum(stage["difficulty_mix"].values()) <= 0:
                raise ValueError(f"sft.curriculum: stage {stage['name']!r} gives every difficulty weight 0")


@dataclasses.dataclass
class CurriculumState:
    """Where the curriculum stands; JSON as it is (saved in every checkpoint's trainer_state.json)."""

    stage: int
    weights: dict[str, float]
    interval: int
    next_check: int | None  # the step of the next check; None once the last stage is kept
    cooldown_until: int = 0  # no advance before this step
    trial: dict[str, Any] | None = None  # the advance being judged: {step, from_stage, performance}
    events: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    @classmethod
    def start(cls, curriculum: Curriculum) -> CurriculumState:
        last = len(curriculum.stages) == 1
        interval = curriculum.advancement_interval
        return cls(stage=0, weights=curriculum.weights(0), interval=interval, next_check=None if last else interval)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CurriculumState:
        return cls(**data)


def due(state: CurriculumState, step: int) -> bool:
    return state.next_check is not None and step >= state.next_check


def decide(
    curriculum: Curriculum, state: CurriculumState, step: int, performance: float, **measured: Any
) -> CurriculumState:
    """The state after a check at `step` that measured `performance` (accuracy in [0, 1]); `measured` (accuracy
    per difficulty, evaluation seconds, ...) is recorded in the check's event. The input state is not changed."""
    new = copy.deepcopy(state)
    names = [s["name"] for s in curriculum.stages]
    last = len(names) - 1
    event: dict[str, Any] = {"step": step, "from_stage": names[state.stage], "performance": performance}
    if state.trial is not None:
        before = state.trial["performance"]
        delta = performance - before
        kept = -delta <= curriculum.rollback_threshold and performance >= curriculum.min_performance_for_advance
        if kept:
            action, reason = "keep", "final stage" if new.stage == last else "within the allowed drop"
        else:
            action = "rollback"
            reason = "below the minimum" if performance < curriculum.min_performance_for_advance else "drop too large"
            new.stage = state.trial["from_stage"]
            new.cooldown_until = step + curriculum.rollback_cooldown
            new.interval = math.ceil(state.interval * curriculum.rollback_factor)
        new.trial = None
        event.update(performance_before=before, performance_after=performance, delta=delta)
    elif step < state.cooldown_until:
        action, reason = "cooldown", f"no advance before step {state.cooldown_until}"
    elif performance < curriculum.min_performance_for_advance:
        action, reason = "hold", "below the minimum"
    else:
        action, reason = "advance", "at least the minimum"
        new.trial = {"step": step, "from_stage": state.stage, "performance": performance}
        new.stage = state.stage + 1
    if action in ("advance", "hold", "cooldown"):
        event.update(performance_before=performance, performance_after=None, delta=None)
    new.weights = curriculum.weights(new.stage)
    done = new.stage == last and new.trial is None
    new.next_check = None if done else step + new.interval
    event.update(action=action, reason=reason, stage=names[new.stage], weights=new.weights, **measured)
    new.events.append(event)
    return new


def summary(curriculum: Curriculum, state: CurriculumState) -> dict[str, Any]:
    """The figures the report shows: final stage and weights, advances, rollbacks, evaluation cost."""
    actions = Counter(e["action"] for e in state.events)
    return {
        "final_stage": curriculum.stages[state.stage]["name"],
        "final_weights": state.weights,
        "advances": actions["advance"],
        "rollbacks": actions["rollback"],
        "checks": len(state.events),
        "eval_seconds": sum(e.get("eval_seconds", 0.0) for e in state.events),
    }


def stage_spans(events: list[dict[str, Any]], first_stage: str, last_step: int) -> list[tuple[int, int, str]]:
    """(from step, to step, stage name) of each stretch of training on one mix, for the loss plot."""
    spans, start, stage = [], 0, first_stage
    for event in events:
        if event["stage"] != stage:
            spans.append((start, event["step"], stage))
            start, stage = event["step"], event["stage"]
    spans.append((start, last_step, stage))
    return spans


class DifficultySampler:
    """Dataset indices for the Trainer, drawn by difficulty with changeable weights (a torch Sampler by duck
    typing: `__iter__` and `__len__`). `buckets`: difficulty -> dataset indices; `num_samples`: every sample the
    run will draw (max_steps x batch x accumulation), so the Trainer sees one epoch."""

    def __init__(self, buckets: dict[str, list[int]], weights: dict[str, float], *, seed: int, num_samples: int):
        self.names = sorted(buckets)
        self.buckets = [np.asarray(buckets[name]) for name in self.names]
        self.seed = seed
        self.num_samples = num_samples
        self.changes: list[tuple[int, dict[str, float]]] = [(0, dict(weights))]
        self.cursor = 0  # the next position to draw

    def __len__(self) -> int:
        return self.num_samples

    def set_weights(self, weights: dict[str, float]) -> None:
        """New weights from the next position not drawn yet (batches already fetched keep theirs)."""
        if self.changes[-1][0] == self.cursor:
            self.changes.pop()
        self.changes.append((self.cursor, dict(weights)))

    def state(self) -> dict[str, Any]:
        return {"changes": [[position, weights] for position, weights in self.changes]}

    def restore(self, saved: dict[str, Any]) -> None:
        self.changes = [(int(position), dict(weights)) for position, weights in saved["changes"]]

    def _cumulative(self, weights: dict[str, float]) -> np.ndarray:
        c = np.cumsum([weights.get(name, 0.0) for name in self.names])
        return c / c[-1]  # ends at exactly 1.0

    def draws(self, n: int | None = None):
        """(position, difficulty, dataset index) of the first `n` positions (all by default). Changes made while
        this runs (the Trainer iterating) apply from their position on."""
        n = self.num_samples if n is None else n
        uniforms = np.random.default_rng([self.seed, 0]).random(self.num_samples)
        taken = [0] * len(self.names)
        orders: dict[int, tuple[int, np.ndarray]] = {}  # bucket -> (cycle, its shuffle)
        change, cumulative = -1, None
        for p in range(n):
            while change + 1 < len(self.changes) and self.changes[change + 1][0] <= p:
                change += 1
                cumulative = self._cumulative(self.changes[change][1])
            b = int(np.searchsorted(cumulative, uniforms[p], side="right"))
            cycle, offset = divmod(taken[b], len(self.buckets[b]))
            if orders.get(b, (None,))[0] != cycle:
                orders[b] = (cycle, np.random.default_rng([self.seed, 1, b, cycle]).permutation(self.buckets[b]))
            taken[b] += 1
            yield p, self.names[b], int(orders[b][1][offset])

    def __iter__(self):
        self.cursor = 0
        for p, _, index in self.draws():
            self.cursor = p + 1
            yield index

    def seen_per_difficulty(self, n: int) -> dict[str, int]:
        """Samples drawn per difficulty in the first `n` positions (what `n` trained samples were)."""
        counts = Counter(name for _, name, _ in self.draws(n))
        return {name: counts[name] for name in self.names}
