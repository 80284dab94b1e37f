import pandas as pd
import pytest

from sftdpo.io import read_json, read_parquet, write_parquet
from sftdpo.modeling import load_tokenizer, train_tokenizer
from sftdpo.preferences import build_preferences, pairs_for_prompt, shared_prefix


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    """A tokenizer directory as the SFT model's (digits are single tokens)."""
    path = tmp_path_factory.mktemp("tokenizer")
    train_tokenizer([f"{a}+{b}={a + b}\n#### {a + b}" for a in range(10) for b in range(10)], 280).save_pretrained(path)
    return str(path)


def samples(spec):
    """spec: list of (completion, correct, score); rollout ids r0, r1, ..."""
    return pd.DataFrame(
        [{"id": f"r{i}", "completion": c, "correct": ok, "score": s} for i, (c, ok, s) in enumerate(spec)]
    )


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


def build(tmp_path, tokenizer_dir, rollout_rows):
    """build_preferences on these rollout rows (at most 3 pairs a prompt, quality margin 0.5)."""
    write_parquet(pd.DataFrame(rollout_rows), tmp_path / "r.parquet")
    return build_preferences(
        rollouts_path=str(tmp_path / "r.parquet"),
        tokenizer_dir=tokenizer_dir,
        pairs_path=str(tmp_path / "p.parquet"),
        report_path=str(tmp_path / "p.json"),
        max_pairs_per_prompt=3,
        quality_margin=0.5,
    )


def test_build_preferences_writes_trl_format(tmp_path, tokenizer_dir):
    rows = []
    prompts = [("p1", [True, False, False, True]), ("p2", [True] * 4), ("p3", [False] * 4), ("v1", [False, True])]
    for pid, outcomes in prompts:
        for j, ok in enumerate(outcomes):
            rows.append(
                {
                    "id": f"{pid}:0:{j}",
                    "prompt_id": pid,
                    "split": "val" if pid.startswith("v") else "train",
                    "variant": 0,
                    "sample": j,
                    "task": "arithmetic",
                    "difficulty": "2",
                    "prompt": f"What is {pid}?",
                    # Right and wrong answers share the steps' first tokens: "1+2=" then 3 or 4.
                    "completion": f"1+2={3 if ok else 4}\n#### {3 if ok else 4}{'' if j < 2 else ' ' * j}",
                    "correct": ok,
                    "score": float(ok),
                }
            )
    report = build(tmp_path, tokenizer_dir, rows)
    pairs = read_parquet(tmp_path / "p.parquet")
    train = pairs[pairs["split"] == "train"]
    assert len(train) == 3 and set(train["prompt_id"]) == {"p1"}
    assert pairs.loc[pairs["split"] == "val", "prompt_id"].tolist() == ["v1"]  # DPO's held-out pair
    first = train.iloc[0]
    assert list(first["prompt"]) == [{"role": "user", "content": "What is p1?"}]
    assert first["chosen"][0]["role"] == "assistant" and first["chosen"][0]["content"].startswith("1+2=3")
    assert first["rejected"][0]["content"].startswith("1+2=4")
    assert report["prompts_by_outcome"] == {
        "train": {"all_correct": 1, "all_wrong": 1, "mixed": 1},
        "val": {"mixed": 1},
    }
    assert report["n_pairs"] == 3 and report["n_heldout_pairs"] == 1
    assert read_json(tmp_path / "p.json")["pairs_by_kind"] == {"correctness": 3}
    # The first divergent token is the answer digit: the pair shares exactly the tokens of "1+2=".
    shared = len(load_tokenizer(tokenizer_dir)("1+2=")["input_ids"])
    assert shared == 4 and (pairs["shared_tokens"] == shared).all()
    assert report["shared_tokens"]["mean"] == shared and report["shared_tokens"]["pairs_sharing_half_or_more"] == 0


def test_shared_prefix():
    assert shared_prefix([1, 2, 3], [1, 2, 4, 5]) == 2
    assert shared_prefix([1, 2], [1, 2, 3]) == 2 and shared_prefix([7], [8]) == 0 and shared_prefix([], [1]) == 0


def test_no_pairs_is_a_clear_error(tmp_path, tokenizer_dir):
    rows = [
        {
            "id": f"p:0:{j}",
            "prompt_id": "p",
            "split": "train",
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
    with pytest.raises(ValueError, match="no preference pairs"):
        build(tmp_path, tokenizer_dir, rows)


def test_pairs_keep_the_prompts_context(tmp_path, tokenizer_dir):
    # Rollouts of a conversation (a system message and an earlier exchange before the final user message):
    # DPO's prompt is the whole conversation, as SFT saw it; two conversations ending alike stay apart.
    context = {
        "c1": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "1+1?"},
               {"role": "assistant", "content": "#### 2"}],
        "c2": [{"role": "system", "content": "Be brief."}],
    }  # fmt: skip
    rows = [
        {"id": f"{pid}:0:{j}", "prompt_id": pid, "split": "train", "variant": 0, "sample": j, "task": "arithmetic",
         "difficulty": "2", "prompt": "And 1+2?", "context": context[pid],
         "completion": f"1+2={3 if ok else 4}\n#### {3 if ok else 4}", "correct": ok, "score": float(ok)}
        for pid in ("c1", "c2") for j, ok in enumerate([True, False])
    ]  # fmt: skip
    build(tmp_path, tokenizer_dir, rows)
    pairs = read_parquet(tmp_path / "p.parquet")
    assert [[dict(m) for m in p] for p in pairs["prompt"]] == [
        [*context["c1"], {"role": "user", "content": "And 1+2?"}],
        [*context["c2"], {"role": "user", "content": "And 1+2?"}],
    ]
