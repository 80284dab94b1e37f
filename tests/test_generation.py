"""Greedy evaluation's batching (issue 11): longest prompts first, batches bounded by a KV-cache budget, rows
back in the items' order and the same completions as decoding one item at a time."""

import pytest

from conftest import converted_splits, scratch_base_model, train_settings
from sftdpo.generation import generate, greedy_batch_size, greedy_verdicts, kv_cache_bytes_per_token, load_for_inference
from sftdpo.io import read_parquet
from sftdpo.sft import train_sft
from sftdpo.tasks import get_task


@pytest.fixture(scope="module")
def model_and_items(tmp_path_factory):
    root = tmp_path_factory.mktemp("generation")
    task = get_task("arithmetic", max_ops=3)
    problems = task.problems(120, seed=0)
    base = scratch_base_model(root / "base", task, problems, layers=2, heads=4, hidden_size=32)
    fractions = {"train": 0.5, "val": 0.2, "test": 0.3}
    paths = converted_splits(root, base, task, problems, max_length=48, fractions=fractions)
    # A few SFT steps, so the model's answers differ from prompt to prompt (a fresh one ends every answer at once).
    train_sft(
        base_dir=base, train_path=paths["train"], val_path=paths["val"], tokens_path=paths["tokens"],
        out_dir=str(root / "sft"), metrics_path=str(root / "metrics.json"), curve_path=str(root / "loss.png"),
        curriculum_path=str(root / "curriculum.json"), work_dir=str(root / "work"), tracking_dir=str(root / "tracking"),
        train=train_settings(max_steps=150, batch_size=8, learning_rate=5e-3, save_steps=150, logging_steps=10),
        lora=None, eval_rows=4, seed=0,
    )  # fmt: skip
    model, tokenizer = load_for_inference(str(root / "sft"))
    return model, tokenizer, read_parquet(paths["test"])


def test_kv_cache_bytes_count_keys_and_values_of_every_layer(model_and_items):
    model = model_and_items[0]
    # 2 layers × (key + value) × 4 KV heads × head_dim 8 × 4 bytes (fp32)
    assert kv_cache_bytes_per_token(model) == 2 * 2 * 4 * 8 * 4


def test_batch_size_shrinks_to_the_kv_cache_budget():
    per_token = 1024
    # 100 tokens a sequence at full length: 100 KiB; a 1 MiB budget holds 10 of them
    assert greedy_batch_size(per_token, 60, 40, batch_size=256, kv_cache_mb=1) == 10
    assert greedy_batch_size(per_token, 60, 40, batch_size=8, kv_cache_mb=1) == 8
    assert greedy_batch_size(per_token, 60, 40, batch_size=256, kv_cache_mb=0.01) == 1  # never below one


def test_greedy_rows_keep_the_items_order_and_match_one_item_at_a_time(model_and_items):
    model, tokenizer, items = model_and_items
    assert items["difficulty"].nunique() == 3  # prompts of several lengths, so sorting reorders them
    settings = dict(task_options={"arithmetic": {"max_ops": 3}}, max_new_tokens=12, seed=0, desc="test")
    # The reference: plain generate, one item at a time in the items' order (no sorting, no padding).
    prompts = [list(p) for p in items["prompt"]]
    one_at_a_time = generate(model, tokenizer, prompts, max_new_tokens=12, batch_size=1, seed=0)
    batched = greedy_verdicts(model, tokenizer, items, batch_size=256, **settings)
    budgeted = greedy_verdicts(model, tokenizer, items, batch_size=256, kv_cache_mb=0.02, **settings)
    assert [r["id"] for r in batched] == items["id"].tolist()
    assert [r["gold"] for r in batched] == items["answer"].tolist()
    completions = [samples[0]["text"] for samples in one_at_a_time]
    assert len(set(completions)) > 1  # the model says different things to different prompts
    assert [r["completion"] for r in batched] == completions
    assert [r["completion"] for r in budgeted] == completions
