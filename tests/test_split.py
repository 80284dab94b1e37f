import pandas as pd
import pytest

from sftdpo.split import SPLITS, allocate, assign_splits, normalise_prompt


def make_frame(n=600):
    rows = []
    for i in range(n):
        rows.append(
            {
                "id": f"x{i:04d}",
                "prompt": [{"role": "user", "content": f"What is {i}+1?"}],
                "difficulty": str(1 + i % 3),
                "task": "arithmetic",
                "expert": "program" if i % 5 else "teacher",
            }
        )
    # Near-duplicates of x0000 (case and spacing differ): must share a split.
    rows.append({**rows[0], "id": "dup1", "prompt": [{"role": "user", "content": "what  is 0+1?"}]})
    rows.append({**rows[0], "id": "dup2", "prompt": [{"role": "user", "content": "WHAT IS 0+1? "}]})
    return pd.DataFrame(rows)


FRACTIONS = {"train": 0.7, "val": 0.2, "test": 0.1}
STRATA = ["difficulty", "task", "expert"]


def test_allocate_sums_and_follows_fractions():
    assert allocate(10, FRACTIONS) == {"train": 7, "val": 2, "test": 1}
    assert sum(allocate(7, FRACTIONS).values()) == 7
    assert allocate(1, FRACTIONS) == {"train": 1, "val": 0, "test": 0}


def test_strata_are_preserved():
    frame = make_frame()
    frame["split"] = assign_splits(frame, strata=STRATA, fractions=FRACTIONS, seed=0).values
    frame["key"] = frame["prompt"].map(normalise_prompt)
    n_strata = 0
    for _, part in frame.groupby(STRATA):
        groups = part.drop_duplicates("key")
        got = groups["split"].value_counts()
        assert {s: int(got.get(s, 0)) for s in SPLITS} == allocate(len(groups), FRACTIONS)
        n_strata += 1
    assert n_strata == 6  # 3 difficulties x 2 experts


def test_no_prompt_in_two_splits():
    frame = make_frame()
    frame["split"] = assign_splits(frame, strata=STRATA, fractions=FRACTIONS, seed=0).values
    per_prompt = frame.groupby(frame["prompt"].map(normalise_prompt))["split"].nunique()
    assert per_prompt.max() == 1
    assert frame.set_index("id").loc[["x0000", "dup1", "dup2"], "split"].nunique() == 1


def test_deterministic_seeded_and_independent_of_row_order():
    frame = make_frame()
    a = assign_splits(frame, strata=STRATA, fractions=FRACTIONS, seed=0)
    b = assign_splits(frame, strata=STRATA, fractions=FRACTIONS, seed=0)
    shuffled = frame.sample(frac=1.0, random_state=1)
    c = assign_splits(shuffled, strata=STRATA, fractions=FRACTIONS, seed=0)
    d = assign_splits(frame, strata=STRATA, fractions=FRACTIONS, seed=1)
    assert a.tolist() == b.tolist()
    assert dict(zip(frame["id"], a)) == dict(zip(shuffled["id"], c))
    assert a.tolist() != d.tolist()


def test_bad_config_is_named():
    with pytest.raises(ValueError, match="split.fractions must sum to 1"):
        assign_splits(make_frame(), strata=STRATA, fractions={"train": 0.5, "val": 0.2, "test": 0.1}, seed=0)
    with pytest.raises(ValueError, match=r"split.strata names unknown column\(s\) \['source'\]"):
        assign_splits(make_frame(), strata=["source"], fractions=FRACTIONS, seed=0)


def test_a_split_with_a_share_but_no_rows_stops_with_the_numbers(tmp_path):
    from sftdpo.io import write_parquet
    from sftdpo.split import split

    write_parquet(make_frame(4).iloc[:4], tmp_path / "chat.parquet")
    paths = {s: str(tmp_path / f"{s}.parquet") for s in SPLITS}
    with pytest.raises(ValueError, match=r"4 rows give no val and no test rows with split.fractions .* 4 groups"):
        split(
            chat_path=str(tmp_path / "chat.parquet"),
            out_paths=paths,
            report_path=str(tmp_path / "split.json"),
            strata=STRATA,
            fractions=FRACTIONS,
            seed=0,
        )
    assert not any((tmp_path / f"{s}.parquet").exists() for s in SPLITS)
