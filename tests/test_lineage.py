"""Lineage: model digests, sidecars, pairs that name their rollouts, and the walk from a pair to its demonstration
and models (end to end on the tiny run)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from conftest import ROOT, scratch_base_model
from sftdpo.io import model_digest, read_json, read_parquet, sha256_file, write_parquet
from sftdpo.lineage import Walker, artifact_digest, read_sidecar, sidecar_path, write_sidecars
from sftdpo.modeling import record_base, train_tokenizer
from sftdpo.preferences import build_preferences
from sftdpo.tasks import get_task


@pytest.fixture(scope="module")
def base_model(tmp_path_factory):
    """A real scratch model directory (weights, config, tokenizer)."""
    task = get_task("arithmetic")
    return Path(scratch_base_model(tmp_path_factory.mktemp("base") / "model", task, task.problems(20, seed=0)))


def adapter_in_project(project: Path, base_model: Path, modules: list[str]) -> Path:
    """`project`/results/{base,sft}: the base model copied in and an adapter directory naming it, as
    sftdpo.modeling.record_base writes it (absolute base path, sftdpo_base.json)."""
    base = project / "results/base/model"
    shutil.copytree(base_model, base)
    tmp = project / "results/sft/.model.tmp"
    shutil.copytree(base_model, tmp)
    (tmp / "adapter_config.json").write_text(
        json.dumps({"base_model_name_or_path": str(base), "r": 4, "target_modules": modules})
    )
    cwd = os.getcwd()
    os.chdir(project)  # record_base keeps the base relative to the adapter when both are in the project
    try:
        record_base(tmp, str(project / "results/sft/model"))
    finally:
        os.chdir(cwd)
    return tmp.rename(project / "results/sft/model")


def test_model_digest_is_the_models_not_its_place_or_bookkeeping(base_model, tmp_path):
    # PEFT writes target_modules (a set) in any order.
    a = adapter_in_project(tmp_path / "a", base_model, ["q_proj", "v_proj"])
    b = adapter_in_project(tmp_path / "elsewhere/b", base_model, ["v_proj", "q_proj"])
    assert json.loads((a / "adapter_config.json").read_text()) != json.loads((b / "adapter_config.json").read_text())
    assert model_digest(a) == model_digest(b)  # the same model trained in two places
    moved = tmp_path / "moved"
    shutil.move(tmp_path / "a", moved)
    assert model_digest(moved / "results/sft/model") == model_digest(b)
    # Bookkeeping is not the model: the sidecar, the model card, Snakemake's timestamp.
    before = model_digest(b)
    for name in ("lineage.json", "README.md", ".snakemake_timestamp"):
        (b / name).write_text("anything")
    assert model_digest(b) == before
    # A weight, a config value or the tokenizer is.
    weights = b / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    assert model_digest(b) != before
    config = json.loads((a := moved / "results/sft/model" / "adapter_config.json").read_text())
    digest = model_digest(a.parent)
    a.write_text(json.dumps({**config, "r": 8}))
    assert model_digest(a.parent) != digest
    with pytest.raises(NotADirectoryError, match="not a model directory"):
        model_digest(weights)


def test_sidecars_record_inputs_by_their_producers_digest_and_are_deterministic(base_model, tmp_path):
    demos, table = tmp_path / "demos.parquet", tmp_path / "out/table.parquet"
    write_parquet(pd.DataFrame({"id": ["a", "b"], "x": [1, 2]}), demos)
    write_sidecars(rule="make", wildcards={}, inputs=[], outputs=[str(demos), str(tmp_path / "x.json")], params={})
    assert not (tmp_path / "x.lineage.json").exists()  # JSON summaries get no sidecar
    demos_side = read_json(tmp_path / "demos.lineage.json")
    assert demos_side["digest"] == sha256_file(demos) and demos_side["rule"] == "make"

    write_parquet(pd.DataFrame({"id": ["a"], "y": [3]}), table)
    params = {"code": "c0de", "work_dir": "work/x", "threads": 2, "k": 4}
    inputs = [("demos", str(demos)), ("model", str(base_model))]
    (written,) = write_sidecars(
        rule="use", wildcards={"shard": "0"}, inputs=inputs, outputs=[str(table)], params=params
    )
    assert written == sidecar_path(table) == tmp_path / "out/table.lineage.json"
    side = read_json(written)
    assert side["inputs"] == [
        {"name": "demos", "path": str(demos), "digest": demos_side["digest"]},
        {"name": "model", "path": str(base_model), "digest": model_digest(base_model)},
    ]
    assert side["params"] == {"k": 4} and side["code"] == "c0de" and side["wildcards"] == {"shard": "0"}
    assert {"python", "pandas", "pyarrow", "numpy"} <= set(side["packages"])
    # An input's digest comes from its sidecar (its producer hashed it): a stale sidecar shows through.
    (tmp_path / "demos.lineage.json").write_text(json.dumps({**demos_side, "digest": "f" * 64}))
    write_sidecars(rule="use", wildcards={"shard": "0"}, inputs=inputs, outputs=[str(table)], params=params)
    assert read_json(written)["inputs"][0]["digest"] == "f" * 64
    (tmp_path / "demos.lineage.json").write_text(json.dumps(demos_side))
    # Deterministic: an identical rerun writes identical bytes.
    write_sidecars(rule="use", wildcards={"shard": "0"}, inputs=inputs, outputs=[str(table)], params=params)
    first = written.read_bytes()
    write_sidecars(rule="use", wildcards={"shard": "0"}, inputs=inputs, outputs=[str(table)], params=params)
    assert written.read_bytes() == first
    # A walk notices a table changed since its producer (and its consumer) recorded it.
    write_parquet(pd.DataFrame({"id": ["a", "b"], "x": [1, 5]}), demos)
    walker = Walker()
    hops = walker.trace(table, "a")  # row "a" of the table, traced to the input table holding the same id
    assert [(h["table"], h["rule"], h["row"].get("x")) for h in hops] == [
        (str(table), "use", None),
        (str(demos), "make", 1),
    ]
    assert walker.changed == [
        f"{demos} changed since {written} recorded it ({demos_side['digest'][:12]}; now {sha256_file(demos)[:12]})"
    ]


def test_the_pipelines_json_reports_are_inputs_without_a_digest(tmp_path, monkeypatch):
    """collect's shard summaries hold timings: a digest would differ on every identical rerun."""
    monkeypatch.chdir(tmp_path)
    Path("results/demos/shards").mkdir(parents=True)
    Path("results/demos/shards/0.json").write_text('{"seconds_this_run": 0.3}')
    Path("data.json").write_text("[]")  # an imported file is data: hashed
    write_parquet(pd.DataFrame({"id": ["a"]}), "results/demos/validated.parquet")
    inputs = [("summaries", "results/demos/shards/0.json"), ("source", "data.json")]
    write_sidecars(rule="validate", wildcards={}, inputs=inputs, outputs=["results/demos/validated.parquet"], params={})
    side = read_sidecar("results/demos/validated.parquet")
    assert [i["digest"] for i in side["inputs"]] == [None, sha256_file("data.json")]
    assert side["artifact"] == "results/demos/validated.parquet"


