import pandas as pd
import pytest

from sftdpo.io import read_json, read_parquet, write_parquet
from sftdpo.preferences import build_preferences, pairs_for_prompt


def samples(spec):
    """spec: list of (completion, correct, score)."""
    return pd.DataFrame([{"completion": c, "correct": ok, "score": s} for c, ok, s in spec])


def test_correct_is_chosen_over_incorrect_first_then_quality():
    spec = [("a", True, 1.0), ("b", True, 0.9), ("x", False, 0.1), ("y", False, 0.05), ("a", True, 1.0)]
    pairs = pairs_for_prompt(samples(spec), max_pairs=10, quality_margin=0.05)
    kinds = [p["kind"] for p in pairs]
    assert kinds == ["correctness"] * 4 + ["quality"]
    assert all(p["chosen_text"] in "ab" and p["rejected_text"] in "xy" for p in pairs[:4])
    assert (pairs[4]["chosen_text"], pairs[4]["rejected_text"]) == ("a", "b")
    # Duplicated completion "a" is paired once per rejected sample only.
    assert len({(p["chosen_text"], p["rejected_text"]) for p in pairs}) == len(pairs)
    # First pairs spread over different samples: best correct vs worst incorrect first.
    assert (pairs[0]["chosen_text"], pairs[0]["rejected_text"]) == ("a", "y")


def test_cap_and_margin():
    spec = [("a", True, 1.0), ("b", True, 0.99), ("x", False, 0.1), ("y", False, 0.0), ("z", False, 0.0)]
    assert len(pairs_for_prompt(samples(spec), max_pairs=2, quality_margin=0.05)) == 2
    quality = [p for p in pairs_for_prompt(samples(spec), max_pairs=10, quality_margin=0.05) if p["kind"] == "quality"]
    assert quality == []  # 0.01 apart < margin


def test_build_preferences_writes_trl_format(tmp_path):
    rows = []
    for pid, outcomes in [("p1", [True, False, False, True]), ("p2", [True] * 4), ("p3", [False] * 4)]:
        for j, ok in enumerate(outcomes):
            rows.append(
                {
                    "id": f"{pid}:0:{j}",
                    "prompt_id": pid,
                    "variant": 0,
                    "sample": j,
                    "task": "arithmetic",
                    "difficulty": "2",
                    "prompt": f"What is {pid}?",
                    "completion": f"{pid}-{j}",
                    "correct": ok,
                    "score": float(ok),
                }
            )
    write_parquet(pd.DataFrame(rows), tmp_path / "r.parquet")
    report = build_preferences(
        rollouts_path=str(tmp_path / "r.parquet"),
        pairs_path=str(tmp_path / "p.parquet"),
        report_path=str(tmp_path / "p.json"),
        max_pairs_per_prompt=3,
        quality_margin=0.5,
    )
    pairs = read_parquet(tmp_path / "p.parquet")
    assert len(pairs) == 3 and set(pairs["prompt_id"]) == {"p1"}
    first = pairs.iloc[0]
    assert list(first["prompt"]) == [{"role": "user", "content": "What is p1?"}]
    assert first["chosen"][0]["role"] == "assistant" and first["chosen"][0]["content"] in {"p1-0", "p1-3"}
    assert first["rejected"][0]["content"] in {"p1-1", "p1-2"}
    assert report["prompts_by_outcome"] == {"all_correct": 1, "all_wrong": 1, "mixed": 1}
    assert read_json(tmp_path / "p.json")["pairs_by_kind"] == {"correctness": 3}


def test_no_pairs_is_a_clear_error(tmp_path):
    rows = [
        {
            "id": f"p:0:{j}",
            "prompt_id": "p",
            "variant": 0,
            "sample": j,
            "task": "t",
            "difficulty": "1",
            "prompt": "q",
            "completion": "c",
            "correct": False,
            "score": 0.0,
        }
        for j in range(2)
    ]
    write_parquet(pd.DataFrame(rows), tmp_path / "r.parquet")
    with pytest.raises(ValueError, match="no preference pairs"):
        build_preferences(
            rollouts_path=str(tmp_path / "r.parquet"),
            pairs_path=str(tmp_path / "p.parquet"),
            report_path=str(tmp_path / "p.json"),
            max_pairs_per_prompt=3,
            quality_margin=0.5,
        )
