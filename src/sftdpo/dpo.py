"""DPO with TRL's DPOTrainer, starting from the SFT model; the reference is the SFT model, unmerged.

- SFT wrote a LoRA adapter: the adapter is loaded trainable and TRL keeps a frozen copy of it as the
  reference adapter ("ref").
- SFT wrote a full model (the scratch default): a new LoRA adapter is trained on top of it
  (`dpo.lora`), so the reference is the same model with adapters disabled. With `dpo.lora: null`
  the whole model is trained against a frozen copy.

Losses (`dpo.loss_type`, a list, weighted by `dpo.loss_weights`): any of TRL's (`sigmoid`, `ipo`,
`robust`, `hinge`, ...; `sft` is the NLL of the chosen completion, so `[sigmoid, sft]` is RPO), plus two
that TRL lacks, computed here by `PreferenceTrainer` (then every term must be one of DPO_OWN_LOSSES):
- `dpop`, DPO-Positive (Pal et al. 2024): sigmoid DPO with a penalty λ·max(0, log π_ref(y_w) − log π(y_w))
  inside the sigmoid (λ = `dpo.dpop_lambda`), so the chosen likelihood cannot fall below the reference's,
  the failure of plain DPO on pairs that share most of their tokens;
- `cdpo`, conservative DPO (Mitchell 2023): sigmoid DPO with label smoothing ε = `dpo.label_smoothing`.

Pairs come with a `split`: DPO trains on the train prompts' pairs and evaluates on the val prompts'
pairs (held out), so every curve has a train and a held-out line; `diagnostics` says whether the chosen
log-probability fell below the reference's.
"""

from __future__ import annotations

import copy
import logging
from typing import Any

import pandas as pd

from sftdpo.config_checks import DPO_NOT_IN_TRL, DPO_OWN_LOSSES, loss_problems
from sftdpo.io import file_digest, read_parquet, write_json
from sftdpo.modeling import check_rendering, load_model, load_tokenizer
from sftdpo.plots import plot_panels
from sftdpo.training import checkpoint_dir, lora_config, run_training, trainer_config

log = logging.getLogger(__name__)


def uses_own_losses(loss_type: list[str], loss_weights: list[float] | None) -> bool:
    """Whether sftdpo computes the loss (a term TRL lacks is asked for) instead of TRL."""
    problems = loss_problems(loss_type, loss_weights)
    if problems:
        raise ValueError("; ".join(problems))
    return any(t in DPO_NOT_IN_TRL for t in loss_type)


def preference_loss(
    loss_type: list[str],
    loss_weights: list[float] | None,
    *,
    chosen_logps,
    rejected_logps,
    ref_chosen_logps,
    ref_rejected_logps,
    chosen_nll,
    beta: float,
    label_smoothing: float,
    dpop_lambda: float,
):
    """The weighted sum of the terms in DPO_OWN_LOSSES, from sequence log-probs (summed over completion tokens)
    of the policy and the reference, and the chosen completions' mean per-token NLL (the `sft` term)."""
    import torch.nn.functional as F

    weights = loss_weights or [1.0] * len(loss_type)
    chosen_logratios = chosen_logps - ref_chosen_logps
    rejected_logratios = rejected_logps - ref_rejected_logps
    delta = beta * (chosen_logratios - rejected_logratios)
    loss = 0.0
    for term, weight in zip(loss_type, weights, strict=True):
        if term == "sigmoid":
            per_pair = -F.logsigmoid(delta)
        elif term == "cdpo":
            per_pair = -(1 - label_smoothing) * F.logsigmoid(delta) - label_smoothing * F.logsigmoid(-delta)
        elif term == "dpop":
            penalty = (ref_chosen_logps - chosen_logps).clamp(min=0)
            per_pair = -F.logsigmoid(delta - beta * dpop_lambda * penalty)
        elif term == "sft":
            per_pair = chosen_nll
        else:
            raise ValueError(f"unknown loss term {term!r}; sftdpo computes {list(DPO_OWN_LOSSES)}")
        loss = loss + weight * per_pair.mean()
    return loss