def test_pairs_name_the_rollouts_whose_completions_they_are(tmp_path):
    tokenizer = tmp_path / "tokenizer"
    train_tokenizer([f"{a}+{b}={a + b}\n#### {a + b}" for a in range(10) for b in range(10)], 280).save_pretrained(
        tokenizer
    )
    # Per prompt: two identical correct completions (the dedup keeps one id), distinct wrong ones.
    spec = {
        "p1": [("1+2=3\n#### 3", True, 1.0), ("1+2=3\n#### 3", True, 1.0), ("1+2=4\n#### 4", False, 0.1),
               ("1+2=5\n#### 5", False, 0.0), ("1+2= 3\n#### 3", True, 0.4)],
        "v1": [("2+2=4\n#### 4", True, 1.0), ("2+2=5\n#### 5", False, 0.0)],
    }  # fmt: skip
    rows = [
        {"id": f"{pid}:0:{j}", "prompt_id": pid, "split": "val" if pid == "v1" else "train", "variant": 0,
         "sample": j, "task": "arithmetic", "difficulty": "1", "prompt": f"What is {pid}?", "completion": text,
         "correct": ok, "score": score}
        for pid, samples in spec.items() for j, (text, ok, score) in enumerate(samples)
    ]  # fmt: skip
    rollouts = pd.DataFrame(rows)
    write_parquet(rollouts, tmp_path / "rollouts.parquet")
    build_preferences(
        rollouts_path=str(tmp_path / "rollouts.parquet"), tokenizer_dir=str(tokenizer),
        pairs_path=str(tmp_path / "pairs.parquet"), report_path=str(tmp_path / "report.json"),
        max_pairs_per_prompt=10, quality_margin=0.5,
    )  # fmt: skip
    pairs = read_parquet(tmp_path / "pairs.parquet")
    assert len(pairs) == 6 and {"chosen_id", "rejected_id"} <= set(pairs.columns)
    by_id = rollouts.set_index("id")
    for pair in pairs.itertuples():
        chosen, rejected = by_id.loc[pair.chosen_id], by_id.loc[pair.rejected_id]
        assert (chosen["completion"], rejected["completion"]) == (
            pair.chosen[0]["content"],
            pair.rejected[0]["content"],
        )
        assert chosen["prompt_id"] == rejected["prompt_id"] == pair.prompt_id
        assert (chosen["score"], rejected["score"]) == (pair.chosen_score, pair.rejected_score)
    # Of the two identical best completions, the first (in score, then text order; stable) is the one named.
    assert set(pairs.loc[pairs["chosen"].map(lambda m: m[0]["content"]) == "1+2=3\n#### 3", "chosen_id"]) == {"p1:0:0"}


