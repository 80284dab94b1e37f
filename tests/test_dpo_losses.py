"""DPO losses (issue 9): sftdpo's own terms against hand-computed values, its trainer against TRL's on a real
batch of a tiny model, and TRL's IPO against a hand computation from the model's raw logits."""

import math

import pytest
import torch

from conftest import scratch_base_model
from sftdpo.dpo import likelihood_diagnostics, preference_loss, preference_trainer_class
from sftdpo.modeling import load_model, load_tokenizer
from sftdpo.tasks import get_task

BETA, EPS, LAMBDA = 0.1, 0.2, 50.0


def log_sigmoid(x):
    return -math.log1p(math.exp(-x))


def toy():
    return dict(
        chosen_logps=torch.tensor([-3.0, -5.0]),
        rejected_logps=torch.tensor([-4.0, -4.5]),
        ref_chosen_logps=torch.tensor([-3.5, -4.0]),
        ref_rejected_logps=torch.tensor([-3.8, -4.2]),
        chosen_nll=torch.tensor(0.7),
        beta=BETA,
        label_smoothing=EPS,
        dpop_lambda=LAMBDA,
    )


# Per pair: chosen log-ratio 0.5 / -1.0, rejected log-ratio -0.2 / -0.3, so beta * delta = 0.07 / -0.07.
DELTAS = [BETA * (0.5 - -0.2), BETA * (-1.0 - -0.3)]
# DPO-Positive: the second pair's chosen fell 1.0 below the reference: penalty beta * lambda * 1.0 = 5.
DPOP = [DELTAS[0], DELTAS[1] - BETA * LAMBDA * 1.0]
EXPECTED = {
    "sigmoid": sum(-log_sigmoid(d) for d in DELTAS) / 2,
    "cdpo": sum(-(1 - EPS) * log_sigmoid(d) - EPS * log_sigmoid(-d) for d in DELTAS) / 2,
    "dpop": sum(-log_sigmoid(d) for d in DPOP) / 2,
    "sft": 0.7,
}


@pytest.mark.parametrize("term", sorted(EXPECTED))
def test_each_term_matches_the_hand_computed_value(term):
    assert preference_loss([term], None, **toy()).item() == pytest.approx(EXPECTED[term], rel=1e-6)


def test_terms_are_weighted_and_summed():
    loss = preference_loss(["sigmoid", "sft"], [1.0, 0.5], **toy()).item()
    assert loss == pytest.approx(EXPECTED["sigmoid"] + 0.5 * 0.7, rel=1e-6)
    # DPO-Positive is plain DPO while the chosen likelihood stays above the reference's.
    assert preference_loss(["dpop"], None, **{**toy(), "dpop_lambda": 0.0}).item() == pytest.approx(EXPECTED["sigmoid"])


@pytest.fixture(scope="module")
def trainer(tmp_path_factory):
    """A DPO trainer over a tiny model, with a different tiny model as the reference (so log-ratios are not 0)."""
    from datasets import Dataset
    from trl import DPOConfig

    root = tmp_path_factory.mktemp("dpo_losses")
    task = get_task("arithmetic")
    problems = task.problems(16, seed=0)
    policy_dir = scratch_base_model(root / "policy", task, problems)
    reference = load_model(scratch_base_model(root / "reference", task, problems, layers=2))
    pairs = Dataset.from_dict(
        {
            "prompt": [[{"role": "user", "content": p.prompt}] for p in problems[:4]],
            "chosen": [[{"role": "assistant", "content": task.solve(p)}] for p in problems[:4]],
            "rejected": [[{"role": "assistant", "content": "#### 0"}] for p in problems[:4]],
        }
    )
    args = DPOConfig(
        output_dir=str(root / "out"), per_device_train_batch_size=4, use_cpu=True, bf16=False, report_to="none",
        max_length=48, beta=BETA, loss_type=["sigmoid"], precompute_ref_log_probs=True, label_smoothing=EPS,
    )  # fmt: skip
    tokenizer = load_tokenizer(policy_dir)
    trainer = preference_trainer_class()(
        model=load_model(policy_dir), ref_model=reference, args=args, train_dataset=pairs, processing_class=tokenizer,
        own_losses=False, dpop_lambda=LAMBDA,
    )  # fmt: skip
    batch = next(iter(trainer.get_train_dataloader()))
    return trainer, batch


