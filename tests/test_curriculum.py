"""Issue 12: the curriculum's decision rule over a scripted accuracy sequence, and the difficulty sampler."""

import json
from collections import Counter

import pytest

from sftdpo.curriculum import Curriculum, CurriculumState, DifficultySampler, decide, due, stage_spans, summary

STAGES = [
    {"name": "easy", "difficulty_mix": {"1": 1.0}},
    {"name": "mixed", "difficulty_mix": {"1": 0.4, "2": 0.4, "3": 0.2}},
    {"name": "hard", "difficulty_mix": {1: 2, 2: 3, 3: 5}},  # YAML may give int keys and weights not summing to 1
]


def curriculum(**changes):
    block = dict(stages=STAGES, advancement_interval=10, min_performance_for_advance=0.5, rollback_threshold=0.05,
                 rollback_cooldown=30, rollback_factor=2.0, eval_items=50)  # fmt: skip
    return Curriculum.from_config({**block, **changes})


def run_checks(cur, accuracies):
    """Feed one accuracy to each check as it falls due; returns the final state."""
    state = CurriculumState.start(cur)
    for accuracy in accuracies:
        assert due(state, state.next_check)
        state = decide(cur, state, state.next_check, accuracy, eval_seconds=0.5)
    return state


def test_scripted_sequence_advances_keeps_rolls_back_cools_down_and_stops_at_the_last_stage():
    cur = curriculum()
    state = run_checks(cur, [0.3, 0.6, 0.58, 0.7, 0.5, 0.9, 0.8, 0.79])
    got = [(e["step"], e["action"], e["from_stage"], e["stage"]) for e in state.events]
    assert got == [
        (10, "hold", "easy", "easy"),  # below the minimum
        (20, "advance", "easy", "mixed"),
        (30, "keep", "mixed", "mixed"),  # fell 0.02 <= 0.05
        (40, "advance", "mixed", "hard"),
        (50, "rollback", "hard", "mixed"),  # fell 0.2: back to mixed, cooldown to step 80, interval 10 -> 20
        (70, "cooldown", "mixed", "mixed"),  # the stretched interval: 50 + 20
        (90, "advance", "mixed", "hard"),
        (110, "keep", "hard", "hard"),  # fell 0.01: the last stage, kept
    ]
    rollback = state.events[4]
    assert rollback["performance_before"] == 0.7 and rollback["performance_after"] == 0.5
    assert rollback["delta"] == pytest.approx(-0.2) and rollback["reason"] == "drop too large"
    assert state.events[1]["performance_before"] == 0.6 and state.events[1]["delta"] is None
    assert state.interval == 20 and state.cooldown_until == 80
    assert state.events[-1]["reason"] == "final stage"
    assert state.next_check is None and not due(state, 10_000)  # nothing left to decide: no more evaluations
    assert state.weights == {"1": 0.2, "2": 0.3, "3": 0.5}
    assert all(e["eval_seconds"] == 0.5 for e in state.events)
    figures = summary(cur, state)
    assert figures["final_stage"] == "hard" and figures["rollbacks"] == 1 and figures["advances"] == 3
    assert figures["eval_seconds"] == pytest.approx(4.0) and figures["checks"] == 8
    assert stage_spans(state.events, "easy", 120) == [
        (0, 20, "easy"), (20, 40, "mixed"), (40, 50, "hard"), (50, 90, "mixed"), (90, 120, "hard")
    ]  # fmt: skip


def test_an_advance_that_ends_below_the_minimum_is_rolled_back_even_without_a_drop():
    cur = curriculum(min_performance_for_advance=0.6, rollback_threshold=0.5)
    state = run_checks(cur, [0.6, 0.55])
    assert [e["action"] for e in state.events] == ["advance", "rollback"]
    assert state.events[-1]["reason"] == "below the minimum" and state.stage == 0


def test_a_negative_threshold_demands_a_gain():
    state = run_checks(curriculum(min_performance_for_advance=0.0, rollback_threshold=-0.1), [0.5, 0.55])
    assert [e["action"] for e in state.events] == ["advance", "rollback"]


def test_state_round_trips_through_json_and_decide_leaves_its_input_alone():
    cur = curriculum()
    state = run_checks(cur, [0.6])
    before = json.dumps(state.to_json())
    after = decide(cur, state, 20, 0.1)
    assert json.dumps(state.to_json()) == before and after.stage == 0
    assert CurriculumState.from_json(json.loads(json.dumps(after.to_json()))) == after


def test_a_single_stage_never_checks():
    cur = curriculum(stages=STAGES[:1])
    assert CurriculumState.start(cur).next_check is None


def test_difficulties_the_train_split_lacks_are_an_error_naming_them():
    with pytest.raises(ValueError, match=r"stage 'mixed' mixes difficulties \['3'\]"):
        curriculum().check_difficulties(["1", "2"])


BUCKETS = {"1": list(range(0, 300)), "2": list(range(300, 500)), "3": list(range(500, 600))}


def test_sampler_draws_the_mix_and_cycles_each_bucket_before_repeating():
    sampler = DifficultySampler(BUCKETS, {"1": 0.5, "2": 0.3, "3": 0.2}, seed=0, num_samples=20_000)
    indices = list(sampler)
    assert len(indices) == 20_000
    seen = sampler.seen_per_difficulty(20_000)
    for name, share in {"1": 0.5, "2": 0.3, "3": 0.2}.items():
        assert abs(seen[name] / 20_000 - share) < 0.015
        assert sum(1 for i in indices if i in BUCKETS[name]) == seen[name]
    first_pass = [i for i in indices if i >= 500][:100]
    assert sorted(first_pass) == BUCKETS["3"]  # a whole shuffled pass of bucket 3 before any repeat


