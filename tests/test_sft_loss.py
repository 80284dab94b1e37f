"""SFT's loss through the model's own head (`sftdpo.sft.plain_loss_applies`) against TRL's fused head: the same loss,
gradients and logged metrics; its padded batches (`PaddedBatches`) and prepared rows (`trainer_rows`) against TRL's
own; on a real SFTTrainer and a tiny Llama."""

import pytest


def tiny_trainer(tmp_path, data_collator=None, **config):
    import torch
    from datasets import Dataset
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
    from trl import SFTConfig, SFTTrainer

    from sftdpo.sft import sft_trainer

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=12, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=2, max_position_embeddings=32, pad_token_id=0,
    ))  # fmt: skip
    generator = torch.Generator().manual_seed(1)
    rows = []
    for _ in range(24):  # prompts and completions of different lengths: padded batches, a loss on part of each row
        prompt, answer = (int(n) for n in torch.randint(2, 8, (2,), generator=generator))
        ids = torch.randint(1, 12, (prompt + answer,), generator=generator).tolist()
        rows.append({"input_ids": ids, "completion_mask": [0] * prompt + [1] * answer})
    from tokenizers import Tokenizer, models

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel({f"t{i}": i for i in range(12)}, unk_token="t1")),
        pad_token="t0", eos_token="t1",
    )  # fmt: skip
    args = SFTConfig(
        output_dir=str(tmp_path), max_steps=2, use_cpu=True, report_to="none", save_strategy="no", max_length=16,
        per_device_train_batch_size=8, per_device_eval_batch_size=8, completion_only_loss=True, packing=False,
        **config,
    )  # fmt: skip
    trainer = sft_trainer(SFTTrainer)(model=model, args=args, train_dataset=Dataset.from_list(rows),
                                      processing_class=tokenizer, data_collator=data_collator)  # fmt: skip
    return trainer, list(trainer.get_train_dataloader())


def loss_grads_metrics(trainer, batches, mode):
    """Per batch: the loss, the gradients and what the step logged (train) or evaluating it logged (eval)."""
    model = trainer.model.train(mode == "train")
    results = []
    for batch in batches:
        trainer._metrics[mode].clear()
        model.zero_grad()
        n_items = (batch["labels"][:, 1:] != -100).sum()
        loss = trainer.compute_loss(model, dict(batch), num_items_in_batch=n_items)
        loss.backward()
        grads = [p.grad.clone() for p in model.parameters()]
        results.append((loss.item(), grads, {k: v[-1] for k, v in trainer._metrics[mode].items()}))
    return results


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_the_plain_loss_is_trls_loss_gradients_and_metrics(tmp_path, monkeypatch, mode):
    import torch
    from trl import SFTTrainer

    trainer, batches = tiny_trainer(tmp_path)
    assert trainer.plain_loss  # on the CPU, 8 x 16 x 12 float32 logits
    trainer.plain_loss = False
    trl_results = loss_grads_metrics(trainer, batches, mode)
    trainer.plain_loss, trainer._total_train_tokens = True, 0

    def not_trls(*args, **kwargs):
        raise AssertionError("TRL's compute_loss ran")

    monkeypatch.setattr(SFTTrainer, "compute_loss", not_trls)
    plain_results = loss_grads_metrics(trainer, batches, mode)
    assert len(plain_results) == 3
    accuracies = []
    for (trl_loss, trl_grads, trl_logged), (loss, grads, logged) in zip(trl_results, plain_results):
        assert loss == pytest.approx(trl_loss, rel=1e-6)
        for trl_grad, grad in zip(trl_grads, grads):
            torch.testing.assert_close(grad, trl_grad, rtol=1e-4, atol=1e-6)
        assert logged.keys() == trl_logged.keys() == {"entropy", "mean_token_accuracy", "num_tokens"}
        assert logged["entropy"] == pytest.approx(trl_logged["entropy"], rel=1e-6)
        assert logged["mean_token_accuracy"] == pytest.approx(trl_logged["mean_token_accuracy"], rel=1e-6)
        assert logged["num_tokens"] == trl_logged["num_tokens"]
        accuracies.append(logged["mean_token_accuracy"])
    assert 2.0 < plain_results[0][2]["entropy"] < 2.5  # about ln(12): an untrained model's
    assert any(0 < a < 1 for a in accuracies)  # a metric that tells right from wrong
    expected_tokens = sum(int(b["attention_mask"].sum()) for b in batches) if mode == "train" else 0
    assert plain_results[-1][2]["num_tokens"] == expected_tokens


