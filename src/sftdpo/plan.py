"""The plan before submit (issue 14): per GPU rule, what it will cost and whether its request fits.

For each GPU rule (sft, rollouts, dpo, evaluate, evaluate_val) the plan gives, without running any job and
without loading weights:
- parameters: the model is built from its config on the meta device (`accelerate.init_empty_weights`), so the
  count is the real model's; the config comes from results/base/model when base_model ran, else the Hugging Face
  cache, else KNOWN_MODELS (public config.json values, marked so), and for `scratch` from `model.scratch` the
  way `sftdpo.modeling.build_scratch_model` builds it;
- trainable parameters: LoRA's r × (in + out) of every targeted nn.Linear (peft's count; `all-linear` is every
  Linear but the output layer), or all parameters;
- tokens: SFT max_steps × batch × grad_accum × GPUs × mean tokens a row; DPO the same × 2 (chosen and rejected);
  rollouts prompts × k × max_new_tokens per shard; evaluate items × max_new_tokens. Mean tokens a row come from
  results/data/convert.json when convert ran, else the config's max_length (an upper bound); item counts from
  results/data/split.json, else task.n_problems × split.fractions;
- memory per device (`training_memory`, `inference_memory`, formulas below; ESTIMATES);
- wall time = tokens × FLOPs per token / effective FLOP/s of the device kind (`DEVICES`; CPU measured here,
  GPUs datasheet peaks × an assumed utilisation; ESTIMATES);
- fit: the request in `<stage>.resources` (mem_mb = host RAM of the job, runtime in minutes) and the GPU's
  memory; a shortfall is a warning that names the number needed.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any

from sftdpo.io import read_json, write_json, write_text
from sftdpo.pages import Table, markdown, text

GB = 1e9
GPU_RULES = ["sft", "rollouts", "dpo", "evaluate", "evaluate_val"]

# Config fields of well-known models, from their public config.json on the Hugging Face Hub: used only when
# the model is neither downloaded (results/base/model) nor in the local Hugging Face cache.
KNOWN_MODELS: dict[str, dict[str, Any]] = {
    "Qwen/Qwen2.5-0.5B-Instruct": {
        "model_type": "qwen2", "hidden_size": 896, "num_hidden_layers": 24, "num_attention_heads": 14,
        "num_key_value_heads": 2, "intermediate_size": 4864, "vocab_size": 151936, "tie_word_embeddings": True,
        "max_position_embeddings": 32768,
    },
    "Qwen/Qwen2.5-1.5B-Instruct": {
        "model_type": "qwen2", "hidden_size": 1536, "num_hidden_layers": 28, "num_attention_heads": 12,
        "num_key_value_heads": 2, "intermediate_size": 8960, "vocab_size": 151936, "tie_word_embeddings": True,
        "max_position_embeddings": 32768,
    },
}  # fmt: skip
KNOWN_MODELS["Qwen/Qwen2.5-0.5B"] = KNOWN_MODELS["Qwen/Qwen2.5-0.5B-Instruct"]
KNOWN_MODELS["Qwen/Qwen2.5-1.5B"] = KNOWN_MODELS["Qwen/Qwen2.5-1.5B-Instruct"]

# Effective FLOP/s by device kind and work kind (train: sft, dpo; generate: rollouts, evaluate).
# CPU: measured on this project's 2-core development machine: the default config's job wall times (README, "Job
# times of the default", 2026-11-22: sft 86.2 s, dpo 138.8 s, rollouts 39.1 s a shard, evaluate 18.6 s a job,
# whole jobs, start-up included) and the tokens this module counts for that run (mean 37.74 tokens a row from its
# convert.json; the scratch model has 1,084,032 parameters) give sft 7,005 tok/s, dpo 3,481 tok/s, rollouts
# 12,767 new-token slots/s, evaluate 3,928 /s; times FLOPs per token (below) these are the figures here.
# GPUs: datasheet dense BF16 peaks (NVIDIA A100, H100 SXM, L40S, A10, L4 datasheets) × an ASSUMED utilisation:
# 30% for training (model FLOPs utilisation of transformer training is typically 30-50%, less for small models),
# 5% for vLLM decoding and 0.7% for transformers `generate` (decoding is bound by memory and per-step overhead,
# not FLOPs). These GPU figures are estimates, not measurements.
CPU_FLOPS = {"sft": 4.55e10, "dpo": 2.26e10, "rollouts": 2.77e10, "evaluate": 8.52e9}
GPU_UTILISATION = {"train": 0.30, "vllm": 0.05, "transformers": 0.007}
DEVICES: dict[str, dict[str, Any]] = {
    "cpu": {"memory_gb": None, "bf16_tflops": None, "name": "CPU (this machine's measured throughput)"},
    "a100": {"memory_gb": 80, "bf16_tflops": 312, "name": "A100 80 GB"},
    "a100-40gb": {"memory_gb": 40, "bf16_tflops": 312, "name": "A100 40 GB"},
    "h100": {"memory_gb": 80, "bf16_tflops": 989, "name": "H100 SXM 80 GB"},
    "l40s": {"memory_gb": 48, "bf16_tflops": 362, "name": "L40S 48 GB"},
    "a10": {"memory_gb": 24, "bf16_tflops": 125, "name": "A10 24 GB"},
    "l4": {"memory_gb": 24, "bf16_tflops": 121, "name": "L4 24 GB"},
    "gpu": {"memory_gb": 80, "bf16_tflops": 312, "name": "a GPU of unknown kind: assumed 80 GB, A100 speed"},
}
# Host RAM of a job beyond the model: CPU, the Python process with torch and transformers (~0.5 GB: base_model's
# max RSS in the README's job table); GPU, each process also holds a CUDA context and loads the weights in fp32
# on the host before moving them (ASSUMED 2 GB + 4 bytes a parameter per process).
CPU_PROCESS_BYTES = 0.5 * GB
GPU_PROCESS_BYTES = 2 * GB
# Activations kept for the backward pass, in values a token, counted with torch's saved-tensor hooks on
# transformers' Llama and Qwen2 (sdpa attention, which keeps no seq × seq matrix): 11·hidden + 4·intermediate a
# layer, plus vocab + 3·hidden at the head (logits). With activation checkpointing a layer keeps only its input
# (hidden values) and one layer's full set is recomputed at a time.
ACT_PER_LAYER = (11, 4)  # × hidden, × intermediate
ACT_HEAD = 3  # × hidden, plus vocab
# vLLM reserves this fraction of the GPU (its gpu_memory_utilization default) whatever the model needs.
VLLM_GPU_FRACTION = 0.9


class PlanError(ValueError):
    pass


# -- the model ------------------------------------------------------------------------------------------------
def model_config(model: dict[str, Any], base_dir: str = "results/base/model"):
    """(transformers config, where it came from) for the configured model, without network or weights."""
    from transformers import AutoConfig, LlamaConfig

    name = model["name_or_path"]
    written = Path(base_dir) / "config.json"
    if written.exists():  # base_model ran: the exact model (scratch: the trained tokenizer's vocabulary)
        return AutoConfig.from_pretrained(base_dir, trust_remote_code=model["trust_remote_code"]), str(written)
    if name == "scratch":
        s = model["scratch"]
        # As sftdpo.modeling.build_scratch_model; the vocabulary is the tokenizer trainer's target (an upper bound).
        config = LlamaConfig(
            vocab_size=s["tokenizer_vocab_size"], hidden_size=s["hidden_size"],
            intermediate_size=s["intermediate_size"], num_hidden_layers=s["layers"],
            num_attention_heads=s["heads"], num_key_value_heads=s["heads"],
            max_position_embeddings=s["max_positions"], tie_word_embeddings=True,
        )  # fmt: skip
        return config, "model.scratch (vocabulary: tokenizer_vocab_size, before base_model trains the tokenizer)"
    try:
        config = AutoConfig.from_pretrained(
            os.path.expanduser(name), trust_remote_code=model["trust_remote_code"], local_files_only=True
        )
        return config, f"{name} (local directory or Hugging Face cache)"
    except (OSError, ValueError):
        pass
    if name in KNOWN_MODELS:
        fields = dict(KNOWN_MODELS[name])
        return AutoConfig.for_model(
            fields.pop("model_type"), **fields
        ), f"{name} (built-in table of its public config.json)"
    raise PlanError(
        f"model {name}: no config.json in {base_dir}, none in the Hugging Face cache and not in "
        "sftdpo.plan.KNOWN_MODELS; "
        f"run `snakemake {base_dir}` first (it downloads the model) or pre-download it (docs/hub-models.md)"
    )


def meta_model(config):
    """The model with every tensor on the meta device: shapes without memory."""
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(config)
    model.tie_weights()  # from_config under init_empty_weights leaves tied embeddings as two tensors
    return model


def parameter_count(model) -> int:
    return sum(p.numel() for p in model.parameters())  # tied weights once, as parameters() yields them once


def lora_parameter_count(model, lora: dict[str, Any]) -> int:
    """Parameters of a LoRA adapter: r × (in + out) for each targeted nn.Linear (as peft counts them)."""
    import torch

    targets = lora["target_modules"]
    output_layer = model.get_output_embeddings()
    total = 0
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear):
            continue
        if targets == "all-linear":
            hit = module is not output_layer
        elif isinstance(targets, str):  # peft: a string is a regex matched against the full name
            hit = re.fullmatch(targets, name) is not None
        else:
            hit = name.rsplit(".", 1)[-1] in targets or name in targets
        if hit:
            total += lora["r"] * (module.in_features + module.out_features)
    return total


def shape(config) -> dict[str, int]:
    heads = config.num_attention_heads
    return {
        "hidden": config.hidden_size,
        "layers": config.num_hidden_layers,
        "intermediate": config.intermediate_size,
        "vocab": config.vocab_size,
        "kv_heads": getattr(config, "num_key_value_heads", None) or heads,
        "head_dim": getattr(config, "head_dim", None) or config.hidden_size // heads,
    }


# -- memory -----------------------------------------------------------------------------------------------------
def activation_bytes(shape: dict[str, int], rows: int, length: int, value_bytes: int, checkpointing: bool) -> int:
    """Activations a training step keeps for backward (see ACT_PER_LAYER): rows × length tokens."""
    tokens = rows * length
    h, layers = shape["hidden"], shape["layers"]
    layer = ACT_PER_LAYER[0] * h + ACT_PER_LAYER[1] * shape["intermediate"]
    kept = (layers * h + layer) if checkpointing else layers * layer
    return tokens * (kept + ACT_HEAD * h + shape["vocab"]) * value_bytes


def zero_stage(launch: dict[str, Any] | None, gpus: int) -> int:
    """DeepSpeed ZeRO stage of a training stage: its launch.deepspeed_config JSON when it runs on > 1 GPU."""
    if gpus <= 1 or not launch or not launch.get("deepspeed_config"):
        return 0
    path = Path(launch["deepspeed_config"])
    if not path.exists():
        raise PlanError(f"launch.deepspeed_config {path} does not exist")
    return int(json.loads(path.read_text()).get("zero_optimization", {}).get("stage", 0))


def training_memory(
    *, n_params: int, n_trainable: int, n_reference: int, shape: dict[str, int], rows: int, length: int,
    bf16: bool, checkpointing: bool, zero: int, gpus: int,
) -> dict[str, float]:  # fmt: skip
    """Bytes per device of a training step.

    Without DeepSpeed (one GPU, or the CPU) the weights stay fp32 and bf16 is autocast (transformers' Trainer):
    accelerate's estimator at "float32" gives weights, gradients (4 bytes) and AdamW's m and v (8 bytes) of the
    trained parameters; frozen weights 4 bytes. Under DeepSpeed with bf16, weights and gradients are bf16 (2 + 2)
    and the optimizer holds an fp32 master copy plus m and v (12 bytes a trained parameter; ZeRO paper's K = 12);
    ZeRO stage 1 divides the optimizer states over the GPUs, stage 2 also the gradients, stage 3 also the weights.
    `n_reference`: weights of DPO's reference beyond the trained model (a frozen copy or a reference adapter).
    Activations: `activation_bytes` at 2 bytes a value under bf16, 4 otherwise.
    """
    from accelerate.commands.estimate import estimate_training_usage

    frozen = n_params - n_trainable + n_reference
    if zero == 0:
        usage = estimate_training_usage(4 * n_trainable, "float32")
        weights = usage["model"] + 4 * frozen
        gradients, optimizer = usage["gradients"], usage["optimizer"]
    else:
        weight_bytes = 2 if bf16 else 4
        weights = weight_bytes * (n_trainable / (gpus if zero >= 3 else 1) + frozen)
        gradients = weight_bytes * n_trainable / (gpus if zero >= 2 else 1)
        optimizer = (12 if bf16 else 8) * n_trainable / gpus
    activations = activation_bytes(shape, rows, length, 2 if bf16 else 4, checkpointing)
    parts = {"weights": weights, "gradients": gradients, "optimizer": optimizer, "activations": activations}
    return {**parts, "total": sum(parts.values())}


def kv_bytes_per_token(shape: dict[str, int], value_bytes: int) -> int:
    """KV-cache bytes a token of a sequence: a key and a value per layer and KV head."""
    return 2 * shape["layers"] * shape["kv_heads"] * shape["head_dim"] * value_bytes


def inference_memory(
    *,
    n_params: int,
    shape: dict[str, int],
    batch: int,
    prompt: int,
    max_new_tokens: int,
    backend: str,
    device_bytes: float | None,
) -> dict[str, float]:
    """Bytes on the device of batched generation: transformers keeps fp32 weights (sftdpo's load_model) and a KV
    cache of 2 × layers × kv_heads × head_dim values a token, at batch × (prompt + max_new_tokens), plus the
    prompt's pass through one layer and the last position's logits (the prompt: the longest row, an upper
    bound); vLLM (bf16) reserves VLLM_GPU_FRACTION of the GPU whatever it needs."""
    value_bytes = 2 if backend == "vllm" else 4
    weights = value_bytes * n_params
    context = prompt + max_new_tokens
    kv_cache = kv_bytes_per_token(shape, value_bytes) * batch * context
    # The prompt's pass through one layer (q, k, v, attention output: 4·hidden; gate and up: 2·intermediate a
    # token; nothing is kept for a backward pass) and two fp32 copies of the last position's logits.
    working = batch * prompt * (4 * shape["hidden"] + 2 * shape["intermediate"]) * value_bytes
    working += 2 * batch * shape["vocab"] * 4
    parts = {"weights": weights, "kv_cache": kv_cache, "activations": working}
    total = sum(parts.values())
    if backend == "vllm" and device_bytes:
        total = max(total, VLLM_GPU_FRACTION * device_bytes)
    return {**parts, "total": total}


# -- data sizes -------------------------------------------------------------------------------------------------
def data_sizes(config: dict[str, Any], data_dir: str = "results/data") -> dict[str, Any]:
    """Mean tokens a row and split item counts: from the data present, else from the config (said which)."""
    convert = Path(data_dir) / "convert.json"
    split = Path(data_dir) / "split.json"
    if convert.exists():
        n_tokens, tokens_from = read_json(convert)["n_tokens"], str(convert)
    else:
        longest = config["convert"]["max_length"]
        n_tokens, tokens_from = {"mean": longest, "max": longest}, "convert.max_length (no convert.json yet)"
    if split.exists():
        counts, counts_from = read_json(split)["counts"], str(split)
    else:
        n, fractions = config["task"]["n_problems"], config["split"]["fractions"]
        counts = {name: round(n * fractions[name]) for name in ("train", "val", "test")}
        counts_from = "task.n_problems × split.fractions (no split.json yet)"
    return {
        "mean_tokens": n_tokens["mean"],
        "longest": n_tokens["max"],
        "tokens_from": tokens_from,
        "counts": counts,
        "counts_from": counts_from,
    }


# -- time -------------------------------------------------------------------------------------------------------
def flops_per_token(stage: str, n_params: int, *, lora: bool, checkpointing: bool) -> float:
    """Forward 2N; backward 4N for full training, 2N with LoRA (gradients of the activations only, through the
    frozen weights); activation checkpointing repeats the forward (2N); DPO adds the reference's forward (2N).
    Attention's seq² term is left out (small at these lengths)."""
    if stage in ("rollouts", "evaluate"):
        return 2 * n_params
    train = 2 * n_params + (2 if lora else 4) * n_params + (2 * n_params if checkpointing else 0)
    return train + (2 * n_params if stage == "dpo" else 0)


def effective_flops(device: str, stage: str, backend: str) -> float:
    if device == "cpu":
        return CPU_FLOPS[stage]
    kind = "train" if stage in ("sft", "dpo") else backend
    return DEVICES[device]["bf16_tflops"] * 1e12 * GPU_UTILISATION[kind]


# -- the plan ---------------------------------------------------------------------------------------------------
def resolve_device(device: str) -> tuple[str, str]:
    """(device kind, why): `auto` is SFTDPO_GPU_MODEL (the Slurm profile's GPU type), else a visible GPU, else cpu."""
    if device == "auto":
        wanted = os.environ.get("SFTDPO_GPU_MODEL", "").strip().lower()
        if wanted:
            device, why = wanted, "SFTDPO_GPU_MODEL"
        else:
            import torch

            if torch.cuda.is_available():
                name = torch.cuda.get_device_name().lower()
                found = [k for k in DEVICES if k not in ("cpu", "gpu") and k.split("-")[0] in name]
                device, why = (found[0] if found else "gpu"), f"visible GPU {name}"
            else:
                device, why = (
                    "cpu",
                    "no GPU visible and SFTDPO_GPU_MODEL unset (set it, or --device, for a cluster plan)",
                )
    else:
        why = "asked for"
    if device not in DEVICES:
        raise PlanError(f"unknown device kind {device!r}: known kinds are {', '.join(DEVICES)}")
    return device, why


def stage_rows(config: dict[str, Any], sizes: dict[str, Any]) -> list[dict[str, Any]]:
    """What each GPU rule computes: jobs, work kind, rows a step, tokens a job (before any model arithmetic)."""
    mean, counts = sizes["mean_tokens"], sizes["counts"]
    n_dpo_runs = 1 + len(config["dpo"]["variants"]) + (config["dpo"]["rounds"] - 1)
    rows = []
    for stage in ("sft", "dpo"):
        train, gpus = config[stage]["train"], config[stage]["resources"]["gpu"]
        sequences = 2 if stage == "dpo" else 1  # DPO runs chosen and rejected
        steps_rows = train["max_steps"] * train["batch_size"] * train["grad_accum"] * max(gpus, 1)
        rows.append({
            "rule": stage, "jobs": 1 if stage == "sft" else n_dpo_runs, "tokens": steps_rows * sequences * mean,
            # the collator pads a batch to its longest row: at most the longest row there is
            "rows_per_device": train["batch_size"] * sequences, "length": min(train["max_length"], sizes["longest"]),
        })  # fmt: skip
    r = config["rollouts"]
    prompts = min(r["n_prompts"], counts["train"]) + min(r["n_val_prompts"], counts["val"])
    per_shard = math.ceil(prompts / r["shards"])
    rows.append({"rule": "rollouts", "jobs": r["shards"] * config["dpo"]["rounds"],
                 "tokens": per_shard * r["k"] * r["max_new_tokens"], "batch": r["batch_size"],
                 "max_new_tokens": r["max_new_tokens"], "backend": r["backend"]})  # fmt: skip
    e = config["evaluate"]
    for rule, split, jobs in (("evaluate", "test", 2 + n_dpo_runs), ("evaluate_val", "val", 1 + n_dpo_runs)):
        rows.append({"rule": rule, "jobs": jobs, "tokens": counts[split] * e["max_new_tokens"],
                     "batch": e["batch_size"], "max_new_tokens": e["max_new_tokens"],
                     "backend": "transformers", "kv_cache_mb": e["kv_cache_mb"]})  # fmt: skip
    return rows


def make_plan(config: dict[str, Any], *, device: str = "auto", root: str = ".") -> dict[str, Any]:
    """The plan of every GPU rule of `config` (a validated config, schema defaults filled in), for `device`."""
    root_path = Path(root)
    device, device_why = resolve_device(device)
    hf_config, config_from = model_config(config["model"], str(root_path / "results/base/model"))
    model = meta_model(hf_config)
    dims = shape(hf_config)
    n_params = parameter_count(model)
    sizes = data_sizes(config, str(root_path / "results/data"))
    sft_lora, dpo_lora = config["sft"]["lora"], config["dpo"]["lora"]
    n_sft_lora = lora_parameter_count(model, sft_lora) if sft_lora else 0
    device_bytes = DEVICES[device]["memory_gb"] * GB if DEVICES[device]["memory_gb"] else None
    rows = []
    for row in stage_rows(config, sizes):
        rule = row["rule"]
        stage = "evaluate" if rule == "evaluate_val" else rule
        resources = config[stage]["resources"]
        gpus = max(resources["gpu"], 1) if device != "cpu" else 1
        if stage in ("sft", "dpo"):
            train = config[stage]["train"]
            bf16 = device != "cpu" and train["precision"] in ("bf16", "auto")
            if stage == "sft":
                trainable, reference, lora = (n_sft_lora or n_params), 0, bool(sft_lora)
            elif sft_lora:  # DPO trains the SFT adapter; TRL keeps a frozen copy of it as the reference adapter
                trainable, reference, lora = n_sft_lora, n_sft_lora, True
            elif dpo_lora:  # a new adapter on the full SFT model; the reference is that model, adapters disabled
                trainable, reference, lora = lora_parameter_count(model, dpo_lora), 0, True
            else:  # the whole model against a frozen copy
                trainable, reference, lora = n_params, n_params, False
            zero = zero_stage(config[stage].get("launch"), gpus) if device != "cpu" else 0
            memory = training_memory(
                n_params=n_params, n_trainable=trainable, n_reference=reference, shape=dims,
                rows=row["rows_per_device"], length=row["length"], bf16=bf16,
                checkpointing=train["activation_checkpointing"], zero=zero, gpus=gpus,
            )  # fmt: skip
            flops = flops_per_token(stage, n_params, lora=lora, checkpointing=train["activation_checkpointing"])
            precision = "bf16" if bf16 else "fp32"
            detail = f"{precision}, ZeRO-{zero}" if zero else precision
            backend = "transformers"
        else:
            backend = "vllm" if row["backend"] == "vllm" and device != "cpu" else "transformers"
            trainable, reference = 0, 0
            if "kv_cache_mb" in row:  # evaluate's batches shrink to its KV-cache budget (fp32, as load_model)
                from sftdpo.generation import greedy_batch_size  # torch: imported where the plan needs it

                longest, budget = sizes["longest"], row["kv_cache_mb"]
                row["batch"] = greedy_batch_size(
                    kv_bytes_per_token(dims, 4), longest, row["max_new_tokens"], row["batch"], budget
                )
            memory = inference_memory(
                n_params=n_params, shape=dims, batch=row["batch"], prompt=sizes["longest"],
                max_new_tokens=row["max_new_tokens"], backend=backend, device_bytes=device_bytes,
            )  # fmt: skip
            flops = flops_per_token(stage, n_params, lora=False, checkpointing=False)
            detail = backend
        processes = gpus if stage in ("sft", "dpo") else 1
        if device == "cpu":
            host = CPU_PROCESS_BYTES + memory["total"]
        else:
            host = processes * (GPU_PROCESS_BYTES + 4 * (n_params + reference))
        seconds = row["tokens"] * flops / effective_flops(device, stage, backend) / gpus
        warnings = fit_warnings(rule, resources, memory["total"], device_bytes, host, seconds)
        rows.append({
            "rule": rule, "jobs": row["jobs"], "gpus": gpus if device != "cpu" else 0, "detail": detail,
            "parameters": n_params, "trainable": trainable, "reference_extra": reference,
            "tokens": round(row["tokens"]),
            "memory_per_device_bytes": memory, "host_ram_bytes": host, "wall_seconds": seconds,
            "requested": {k: resources[k] for k in ("gpu", "mem_mb", "runtime")}, "warnings": warnings,
        })  # fmt: skip
    return {
        "estimates": "memory and wall times are ESTIMATES (formulas in sftdpo/plan.py); parameters are exact",
        "device": device, "device_name": DEVICES[device]["name"], "device_why": device_why,
        "device_memory_gb": DEVICES[device]["memory_gb"], "model": config["model"]["name_or_path"],
        "model_config_from": config_from, "mean_tokens_per_row": sizes["mean_tokens"],
        "tokens_from": sizes["tokens_from"], "split_counts": sizes["counts"], "counts_from": sizes["counts_from"],
        "rules": rows, "warnings": [w for r in rows for w in r["warnings"]],
    }  # fmt: skip


def fit_warnings(rule: str, resources: dict[str, Any], device_total: float, device_bytes: float | None,
                 host_bytes: float, seconds: float) -> list[str]:  # fmt: skip
    """Shortfalls of `<stage>.resources` (and of the GPU), each naming the number needed."""
    stage = "evaluate" if rule == "evaluate_val" else rule
    warnings = []
    if device_bytes and device_total > device_bytes:
        warnings.append(
            f"{rule}: needs ~{device_total / GB:.1f} GB per GPU, the GPU has {device_bytes / GB:.0f} GB: lower the "
            f"batch size, turn on activation checkpointing, use LoRA or more GPUs with ZeRO"
        )
    needed_mb = math.ceil(host_bytes / 1e6)
    if resources["mem_mb"] < needed_mb:
        warnings.append(f"{rule}: {stage}.resources.mem_mb is {resources['mem_mb']}, needs ~{needed_mb}")
    needed_min = math.ceil(seconds / 60)
    if resources["runtime"] < needed_min:
        warnings.append(f"{rule}: {stage}.resources.runtime is {resources['runtime']} min, needs ~{needed_min} min")
    return warnings


# -- output -----------------------------------------------------------------------------------------------------
def _count(n: float) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.3g}{unit}"
    return str(round(n))


def _duration(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 5400 else f"{seconds / 60:.1f} min"


def plan_table(plan: dict[str, Any]) -> Table:
    rows = []
    for r in plan["rules"]:
        mem = r["memory_per_device_bytes"]
        parts = " + ".join(f"{k} {v / GB:.2f}" for k, v in mem.items() if k != "total")
        request = r["requested"]
        rows.append([
            r["rule"], r["jobs"], r["detail"], _count(r["parameters"]), _count(r["trainable"]), _count(r["tokens"]),
            f"~{mem['total'] / GB:.2f} GB ({parts})", f"~{r['host_ram_bytes'] / GB:.1f} GB",
            f"~{_duration(r['wall_seconds'])}",
            f"{request['gpu']} GPU, {request['mem_mb']} MB, {request['runtime']} min",
            "ok" if not r["warnings"] else "; ".join(w.split(": ", 1)[1] for w in r["warnings"]),
        ])  # fmt: skip
    where = "per GPU" if plan["device"] != "cpu" else "in RAM"
    note = (
        f"ESTIMATES for {plan['device_name']} ({plan['device_why']}), except parameters. Model config: "
        f"{plan['model_config_from']}. Tokens a row: {plan['mean_tokens_per_row']:.1f} from {plan['tokens_from']}; "
        f"items from {plan['counts_from']}. Memory {where}; time per job."
    )
    columns = ["rule", "jobs", "precision", "params", "trainable", "tokens/job", f"memory {where} (est.)",
               "host RAM (est.)", "wall/job (est.)", "requested", "fit"]  # fmt: skip
    return Table(title="Plan: the GPU rules before submit", columns=columns, rows=rows, note=note)


def write_plan(plan: dict[str, Any], json_path: str, markdown_path: str | None = None) -> str:
    """Write plan.json (and the markdown table); returns the console text."""
    write_json(plan, json_path)
    table = plan_table(plan)
    if markdown_path:
        write_text(markdown([table]), markdown_path)
    lines = [table.title, table.note, "", text(table)]
    lines += ["", *(f"WARNING {w}" for w in plan["warnings"])] if plan["warnings"] else ["", "every request fits"]
    return "\n".join(lines)


def load_config(configfiles: list[str], root: str = ".") -> dict[str, Any]:
    """The config as the Snakefile makes it: config/config.yaml, each --configfile over it, schema defaults."""
    import yaml
    from snakemake.utils import update_config, validate

    from sftdpo.config_checks import coerce_by_schema

    root_path = Path(root)
    config = yaml.safe_load((root_path / "config/config.yaml").read_text())
    for path in configfiles:
        update_config(config, yaml.safe_load(Path(path).read_text()) or {})
    schema = str(root_path / "config/schema.yaml")
    config.update(coerce_by_schema(config, schema))
    validate(config, schema)
    return config


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m sftdpo.plan", description=__doc__.splitlines()[0])
    parser.add_argument("--configfile", action="append", default=[], help="config over config/config.yaml")
    parser.add_argument("--device", default="auto", help=f"one of {', '.join(DEVICES)}, or auto (default)")
    parser.add_argument("--markdown", action="store_true", help="print the markdown table (for the README)")
    parser.add_argument("--out", default="results/plan/plan.json")
    args = parser.parse_args(argv)
    plan = make_plan(load_config(args.configfile), device=args.device)
    console = write_plan(plan, args.out, str(Path(args.out).with_suffix(".md")))
    print(markdown([plan_table(plan)]) if args.markdown else console)


if __name__ == "__main__":
    main()
