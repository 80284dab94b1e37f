"""`sft.train.extra` / `dpo.train.extra`: any other field of TRL's SFTConfig / DPOConfig, checked against its fields."""

import pytest

from conftest import train_settings
from sftdpo.training import trainer_config


def test_extra_fields_reach_the_trl_config(tmp_path):
    from trl import DPOConfig, SFTConfig

    train = train_settings(extra={"max_grad_norm": 0.25, "optim": "adamw_torch", "adam_beta2": 0.95})
    args = trainer_config(SFTConfig, "sft.train", train, tmp_path, 0, evaluate=False, packing=False)
    assert (args.max_grad_norm, args.optim, args.adam_beta2, args.packing) == (0.25, "adamw_torch", 0.95, False)
    args = trainer_config(DPOConfig, "dpo.train", train_settings(extra={"ld_alpha": 0.5}), tmp_path, 0,
                          evaluate=False, beta=0.3)  # fmt: skip
    assert (args.ld_alpha, args.beta, args.max_steps) == (0.5, 0.3, 2)


@pytest.mark.parametrize(
    "extra, message",
    [
        (
            {"max_grad_nrom": 1.0},
            "sft.train.extra: max_grad_nrom is not a field of TRL's SFTConfig (did you mean max_grad_norm",
        ),
        ({"learning_rate": 1.0}, "sft.train.extra: learning_rate is set by sftdpo from its own keys"),
        ({"packing": True}, "sft.train.extra: packing is set by sftdpo from its own keys"),
        ({"beta": 0.2}, "sft.train.extra: beta is not a field of TRL's SFTConfig"),
    ],
)
def test_unknown_or_owned_fields_stop_with_the_key(tmp_path, extra, message):
    from trl import SFTConfig

    with pytest.raises(ValueError) as err:
        trainer_config(SFTConfig, "sft.train", train_settings(extra=extra), tmp_path, 0, evaluate=False, packing=False)
    assert str(err.value).startswith(message)


def test_the_last_step_writes_no_checkpoint_the_steps_before_do(tmp_path):
    """run_training saves the model after training and deletes the checkpoints: Trainer's checkpoint of the last
    step (model, optimizer, scheduler) would be written for nothing. A real Trainer, 4 steps, a checkpoint every 2."""
    from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainingArguments

    from sftdpo.training import no_last_step_checkpoint

    config = LlamaConfig(vocab_size=16, hidden_size=8, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2,
                         num_key_value_heads=2, max_position_embeddings=8)  # fmt: skip
    rows = [{"input_ids": [1, 2, 3, 4], "labels": [1, 2, 3, 4]}] * 8
    written = {}
    for name, callbacks in (("trainer's default", []), ("sftdpo", [no_last_step_checkpoint()])):
        args = TrainingArguments(
            output_dir=str(tmp_path / name), max_steps=4, save_steps=2, save_strategy="steps",
            per_device_train_batch_size=2, use_cpu=True, report_to="none", disable_tqdm=True,
        )  # fmt: skip
        Trainer(model=LlamaForCausalLM(config), args=args, train_dataset=rows, callbacks=callbacks).train()
        written[name] = sorted(p.name for p in (tmp_path / name).glob("checkpoint-*"))
    assert written == {"trainer's default": ["checkpoint-2", "checkpoint-4"], "sftdpo": ["checkpoint-2"]}


def test_a_batch_s_real_loss_bearing_and_padded_tokens():
    import torch

    from sftdpo.sft import batch_tokens

    batch = {
        "input_ids": torch.tensor([[5, 6, 7, 0], [8, 9, 0, 0]]),
        "attention_mask": torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]]),
        "labels": torch.tensor([[-100, 6, 7, -100], [-100, 9, -100, -100]]),
    }
    assert batch_tokens(batch) == {"real": 5, "loss": 3, "padded": 8}
    packed = {"input_ids": torch.tensor([[5, 6, 7, 8, 9]]), "labels": torch.tensor([[-100, 6, 7, -100, 9]])}
    assert batch_tokens(packed) == {"real": 5, "loss": 3, "padded": 5}  # padding-free: no mask, every token real


def test_training_runs_with_the_heap_frozen_and_hands_it_back(tmp_path):
    """run_training trains with the objects alive before it out of the cyclic collector's sight (Trainer's own full
    collection before the first step then skips them), and hands them back after: garbage from before is freed."""
    import gc
    import weakref

    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast, Trainer, TrainerCallback
    from transformers import TrainingArguments
    from tokenizers import Tokenizer, models

    from sftdpo.training import frozen_heap, run_training

    class Node:
        pass

    gc.disable()  # the garbage below stays until a collection is asked for
    try:
        node = Node()
        node.me = node
        garbage = weakref.ref(node)
        del node
        with frozen_heap():
            gc.collect()
            assert garbage() is not None and gc.get_freeze_count() > 10_000  # out of sight, with everything else
        assert gc.get_freeze_count() == 0
        gc.collect()
        assert garbage() is None
    finally:
        gc.enable()

    class FreezeSeen(TrainerCallback):
        counts: list = []

        def on_step_begin(self, args, state, control, **kwargs):
            self.counts.append(gc.get_freeze_count())

    config = LlamaConfig(vocab_size=16, hidden_size=8, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2,
                         num_key_value_heads=2, max_position_embeddings=8)  # fmt: skip
    args = TrainingArguments(output_dir=str(tmp_path / "ckpt"), max_steps=2, per_device_train_batch_size=2,
                             use_cpu=True, report_to="none", disable_tqdm=True, run_name="frozen")  # fmt: skip
    rows = [{"input_ids": [1, 2, 3, 4], "labels": [1, 2, 3, 4]}] * 4
    trainer = Trainer(model=LlamaForCausalLM(config), args=args, train_dataset=rows, callbacks=[FreezeSeen()])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"a": 0, "<unk>": 1}, "<unk>")))
    metrics = run_training(trainer, tmp_path / "ckpt", str(tmp_path / "out"), tokenizer, "sft", inputs={}, config={},
                           tracking_dir=str(tmp_path / "tracking"))  # fmt: skip
    assert metrics["global_step"] == 2 and (tmp_path / "out/model.safetensors").exists()
    assert len(FreezeSeen.counts) == 2 and min(FreezeSeen.counts) > 10_000 and gc.get_freeze_count() == 0