def test_the_plain_loss_applies_on_the_cpu_to_small_padded_logits(tmp_path):
    from types import SimpleNamespace

    from sftdpo.sft import PLAIN_LOSS_MAX_LOGITS_MB, plain_loss_applies

    trainer, _ = tiny_trainer(tmp_path)
    model, args = trainer.model, trainer.args
    assert plain_loss_applies(model, args)
    # the default's (vocabulary 268, batches of 32 x 96) and a real model's (Qwen2.5's 151,936 words, 32 x 96: 1.8 GB)
    for vocab_size, applies in ((268, True), (151_936, False)):
        model.config.vocab_size = vocab_size
        assert (
            plain_loss_applies(model, SimpleNamespace(**{**vars(args), "per_device_train_batch_size": 32})) == applies
        )
    model.config.vocab_size = 12
    largest = int(PLAIN_LOSS_MAX_LOGITS_MB * 2**20 / 4 / (16 * 12))
    for batch_size, applies in ((largest, True), (largest + 1, False)):
        assert (
            plain_loss_applies(model, SimpleNamespace(**{**vars(args), "per_device_eval_batch_size": batch_size}))
            == applies
        )
    assert not plain_loss_applies(model, SimpleNamespace(**{**vars(args), "max_length": None}))
    assert not plain_loss_applies(model, SimpleNamespace(**{**vars(args), "padding_free": True}))
    model.to("meta")  # not the CPU
    assert not plain_loss_applies(model, args)


def test_another_loss_stays_trls(tmp_path):
    """A loss other than the plain negative log-likelihood (DFT) goes through TRL's compute_loss."""
    trainer, batches = tiny_trainer(tmp_path, loss_type="dft")
    calls = []
    fused = trainer.model.forward

    def spy(*args, **kwargs):
        calls.append(kwargs.get("fused_lm_head", False))
        return fused(*args, **kwargs)

    trainer.model.forward = spy
    assert trainer.plain_loss
    trainer.compute_loss(trainer.model, dict(batches[0]))
    trainer.args.loss_type = "nll"
    trainer.compute_loss(trainer.model, dict(batches[0]))
    assert calls == [True, False]


