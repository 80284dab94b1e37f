import pytest
import numpy as np
import pandas as pd

from sftdpo.report import bootstrap_ci, paired_bootstrap, select_dpo, selection_markdown, summarise


def test_paired_bootstrap_mean_and_ci_match_numpy_reference():
    rng = np.random.default_rng(0)
    a = (rng.random(400) < 0.7).astype(np.float32)
    b = (rng.random(400) < 0.5).astype(np.float32)
    result = paired_bootstrap(a, b, n_samples=4000, seed=1)
    assert abs(result["mean"] - (a - b).mean()) < 1e-6
    # numpy reference bootstrap of the same statistic
    idx = rng.integers(0, 400, size=(4000, 400))
    ref = np.percentile((a - b)[idx].mean(axis=1), [2.5, 97.5])
    assert abs(result["ci95"][0] - ref[0]) < 0.02 and abs(result["ci95"][1] - ref[1]) < 0.02
    assert result["ci95"][0] < result["mean"] < result["ci95"][1]
    assert paired_bootstrap(a, b, n_samples=4000, seed=1) == result  # seeded


def test_degenerate_cases():
    ones, zeros = np.ones(50), np.zeros(50)
    assert paired_bootstrap(ones, zeros, n_samples=500, seed=0)["ci95"] == [1.0, 1.0]
    assert paired_bootstrap(ones, ones, n_samples=500, seed=0) | {} == {
        "mean": 0.0,
        "ci95": [0.0, 0.0],
        "n": 50,
        "n_samples": 500,
    }
    lo, hi = bootstrap_ci(np.array([1, 0] * 100, dtype=np.float32), n_samples=2000, seed=0)
    assert 0.4 < lo < 0.5 < hi < 0.6


def test_summary_shape_and_pairing_by_id():
    def table(correct):
        return pd.DataFrame(
            {
                "id": [f"i{k}" for k in range(6)],
                "difficulty": ["1", "1", "2", "2", "3", "3"],
                "correct": correct,
                "n_tokens": [5] * 6,
            }
        )

    evals = {"base": table([0, 0, 0, 0, 0, 0]), "sft": table([1, 1, 1, 0, 1, 0]), "dpo": table([1, 1, 1, 1, 1, 0])}
    evals["dpo"] = evals["dpo"].iloc[::-1]  # order must not matter: items are paired by id
    summary = summarise(evals, n_samples=500, seed=0)
    assert abs(summary["stages"]["sft"]["accuracy"] - 4 / 6) < 1e-6
    assert summary["stages"]["sft"]["by_difficulty"] == {"1": 1.0, "2": 0.5, "3": 0.5}
    assert summary["stages"]["base"]["n"] == 6
    assert abs(summary["deltas"]["sft-base"]["mean"] - 4 / 6) < 1e-6
    assert abs(summary["deltas"]["dpo-sft"]["mean"] - 1 / 6) < 1e-6
    assert set(summary["deltas"]) == {"sft-base", "dpo-sft"}


def test_dpo_run_is_selected_on_val_never_on_test():
    """The run with the best val accuracy is "DPO", even when another run is better on test."""

    def table(correct):
        return pd.DataFrame({"id": [f"i{k}" for k in range(len(correct))], "correct": correct})

    val = {
        "sft": table([1, 0, 0, 0, 1, 0]),
        "dpo": table([1, 1, 0, 0, 1, 0]),  # val 3/6
        "dpo-lr": table([1, 1, 1, 0, 1, 1]),  # val 5/6: selected
        "dpo-seed1": table([1, 1, 1, 0, 1, 1]),  # ties with dpo-lr, listed later: not selected
    }
    test = {
        "sft": table([1, 0, 1, 0]),
        "dpo": table([1, 1, 1, 1]),  # best on test, but test does not choose
        "dpo-lr": table([1, 0, 1, 1]),
        "dpo-seed1": table([0, 0, 0, 0]),
    }
    selection = select_dpo(val, test, n_samples=500, seed=0)
    assert selection["selected"] == "dpo-lr"
    assert list(selection["runs"]) == ["dpo", "dpo-lr", "dpo-seed1"]
    lr = selection["runs"]["dpo-lr"]
    assert abs(lr["val"]["accuracy"] - 5 / 6) < 1e-6 and lr["val"]["n"] == 6
    assert abs(lr["val_minus_sft"]["mean"] - 3 / 6) < 1e-6
    assert abs(lr["test"]["accuracy"] - 3 / 4) < 1e-6
    assert abs(lr["test_minus_sft"]["mean"] - 1 / 4) < 1e-6
    assert abs(selection["sft_val"]["accuracy"] - 2 / 6) < 1e-6
    lines = "\n".join(selection_markdown(selection))
    assert "| dpo-lr | 0.833 | +0.500" in lines and "| 0.750 | +0.250" in lines


def test_selection_needs_every_run_on_val():
    frame = pd.DataFrame({"id": ["a"], "correct": [1]})
    with pytest.raises(ValueError, match=r"no val evaluation for \['dpo-x'\]"):
        select_dpo({"sft": frame, "dpo": frame}, {"sft": frame, "dpo": frame, "dpo-x": frame}, n_samples=100, seed=0)


def test_rounds_are_listed_in_order_and_take_part_in_the_selection():
    def table(correct):
        return pd.DataFrame({"id": [f"i{k}" for k in range(len(correct))], "correct": correct})

    val = {"sft": table([0, 0, 0, 0]), "dpo": table([1, 0, 0, 0]), "dpo-round10": table([1, 1, 1, 1])}
    val["dpo-round2"] = table([1, 1, 0, 0])
    test = {name: frame.iloc[:2] for name, frame in val.items()}
    selection = select_dpo(val, test, n_samples=100, seed=0)
    assert [(r["round"], r["stage"], r["val"]) for r in selection["by_round"]] == [
        (1, "dpo", 0.25),
        (2, "dpo-round2", 0.5),
        (3, "dpo-round10", 1.0),
    ]
    assert selection["selected"] == "dpo-round10"
    assert "| 3 | dpo-round10 | 1.000 | 1.000 |" in selection_markdown(selection)


def test_curriculum_tables_show_final_stage_rollbacks_weights_samples_and_checks():
    from test_curriculum import curriculum, run_checks

    import sftdpo.pages as pages
    from sftdpo.curriculum import summary
    from sftdpo.report import curriculum_tables

    cur = curriculum()
    state = run_checks(cur, [0.3, 0.6, 0.58, 0.7, 0.5])
    report = {"enabled": True, "config": {"advancement_interval": 10, "eval_items": 50}, **summary(cur, state),
              "samples_per_difficulty": {"1": 700, "2": 200, "3": 100}, "eval_share_of_train_time": 0.04,
              "events": state.events}  # fmt: skip
    text = pages.markdown(curriculum_tables(report))
    assert "| final stage | mixed |" in text and "| rollbacks | 1 |" in text
    assert "| final weights (difficulty: share) | 1: 0.40, 2: 0.40, 3: 0.20 |" in text
    assert "| samples seen per difficulty | 1: 700, 2: 200, 3: 100 |" in text and "| 4.0% |" in text
    assert "| 50 | rollback | hard | mixed | 0.700 | 0.500 | -0.200 | drop too large |" in text
    assert curriculum_tables({"enabled": False}) == []