def preference_trainer_class():
    """TRL's DPOTrainer, with the loss computed by `preference_loss` when asked (`own_losses`)."""
    from trl import DPOTrainer

    class PreferenceTrainer(DPOTrainer):
        def __init__(self, *args, own_losses: bool, dpop_lambda: float, **kwargs):
            super().__init__(*args, **kwargs)
            self.own_losses, self.dpop_lambda = own_losses, dpop_lambda

        def _compute_loss(self, model, inputs, return_outputs):
            if not self.own_losses:
                return super()._compute_loss(model, inputs, return_outputs)
            mode = "train" if self.model.training else "eval"
            # As TRL computes it: one forward over [chosen; rejected], log-probs of the completion tokens only.
            completion_mask = inputs["completion_mask"]
            model_kwargs = {k: v for k, v in inputs.items() if k not in ("completion_mask", "ref_chosen_logps",
                                                                          "ref_rejected_logps")}  # fmt: skip
            labels = inputs["input_ids"].masked_fill(completion_mask == 0, -100)
            outputs = model(**model_kwargs, use_cache=False, labels=labels, fused_lm_head=True)
            mask = completion_mask[..., 1:]
            per_token = outputs.log_probs[:, -mask.size(1) :] * mask
            chosen_logps, rejected_logps = per_token.sum(dim=1).chunk(2, dim=0)
            chosen_mask = mask.chunk(2, dim=0)[0].bool()
            chosen_nll = -per_token.chunk(2, dim=0)[0][chosen_mask].mean()
            ref_chosen, ref_rejected = inputs["ref_chosen_logps"], inputs["ref_rejected_logps"]
            loss = preference_loss(
                self.loss_types, self.loss_weights, chosen_logps=chosen_logps, rejected_logps=rejected_logps,
                ref_chosen_logps=ref_chosen, ref_rejected_logps=ref_rejected, chosen_nll=chosen_nll,
                beta=self.beta, label_smoothing=self.label_smoothing, dpop_lambda=self.dpop_lambda,
            )  # fmt: skip
            chosen_rewards = self.beta * (chosen_logps - ref_chosen).detach()
            rejected_rewards = self.beta * (rejected_logps - ref_rejected).detach()
            gather = self.accelerator.gather
            for key, value in (
                ("rewards/chosen", chosen_rewards),
                ("rewards/rejected", rejected_rewards),
                ("rewards/accuracies", (chosen_rewards > rejected_rewards).float()),
                ("rewards/margins", chosen_rewards - rejected_rewards),
                ("logps/chosen", chosen_logps.detach()),
                ("logps/rejected", rejected_logps.detach()),
            ):
                self._metrics[mode][key].append(gather(value).mean().item())
            return (loss, outputs) if return_outputs else loss

    return PreferenceTrainer


def likelihood_diagnostics(history: list[dict[str, Any]], beta: float) -> dict[str, Any]:
    """Did the chosen log-probability fall? Policy vs reference log-probs of chosen and rejected, first and
    last logged, on train pairs and on held-out pairs (`eval_` keys). Reference = policy − reward / β."""
    out: dict[str, Any] = {}
    for name, prefix in (("train", ""), ("heldout", "eval_")):
        rows = [h for h in history if f"{prefix}logps/chosen" in h and f"{prefix}rewards/chosen" in h]
        if not rows:
            continue
        first, last = rows[0], rows[-1]
        chosen_ratio = last[f"{prefix}rewards/chosen"] / beta
        rejected_ratio = last[f"{prefix}rewards/rejected"] / beta
        out[name] = {
            "steps": [first["step"], last["step"]],
            "policy_chosen_logp": [first[f"{prefix}logps/chosen"], last[f"{prefix}logps/chosen"]],
            "reference_chosen_logp": last[f"{prefix}logps/chosen"] - chosen_ratio,
            "policy_rejected_logp": [first[f"{prefix}logps/rejected"], last[f"{prefix}logps/rejected"]],
            "reference_rejected_logp": last[f"{prefix}logps/rejected"] - rejected_ratio,
            "chosen_logratio": chosen_ratio,
            "rejected_logratio": rejected_ratio,
            "reward_accuracy": last[f"{prefix}rewards/accuracies"],
            "reward_margin": last[f"{prefix}rewards/margins"],
            "chosen_likelihood_fell": chosen_ratio < 0,
        }
    main = out.get("heldout") or out.get("train")
    if main:
        where = "held-out" if "heldout" in out else "train"
        fell = "fell" if main["chosen_likelihood_fell"] else "did not fall"
        out["verdict"] = (
            f"on {where} pairs the chosen completions' log-probability {fell} below the reference "
            f"({main['chosen_logratio']:+.2f} nats per pair; rejected {main['rejected_logratio']:+.2f}), "
            f"reward accuracy {main['reward_accuracy']:.2f}"
        )
    return out


# The curves a person needs to see whether DPO works: one panel a quantity, train and held-out lines.
PANELS = [
    ("log-prob of chosen / rejected (nats per completion)", ["logps/chosen", "logps/rejected"]),
    ("NLL of chosen (nats per completion)", ["nll/chosen"]),
    ("reward margin  β·(log-ratio chosen − rejected)", ["rewards/margins"]),
    ("reward accuracy", ["rewards/accuracies"]),
    ("chosen / rejected log-ratio to the reference × β", ["rewards/chosen", "rewards/rejected"]),
    ("loss", ["loss"]),
]