@pytest.mark.parametrize("multiple_of", [None, 8])
def test_padded_batches_are_trls_collators(tmp_path, multiple_of):
    """`PaddedBatches`: TRL's collator's batches (the same keys, dtypes and values), built in numpy, on the rows
    TRL's SFTTrainer prepared (labels -100 outside the completion)."""
    import random

    import torch
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    from sftdpo.sft import PaddedBatches

    trainer, batches = tiny_trainer(tmp_path, pad_to_multiple_of=multiple_of)
    collator = trainer.data_collator
    assert isinstance(collator, PaddedBatches) and type(collator.collator) is DataCollatorForLanguageModeling
    rows = trainer.train_dataset.to_list()
    assert all(-100 in row["labels"] and row["labels"][-1] == row["input_ids"][-1] for row in rows)  # prompt, answer
    sampler = random.Random(0)
    for size in (1, 3, 8, 24):
        examples = sampler.sample(rows, size)
        ours, trls = collator(examples), collator.collator(examples)
        assert ours.keys() == trls.keys() == {"input_ids", "labels", "attention_mask"}
        for key in trls:
            assert ours[key].dtype == trls[key].dtype == torch.int64
            assert torch.equal(ours[key], trls[key]), key
        width = max(len(row["input_ids"]) for row in examples)
        assert ours["input_ids"].shape == (size, -(-width // multiple_of) * multiple_of if multiple_of else width)
        assert int(ours["attention_mask"].sum()) == sum(len(row["input_ids"]) for row in examples)
    assert all(torch.equal(batch["labels"] != -100, batch["labels"] == batch["input_ids"]) for batch in batches)


def test_trls_other_batches_stay_trls(tmp_path):
    """Padding-free batches (and position ids) are TRL's collator's own; a collator given to the trainer is kept."""
    import torch

    from sftdpo.sft import PaddedBatches

    trainer, _ = tiny_trainer(tmp_path)
    rows = trainer.train_dataset.to_list()[:4]
    trainer.data_collator.collator.return_position_ids = True
    batch = trainer.data_collator(rows)
    assert torch.equal(batch["position_ids"][0, :3], torch.arange(3))
    trainer.data_collator.collator.padding_free = True
    batch = trainer.data_collator(rows)
    assert "attention_mask" not in batch and batch["input_ids"].shape == (1, sum(len(r["input_ids"]) for r in rows))
    assert batch["cu_seq_lens_q"].tolist()[:2] == [0, len(rows[0]["input_ids"])]

    def given(examples):
        return {"input_ids": torch.tensor([[1]])}

    trainer, _ = tiny_trainer(tmp_path, data_collator=given)
    assert trainer.data_collator is given and not isinstance(trainer.data_collator, PaddedBatches)


@pytest.mark.parametrize("truncation_mode", ["keep_start", "keep_end"])
@pytest.mark.parametrize("max_length", [None, 16, 6])
def test_trainer_rows_are_trls_prepared_rows(tmp_path, truncation_mode, max_length):
    """`trainer_rows` (SFT's rows prepared by sftdpo, TRL's preparation skipped) against TRL's `_prepare_dataset` on
    the same rows: the same labels, cuts and dropped rows (at 6 tokens, rows whose completion is cut off)."""
    import dataclasses
    import random

    from datasets import Dataset

    from sftdpo.sft import trainer_rows

    trainer, _ = tiny_trainer(tmp_path)
    sampler = random.Random(1)
    rows = []
    for _ in range(40):
        prompt, answer = sampler.randint(1, 9), sampler.randint(1, 6)
        ids = [sampler.randint(1, 11) for _ in range(prompt + answer)]
        mask = [0] * prompt + [1] * answer
        if sampler.random() < 0.2:  # a second assistant turn: ones, zeros, ones
            mask = [0] * prompt + [1] * (answer // 2) + [0] * (answer - answer // 2) + [1, 1]
            ids += [3, 4]
        rows.append({"input_ids": ids, "completion_mask": mask})
    args = dataclasses.replace(trainer.args, max_length=max_length, truncation_mode=truncation_mode)
    trls = trainer._prepare_dataset(Dataset.from_list(rows), trainer.processing_class, args, False, None, "train")
    ours, kept = trainer_rows(rows, max_length, truncation_mode)
    assert ours == trls.to_list()
    assert len(kept) == len(ours) and kept == sorted(set(kept))
    for i, row in zip(kept, ours):  # each kept row's ids: the start (keep_start) or end (keep_end) of its own
        n = len(row["input_ids"])
        own = rows[i]["input_ids"]
        assert row["input_ids"] == (own[:n] if truncation_mode == "keep_start" else own[-n:])
    if max_length == 6:
        assert 0 < len(ours) < len(rows) if truncation_mode == "keep_start" else len(ours) == len(rows)
    else:
        assert len(ours) == len(rows)
    assert all(len(r["input_ids"]) <= (max_length or 99) for r in ours)


def test_trainer_rows_name_an_unknown_truncation_mode():
    from sftdpo.sft import trainer_rows

    with pytest.raises(ValueError, match="truncation_mode: 'middle'"):
        trainer_rows([{"input_ids": [1, 2], "completion_mask": [0, 1]}], 1, "middle")