def test_sampler_weight_change_applies_from_the_next_undrawn_position_and_replays_after_restore():
    sampler = DifficultySampler(BUCKETS, {"1": 1.0}, seed=3, num_samples=400)
    drawn = []
    for i, index in enumerate(sampler):
        drawn.append(index)
        if i == 99:  # the Trainer changes weights while it iterates
            sampler.set_weights({"3": 1.0})
    assert all(i < 300 for i in drawn[:100]) and all(i >= 500 for i in drawn[100:])
    assert sampler.seen_per_difficulty(400) == {"1": 100, "2": 0, "3": 300}
    resumed = DifficultySampler(BUCKETS, {"1": 1.0}, seed=3, num_samples=400)
    resumed.restore(json.loads(json.dumps(sampler.state())))
    assert list(resumed) == drawn  # the same order: a function of seed and schedule
    other_seed = DifficultySampler(BUCKETS, {"1": 1.0}, seed=4, num_samples=400)
    assert list(other_seed)[:100] != drawn[:100]
    assert Counter(drawn[:100]).most_common(1)[0][1] == 1  # no repeats within a pass


# -- through train_sft with a tiny model: the checks, curriculum.json, the plot and a TensorBoard run ---------------


@pytest.fixture(scope="module")
def sft_inputs(tmp_path_factory):
    from conftest import sft_split_inputs

    return sft_split_inputs(tmp_path_factory.mktemp("curriculum"), 60, {"train": 0.6, "val": 0.2, "test": 0.2})


FORCED_ROLLBACK = dict(
    stages=[
        {"name": "simple", "difficulty_mix": {"1": 1}},
        {"name": "all", "difficulty_mix": {"1": 1, "2": 1, "3": 1}},
    ],
    advancement_interval=2,
    min_performance_for_advance=0.0,
    rollback_threshold=-1.0,
    rollback_cooldown=0,
    rollback_factor=2.0,
    eval_items=6,
)  # fmt: skip (a threshold of -1 demands a gain of 100 points: every advance is rolled back)


def test_train_sft_with_a_curriculum_logs_checks_to_json_plot_and_tensorboard(tmp_path, sft_inputs):
    from conftest import train_settings
    from sftdpo.io import read_json
    from sftdpo.sft import train_sft

    evaluation = {"task_options": {}, "max_new_tokens": 8, "batch_size": 8}
    metrics = train_sft(
        **sft_inputs, out_dir=str(tmp_path / "model"), metrics_path=str(tmp_path / "metrics.json"),
        curve_path=str(tmp_path / "loss.png"), curriculum_path=str(tmp_path / "curriculum.json"),
        work_dir=str(tmp_path / "work"), tracking_dir=str(tmp_path / "tracking"),
        train=train_settings(max_steps=6, report_to="tensorboard"), lora=None, eval_rows=4, seed=0,
        curriculum=FORCED_ROLLBACK, evaluation=evaluation,
    )  # fmt: skip
    report = read_json(tmp_path / "curriculum.json")
    actions = [(e["step"], e["action"], e["stage"]) for e in report["events"]]
    assert actions == [(2, "advance", "all"), (4, "rollback", "simple")]
    rollback = report["events"][1]
    assert rollback["performance_before"] == report["events"][0]["performance"]
    assert rollback["delta"] == pytest.approx(rollback["performance_after"] - rollback["performance_before"])
    assert set(rollback["by_difficulty"]) <= {"1", "2", "3"} and rollback["eval_seconds"] > 0
    assert report["final_stage"] == "simple" and report["rollbacks"] == 1 and report["final_weights"] == {"1": 1.0}
    # 6 steps x 4 rows: steps 1-2 and 5-6 on difficulty 1 only; 3-4 on all three (plus a batch fetched early).
    seen = report["samples_per_difficulty"]
    assert sum(seen.values()) == 24 and seen["1"] >= 16
    assert report["stage_spans"] == [[0, 2, "simple"], [2, 4, "all"], [4, 6, "simple"]]
    assert 0 < report["eval_share_of_train_time"] < 1
    assert metrics["curriculum"]["rollbacks"] == 1 and metrics["run_name"].startswith("sft-")
    logged = [h for h in metrics["log_history"] if "curriculum/val_accuracy" in h]
    assert [h["step"] for h in logged] == [2, 4] and logged[1]["curriculum/rollback"] == 1.0
    assert (tmp_path / "loss.png").stat().st_size > 0

    # The TensorBoard run: event files under <tracking_dir>/<run name>/ with the loss and the curriculum's checks.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    board = EventAccumulator(str(tmp_path / "tracking" / metrics["run_name"]))
    board.Reload()
    tags = board.Tags()["scalars"]
    assert "train/loss" in tags
    assert [e.step for e in board.Scalars("train/curriculum/rollback")] == [4]
    accuracy = [(e.step, round(e.value, 6)) for e in board.Scalars("train/curriculum/val_accuracy")]
    assert accuracy == [(e["step"], round(e["performance"], 6)) for e in report["events"]]
