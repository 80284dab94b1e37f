"""Greedy evaluation's batching (issue 11): longest prompts first, batches bounded by a KV-cache budget, rows
back in the items' order and the same completions as decoding one item at a time; the greedy loop that drops
finished rows makes the tokens transformers' `generate` makes, and its sampling draws what `torch.multinomial`
draws."""

import copy
import math

import pytest
import torch

import sftdpo.generation
from conftest import converted_splits, scratch_base_model, train_settings
from sftdpo.chat import prompt_ids
from sftdpo.generation import (
    best_ratios,
    exact_multinomial,
    generate,
    greedy_batch_size,
    greedy_verdicts,
    kv_cache_bytes_per_token,
    left_padded,
    load_for_inference,
    multinomial,
    prompt_messages,
    pruned_decoding_applies,
    pruned_new_ids,
)
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


@pytest.mark.parametrize(
    "sampling",
    [
        dict(do_sample=False, temperature=None, top_p=None),
        dict(do_sample=True, temperature=1.0, top_p=1.0),  # rollouts' default
        dict(do_sample=True, temperature=0.7, top_p=0.9),  # both warpers
    ],
    ids=["greedy", "sampled", "sampled-warped"],
)
def test_pruned_decoding_makes_the_tokens_of_transformers_generate(model_and_items, sampling):
    model, tokenizer, items = model_and_items
    k = 4 if sampling["do_sample"] else 1
    encoded = [prompt_ids(tokenizer, prompt_messages(p)) for p in items["prompt"]]
    input_ids, attention = left_padded(encoded, tokenizer.pad_token_id, model.device)
    assert attention.sum(1).unique().numel() > 1  # prompts of several lengths: some rows are padded
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    with torch.inference_mode():
        torch.manual_seed(7)
        reference = model.generate(
            input_ids=input_ids, attention_mask=attention, max_new_tokens=48, num_return_sequences=k, top_k=None,
            pad_token_id=pad, eos_token_id=eos, **sampling,
        )[:, input_ids.shape[1] :].tolist()  # fmt: skip
        torch.manual_seed(7)
        pruned = pruned_new_ids(
            model, input_ids, attention, 48, eos, k=k, temperature=sampling["temperature"] or 0.0,
            top_p=sampling["top_p"] or 1.0,
        )  # fmt: skip
    # generate pads a row after its end-of-sequence token until the batch's last row ends; the loop stops the row.
    expected = [ids[: ids.index(eos) + 1] if eos in ids else ids for ids in reference]
    assert pruned == expected
    lengths = {len(ids) for ids in pruned}
    assert len(lengths) > 1 and min(lengths) < 48  # rows ended at different steps: the loop dropped some early
    if sampling["do_sample"]:
        assert len({tuple(ids) for ids in pruned[:k]}) > 1  # the k samples of a prompt differ: it did sample


def test_a_generation_config_with_a_logits_processor_decodes_through_generate(model_and_items):
    model = model_and_items[0]
    assert pruned_decoding_applies(model) and pruned_decoding_applies(model, sampling=True)
    penalised = copy.deepcopy(model)
    penalised.generation_config.repetition_penalty = 1.3  # changes greedy's choice: only `generate` applies it
    assert not pruned_decoding_applies(penalised) and not pruned_decoding_applies(penalised, sampling=True)
    typical = copy.deepcopy(model)
    typical.generation_config.typical_p = 0.9  # a warper only sampling applies
    assert pruned_decoding_applies(typical) and not pruned_decoding_applies(typical, sampling=True)


@pytest.mark.parametrize("scale", [0.5, 3.0, 12.0])  # flat, peaked and nearly one-hot rows
@pytest.mark.parametrize("block_cells", [1 << 18, 1000])  # the whole table in one block, and a few rows a block
def test_multinomial_draws_the_tokens_and_leaves_the_random_state_of_torch_multinomial(scale, block_cells, monkeypatch):
    assert exact_multinomial()  # this torch draws as multinomial's docstring says: the fast way is the one tested
    monkeypatch.setattr(sftdpo.generation, "MULTINOMIAL_BLOCK_CELLS", block_cells)
    generator = torch.Generator()
    for seed in range(20):
        generator.manual_seed(seed)
        probs = torch.randn(64, 268, generator=generator).mul(scale).softmax(-1)
        probs[seed % 64, 7:] = 0  # a row top-p left a few tokens
        probs[(seed + 1) % 64] = 1.0  # an ended row's placeholder
        start = generator.get_state()
        expected = torch.multinomial(probs, 1, generator=generator).squeeze(1)
        after = generator.get_state()
        generator.set_state(start)
        assert torch.equal(multinomial(probs, generator=generator), expected)
        assert torch.equal(generator.get_state(), after)
    torch.manual_seed(3)  # the default generator, as pruned decoding draws
    expected = torch.multinomial(probs, 1).squeeze(1)
    torch.manual_seed(3)
    assert torch.equal(multinomial(probs), expected)
    assert len(set(expected.tolist())) > 1


def test_multinomial_rejects_what_torch_multinomial_rejects():
    probs = torch.full((2, 5), 0.2)
    rejected = [(math.nan, "inf`, `nan` or element < 0"), (-0.1, "element < 0"), (0.0, "sum of probabilities")]
    for bad, message in rejected:
        table = probs.clone()
        table[1] = bad
        with pytest.raises(RuntimeError, match=message):
            multinomial(table)
        with pytest.raises(RuntimeError, match=message):
            torch.multinomial(table, 1)


def test_a_close_row_is_decided_with_c_log1p_as_torch_kernel_decides_it():
    """u0's exponential is one float32 step apart between torch's vectorised log1p and C's (the kernel's); u1's
    is C's value of u0 either way. Equal probabilities: the kernel sees a tie (first token), the vectorised
    values alone would pick the second."""
    u0, u1 = 0.22339153135339834, 0.22339153135339831
    uniforms = torch.tensor([[u0, u1, 0.5]], dtype=torch.float64)
    probs = torch.tensor([[0.5, 0.5, 0.0]])
    kernel = torch.tensor([[-1.0 * math.log1p(-u) for u in uniforms[0].tolist()]], dtype=torch.float64).float()
    vectorised = (-torch.log1p(-uniforms)).float()
    if not (kernel[0, 0] == kernel[0, 1] and vectorised[0, 0] != kernel[0, 0]):  # the case this test is about
        pytest.skip("this torch's vectorised log1p agrees with C's on u0 (another CPU's SIMD path): no such case here")
    assert int((probs / vectorised).argmax()) == 1 and int((probs / kernel).argmax()) == 0
    assert best_ratios(probs, uniforms).tolist() == [0]
    assert torch.equal(uniforms, torch.tensor([[u0, u1, 0.5]], dtype=torch.float64))  # the uniforms are not changed
