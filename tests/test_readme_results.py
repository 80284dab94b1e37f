"""The README's results table is what benchmarks/seed_noise.py renders from the saved run summaries."""

import importlib.util
import json
import sys

from conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))  # the benchmarks import their README helper as a script would
from readme_table import current_table

spec = importlib.util.spec_from_file_location("seed_noise", ROOT / "benchmarks/seed_noise.py")
seed_noise = importlib.util.module_from_spec(spec)
spec.loader.exec_module(seed_noise)


def test_readme_table_matches_the_saved_summaries():
    records = seed_noise.saved_records()
    assert records, "no saved summaries in benchmarks/results/seeds/"
    assert current_table(*seed_noise.TABLE) == seed_noise.render(records)


def test_render_reads_the_numbers_of_each_summary():
    def record(seed, sft, dpo, delta, lo, hi):
        stages = {"sft": {"accuracy": sft, "n": 1500}, "dpo": {"accuracy": dpo, "run": "dpo"}}
        return {"seed": seed, "wall_seconds": 540, "configfiles": [],
                "summary": {"stages": stages, "deltas": {"dpo-sft": {"mean": delta, "ci95": [lo, hi]}}}}  # fmt: skip

    table = seed_noise.render([record(0, 0.8, 0.86, 0.06, 0.04, 0.08), record(1, 0.7, 0.71, 0.01, -0.01, 0.03)])
    assert "| 0 | 1500 | 0.800 | dpo | 0.860 | +0.060 [+0.040, +0.080] | 9.0 min |" in table
    assert "mean +0.035, range +0.010 to +0.060; CI95 lower bound above 0 on 1 of 2 seeds" in table


def test_readme_data_stages_table_matches_the_saved_figures():
    spec = importlib.util.spec_from_file_location("data_stages", ROOT / "benchmarks/data_stages.py")
    data_stages = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(data_stages)
    record = json.loads(data_stages.SAVED.read_text())
    assert {size["rows"] for size in record["sizes"]} >= {100_000}
    assert current_table(*data_stages.TABLE) == data_stages.render(record)
    sharded = json.loads(data_stages.SAVED_SHARDED.read_text())
    assert [(size["rows"], size["shards"]) for size in sharded["sizes"]] == [(1_000_000, 8)]
    assert current_table(*data_stages.TABLE_SHARDED) == data_stages.render(sharded)


def test_readme_chaos_table_matches_the_saved_campaign():
    spec = importlib.util.spec_from_file_location("chaos", ROOT / "benchmarks/chaos.py")
    chaos = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(chaos)
    record = json.loads(chaos.SAVED.read_text())
    assert len(record["kills"]) >= 10 and record["identical"]
    assert current_table(*chaos.TABLE) == chaos.render(record)


def test_readme_curriculum_table_matches_the_saved_comparisons():
    spec = importlib.util.spec_from_file_location("curriculum_benchmark", ROOT / "benchmarks/curriculum.py")
    curriculum = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(curriculum)
    results = curriculum.saved_results()
    assert {r.get("seed", 0) for r in results if r["name"] == "example"} == {0, 1, 2}
    table = curriculum.readme_table(results)
    assert current_table(*curriculum.TABLE) == table
    seed1 = next(r for r in results if r["name"] == "example" and r.get("seed") == 1)
    assert f"| {seed1['rows'][0]['delta']:+.3f} [" in table


def test_kill_moments_hit_every_rule_first_then_spread():
    spec = importlib.util.spec_from_file_location("chaos", ROOT / "benchmarks/chaos.py")
    chaos = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(chaos)
    # A reference timeline sampled every 0.2 s: a long sft, a 0.4 s merge beside evaluate, a 0.2 s report.
    timeline = [(round(0.2 * i, 1), ["sft"]) for i in range(300)]
    timeline += [(60.0, ["evaluate", "merge_rollouts"]), (60.2, ["evaluate", "merge_rollouts"]), (60.4, ["report"])]
    moments = chaos.kill_moments(timeline, 5, seed=3)
    assert len(moments) == 5 and {rule for rule, _, _ in moments} == {"sft", "evaluate", "merge_rollouts", "report"}
    assert [m[0] for m in moments].count("sft") == 2  # 4 rules, then 1 more drawn over all busy time (mostly sft)
    assert moments == chaos.kill_moments(timeline, 5, seed=3) != chaos.kill_moments(timeline, 5, seed=4)
    sft_offsets = [offset for rule, offset, _ in moments if rule == "sft"]
    assert all(0 <= o <= 59.8 for o in sft_offsets) and len(set(sft_offsets)) == 2
    report = next(m for m in moments if m[0] == "report")
    assert report[1] == 0.0 and report[2] == set()  # nothing starts after the report
    assert next(m for m in moments if m[0] == "evaluate")[2] == {"report"}
    assert len(chaos.kill_moments(timeline, 2, seed=0)) == 2  # fewer kills than rules: a sample of the rules


def test_readme_chaos_slurm_table_matches_the_saved_campaign():
    spec = importlib.util.spec_from_file_location("chaos_slurm", ROOT / "benchmarks/chaos_slurm.py")
    chaos_slurm = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(chaos_slurm)
    record = json.loads(chaos_slurm.SAVED.read_text())
    assert {row["scenario"] for row in record["scenarios"]} == set(chaos_slurm.SCENARIOS)
    assert all(row["identical"] for row in record["scenarios"]), record["scenarios"]
    assert current_table(*chaos_slurm.TABLE) == chaos_slurm.render(record)


def load_peers():
    spec = importlib.util.spec_from_file_location("peers", ROOT / "benchmarks/peers.py")
    peers = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(peers)
    return peers


def test_readme_peers_table_matches_the_saved_figures():
    peers = load_peers()
    record = json.loads(peers.SAVED.read_text())
    assert record["rows"] and {"platform", "cores", "python", "torch"} <= set(record["machine"])
    for row in record["rows"].values():
        assert all(len(arm["runs"]) == record["repeats"] for arm in row["arms"].values())
    assert current_table(*peers.TABLE) == peers.render(record)


def test_peers_alternate_and_compare_medians_with_sftdpo():
    peers = load_peers()
    assert peers.schedule(["sftdpo", "a", "b"], 2) == ["sftdpo", "a", "b", "sftdpo", "a", "b"]
    rates = peers.summarise("tok/s", {"sftdpo": [10, 30, 20], "peer": [40, 5, 10]})
    assert rates["sftdpo"] == {"median": 20, "best": 30, "median_ratio": 1.0, "best_ratio": 1.0}
    assert rates["peer"] == {"median": 10, "best": 40, "median_ratio": 2.0, "best_ratio": 0.75}
    times = peers.summarise("s", {"sftdpo": [2.0, 4.0, 3.0], "peer": [1.0, 1.5, 0.5]})
    # seconds: the best run is the shortest; sftdpo 3x (4x) slower than the peer, its speed a third (a quarter)
    assert times["peer"] == {"median": 1.0, "best": 0.5, "median_ratio": 1.0 / 3.0, "best_ratio": 0.25}


def test_readme_first_forward_table_matches_the_saved_figures():
    spec = importlib.util.spec_from_file_location("startup", ROOT / "benchmarks/startup.py")
    startup = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(startup)
    record = json.loads(startup.SAVED.read_text())
    assert set(record["rules"]) == set(startup.MODEL_JOBS)
    assert all(len(runs) >= 3 and all(0 < s < 60 for s in runs) for runs in record["rules"].values())
    assert current_table(*startup.TABLE) == startup.render(record)