def loss_of(trainer, batch, loss_types, *, own):
    trainer.loss_types, trainer.loss_weights, trainer.own_losses = loss_types, [1.0] * len(loss_types), own
    with torch.no_grad():
        return trainer.compute_loss(trainer.model, batch).item()


def sequence_logps(model, batch):
    """Summed log-probs of the completion tokens, from the model's raw logits (no TRL code)."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    targets = batch["input_ids"][:, 1:]
    token_logps = torch.log_softmax(logits.float(), dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    mask = batch["completion_mask"][:, 1:]
    return (token_logps * mask).sum(dim=1), mask


def test_own_trainer_equals_trl_on_shared_terms(trainer):
    trainer, batch = trainer
    for terms in (["sigmoid"], ["sigmoid", "sft"]):
        assert loss_of(trainer, batch, terms, own=True) == pytest.approx(
            loss_of(trainer, batch, terms, own=False), rel=1e-5
        )
    sigmoid = loss_of(trainer, batch, ["sigmoid"], own=True)
    assert loss_of(trainer, batch, ["cdpo"], own=True) != pytest.approx(sigmoid)  # label smoothing EPS changes it
    # By hand from raw logits: the policy's log-probs, the reference's from the batch (precomputed by TRL).
    with torch.no_grad():
        logps, _ = sequence_logps(trainer.model, batch)
    chosen, rejected = logps.chunk(2)
    delta = BETA * ((chosen - batch["ref_chosen_logps"]) - (rejected - batch["ref_rejected_logps"]))
    assert sigmoid == pytest.approx((-torch.nn.functional.logsigmoid(delta)).mean().item(), rel=1e-5)
    penalty = (batch["ref_chosen_logps"] - chosen).clamp(min=0)
    assert (penalty > 0).any() and (delta != 0).all()  # the batch exercises the DPO-Positive penalty
    dpop = (-torch.nn.functional.logsigmoid(delta - BETA * LAMBDA * penalty)).mean().item()
    assert loss_of(trainer, batch, ["dpop"], own=True) == pytest.approx(dpop, rel=1e-5)


def test_trl_ipo_matches_the_hand_computed_value(trainer):
    trainer, batch = trainer
    with torch.no_grad():
        logps, _ = sequence_logps(trainer.model, batch)
    chosen, rejected = logps.chunk(2)
    # TRL's IPO: log-ratios averaged per completion token, squared distance to 1 / (2 beta).
    lengths = batch["completion_mask"].sum(dim=1).clamp(min=1).chunk(2)
    ipo_delta = (chosen - batch["ref_chosen_logps"]) / lengths[0] - (rejected - batch["ref_rejected_logps"]) / lengths[
        1
    ]
    expected = ((ipo_delta - 1 / (2 * BETA)) ** 2).mean().item()
    assert loss_of(trainer, batch, ["ipo"], own=False) == pytest.approx(expected, rel=1e-5)


def test_diagnostics_say_whether_the_chosen_likelihood_fell():
    history = [
        {"step": 10, "logps/chosen": -5.0, "logps/rejected": -6.0, "rewards/chosen": 0.0, "rewards/rejected": 0.0,
         "rewards/accuracies": 0.5, "rewards/margins": 0.0},
        {"step": 20, "eval_logps/chosen": -5.5, "eval_logps/rejected": -9.0, "eval_rewards/chosen": -0.05,
         "eval_rewards/rejected": -0.3, "eval_rewards/accuracies": 0.9, "eval_rewards/margins": 0.25},
        {"step": 20, "logps/chosen": -4.0, "logps/rejected": -8.0, "rewards/chosen": 0.1, "rewards/rejected": -0.2,
         "rewards/accuracies": 1.0, "rewards/margins": 0.3},
    ]  # fmt: skip
    out = likelihood_diagnostics(history, beta=0.1)
    assert out["train"]["chosen_likelihood_fell"] is False and out["train"]["policy_chosen_logp"] == [-5.0, -4.0]
    held = out["heldout"]
    assert held["chosen_likelihood_fell"] is True and held["chosen_logratio"] == pytest.approx(-0.5)
    assert held["reference_chosen_logp"] == pytest.approx(-5.0) and held["reference_rejected_logp"] == pytest.approx(
        -6.0
    )
    assert out["verdict"].startswith("on held-out pairs the chosen completions' log-probability fell below")