# -- end to end, on the tiny run -------------------------------------------------------------------------------


def model_dirs(results: Path) -> list[Path]:
    """Every model directory under results/: a saved model or an adapter."""
    return sorted({p.parent for name in ("config.json", "adapter_config.json") for p in results.rglob(name)})


def walk_cli(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run(
        [sys.executable, "-m", "sftdpo.lineage", *args], cwd=workdir, env=env, capture_output=True, text=True
    )


@pytest.mark.e2e
def test_every_table_and_model_has_a_sidecar_that_matches_its_producer(tiny_run):
    results = tiny_run[0] / "results"
    tables = sorted(p for suffix in ("*.parquet", "*.h5") for p in results.rglob(suffix))
    models = model_dirs(results)
    assert len(tables) >= 15 and {m.relative_to(results).as_posix() for m in models} >= {
        "base/model", "sft/model", "dpo/adapter"
    }  # fmt: skip
    digests = {}
    for artifact in tables + models:
        side = read_sidecar(artifact)
        assert side is not None, f"{artifact}: no sidecar"
        assert side["artifact"] == artifact.relative_to(tiny_run[0]).as_posix()
        assert side["digest"] == artifact_digest(artifact), artifact
        digests[side["artifact"]] = side["digest"]
    for artifact in tables + models:
        for item in read_sidecar(artifact)["inputs"]:
            if item["path"] in digests:  # inputs with sidecars: the consumer recorded the producer's digest
                assert item["digest"] == digests[item["path"]], (artifact, item)
    sft = read_sidecar(results / "sft/model")
    assert sft["rule"] == "sft"
    assert {i["name"] for i in sft["inputs"]} == {"model", "train", "val", "tokens", "conversion"}
    assert "train" in sft["params"] and "work_dir" not in sft["params"] and sft["code"]
    assert {"python", "torch", "transformers", "trl", "peft", "snakemake"} <= set(sft["packages"])
    rollouts = read_parquet(results / "rollouts/rollouts.parquet")
    assert set(rollouts["model_digest"]) == {sft["digest"]}
    assert {"top_p", "max_new_tokens", "temperature", "seed"} <= set(rollouts.columns)


@pytest.mark.e2e
def test_walk_a_pair_back_to_its_demonstration_and_models(tiny_run, finished):
    workdir = tiny_run[0]
    pairs = read_parquet(workdir / "results/prefs/pairs.parquet")
    rollouts = read_parquet(workdir / "results/rollouts/rollouts.parquet").set_index("id")
    pair = pairs[pairs["split"] == "train"].iloc[0]
    for role in ("chosen", "rejected"):
        assert rollouts.loc[pair[f"{role}_id"], "completion"] == pair[role][0]["content"]

    proc = walk_cli(workdir, "results/prefs/pairs.parquet", "--id", pair["id"], "--json")
    assert proc.returncode == 0, proc.stderr
    walk = json.loads(proc.stdout)
    assert walk["changed_since"] == []
    assert walk["pair"]["id"] == pair["id"] and walk["pair"]["kind"] == pair["kind"]
    sft_digest = read_sidecar(workdir / "results/sft/model")["digest"]
    for role in ("chosen", "rejected"):
        rollout = walk[role]
        assert rollout["id"] == pair[f"{role}_id"] and rollout["prompt_id"] == pair["prompt_id"]
        assert rollout["table"].startswith("results/rollouts/shards/")
        assert rollout["sampling"]["model_digest"] == sft_digest == rollouts.loc[rollout["id"], "model_digest"]
        assert rollout["sampling"]["seed"] == rollouts.loc[rollout["id"], "seed"]
        assert rollout["sampling"]["temperature"] == rollouts.loc[rollout["id"], "temperature"]
    demos = read_parquet(workdir / "results/demos/demos.parquet").set_index("id")
    demo = walk["prompt"]["demo"]
    assert demo["table"] == "results/demos/demos.parquet" and demo["id"] == pair["prompt_id"]
    assert demo["expert"] == demos.loc[pair["prompt_id"], "expert"] == "program"
    assert demo["meta"] == json.loads(demos.loc[pair["prompt_id"], "meta"]) and "seed" in demo["meta"]
    assert [h["rule"] for h in walk["prompt"]["hops"]] == [
        "split", "convert", "convert_shard", "validate", "merge_demos", "collect", "problems",
    ]  # fmt: skip
    assert walk["prompt"]["hops"][0]["table"] == f"results/data/{pair['split']}.parquet"
    sft, base = walk["models"]
    assert (sft["path"], sft["rule"], sft["digest"]) == ("results/sft/model", "sft", sft_digest)
    assert {i["name"]: i["path"] for i in sft["inputs"]} == {
        "model": "results/base/model", "train": "results/data/train.parquet", "val": "results/data/val.parquet",
        "tokens": "results/data/tokens.h5", "conversion": "results/data/convert.json",
    }  # fmt: skip
    assert (base["path"], base["rule"], base["digest"]) == (
        "results/base/model", "base_model", model_digest(workdir / "results/base/model")
    )  # fmt: skip
    assert base["params"]["name_or_path"] == "scratch"

    text = walk_cli(workdir, "results/prefs/pairs.parquet", "--id", pair["id"])
    assert text.returncode == 0 and text.stdout.startswith(f"pair {pair['id']}  (results/prefs/pairs.parquet)")
    assert f"demonstration {pair['prompt_id']}  (results/demos/demos.parquet)" in text.stdout
    assert f"model results/sft/model  (rule sft) digest {sft_digest[:12]}" in text.stdout
    assert "WARNING" not in text.stdout

    # Other starting points: a rollout, a model directory.
    one = walk_cli(workdir, "results/rollouts/rollouts.parquet", "--id", pair["chosen_id"], "--json")
    assert json.loads(one.stdout)["prompt"]["demo"]["id"] == pair["prompt_id"]
    model = json.loads(walk_cli(workdir, "results/dpo/adapter", "--json").stdout)
    assert [m["path"] for m in model["models"]] == ["results/dpo/adapter", "results/sft/model", "results/base/model"]

    # Errors name the file and the id; a table changed since it was recorded is said so.
    missing = walk_cli(workdir, "results/prefs/pairs.parquet", "--id", "no-such-pair")
    assert missing.returncode == 2 and "results/prefs/pairs.parquet: no row with id 'no-such-pair'" in missing.stderr
    split_path = finished / f"results/data/{pair['split']}.parquet"
    split_rows = read_parquet(split_path)
    split_rows["difficulty"] = split_rows["difficulty"].astype(str) + "!"
    write_parquet(split_rows, split_path)
    changed = walk_cli(finished, "results/prefs/pairs.parquet", "--id", pair["id"])
    assert changed.returncode == 0, changed.stderr
    assert f"WARNING: results/data/{pair['split']}.parquet changed since" in changed.stdout