def curve_history(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The log history with the derived `nll/chosen` (= −logps/chosen), train and held-out."""
    out = []
    for h in history:
        h = dict(h)
        for prefix in ("", "eval_"):
            if f"{prefix}logps/chosen" in h:
                h[f"{prefix}nll/chosen"] = -h[f"{prefix}logps/chosen"]
        out.append(h)
    return out


def train_dpo(
    *,
    sft_dir: str,
    pairs_path: str,
    out_dir: str,
    metrics_path: str,
    curve_path: str,
    work_dir: str,
    tracking_dir: str,
    train: dict[str, Any],
    beta: float,
    loss_type: list[str],
    loss_weights: list[float] | None,
    label_smoothing: float,
    dpop_lambda: float,
    lora: dict[str, Any] | None,
    seed: int,
    conversion_path: str | None = None,
) -> dict[str, Any]:
    """`conversion_path`: convert.json, whose tokenizer rendering the SFT model's must match (None: no check)."""
    from datasets import Dataset
    from trl import DPOConfig

    own_losses = uses_own_losses(loss_type, loss_weights)
    tokenizer = load_tokenizer(sft_dir)
    check_rendering(tokenizer, sft_dir, conversion_path)
    model = load_model(sft_dir, trainable_adapter=True)
    pairs = read_parquet(pairs_path)
    # Pairs without a `split` column (made elsewhere) are all training pairs.
    split = pairs["split"] if "split" in pairs else pd.Series("train", index=pairs.index)
    datasets = {
        name: Dataset.from_dict(
            {c: [list(v) for v in pairs.loc[split == s, c]] for c in ("prompt", "chosen", "rejected")}
        )
        for name, s in (("train", "train"), ("heldout", "val"))
    }
    heldout = datasets["heldout"] if len(datasets["heldout"]) else None
    settings = {
        "train": train,
        "beta": beta,
        "loss_type": loss_type,
        "loss_weights": loss_weights,
        "label_smoothing": label_smoothing,
        "dpop_lambda": dpop_lambda,
        "lora": lora,
        "seed": seed,
    }
    inputs = {"SFT model": sft_dir, "pairs": pairs_path}
    ckpt = checkpoint_dir(work_dir, {**settings, "inputs": [file_digest(p) for p in inputs.values()]}, "sftdpo.dpo")
    args = trainer_config(
        DPOConfig,
        "dpo.train",
        train,
        ckpt,
        seed,
        evaluate=heldout is not None,
        beta=beta,
        loss_type=loss_type,
        loss_weights=loss_weights,
        label_smoothing=label_smoothing,
        # sftdpo's own losses read the reference log-probs from the batch.
        precompute_ref_log_probs=own_losses,
    )
    is_adapter = hasattr(model, "peft_config")
    kwargs: dict[str, Any] = {}
    if not is_adapter and lora:
        kwargs["peft_config"] = lora_config(lora)
    elif not is_adapter:
        kwargs["ref_model"] = copy.deepcopy(model).eval()
    trainer = preference_trainer_class()(
        model=model, args=args, train_dataset=datasets["train"], eval_dataset=heldout, processing_class=tokenizer,
        own_losses=own_losses, dpop_lambda=dpop_lambda, **kwargs,
    )  # fmt: skip
    log.info(
        "DPO: %d pairs, %d held-out pairs, loss %s, reference = %s",
        len(datasets["train"]),
        len(datasets["heldout"]),
        loss_type,
        "SFT adapter copy" if is_adapter else "SFT model, adapters disabled" if lora else "frozen SFT copy",
    )
    metrics = run_training(
        trainer, ckpt, out_dir, tokenizer, "dpo", inputs=inputs, config=settings, tracking_dir=tracking_dir
    )
    metrics.update(
        n_pairs=len(datasets["train"]),
        n_heldout_pairs=len(datasets["heldout"]),
        beta=beta,
        loss_type=loss_type,
        loss_weights=loss_weights,
        label_smoothing=label_smoothing,
        dpop_lambda=dpop_lambda,
        train=train,
        seed=seed,
        start_model=sft_dir,  # also the reference: the SFT model, or the previous round's DPO model
    )
    history = metrics["log_history"]
    for key in ("rewards/accuracies", "rewards/margins", "loss", "eval_rewards/accuracies", "eval_loss"):
        values = [h[key] for h in history if key in h]
        metrics[f"final_{key.replace('/', '_')}"] = values[-1] if values else None
    metrics["diagnostics"] = likelihood_diagnostics(history, beta)
    if "verdict" in metrics["diagnostics"]:
        log.info("DPO diagnostics: %s", metrics["diagnostics"]["verdict"])
    plot_panels(curve_history(history), PANELS, curve_path, "DPO: train (solid) and held-out pairs (dashed)")
    write_json(metrics, metrics_path)
    return metrics
