"""Batched sampling and greedy decoding with transformers (CPU or GPU), and the thin vLLM path."""

from __future__ import annotations

import functools
import inspect
import logging
import math
from typing import Any

import torch
from tqdm import tqdm

from sftdpo.chat import Message, chat_messages, prompt_ids
from sftdpo.modeling import adapter_base, device, load_model, load_tokenizer
from sftdpo.progress import Progress
from sftdpo.tasks import get_task

log = logging.getLogger(__name__)


def prompt_messages(prompt: str | list[Message]) -> list[Message]:
    return chat_messages(prompt)["prompt"] if isinstance(prompt, str) else list(prompt)


def load_for_inference(model_dir: str):
    """Model (adapters merged, eval mode, on the best device) and its tokenizer."""
    model = load_model(model_dir)
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    return model.to(device()).eval(), load_tokenizer(model_dir)


def generate(model, tokenizer, prompts: list[str | list[Message]], **settings) -> list[list[dict[str, Any]]]:
    """For each prompt (a user message's text, or the prompt messages of a chat row: system message, earlier
    turns, the final user message), `k` completions as {"text", "n_tokens"} (`generate_ids` says how)."""
    return generate_ids(model, tokenizer, [prompt_ids(tokenizer, prompt_messages(p)) for p in prompts], **settings)


@torch.inference_mode()
def generate_ids(
    model,
    tokenizer,
    prompts: list[list[int]],
    *,
    k: int = 1,
    temperature: float = 0.0,
    top_p: float = 1.0,
    max_new_tokens: int,
    batch_size: int,
    seed: int,
    desc: str = "generate",
    progress: Progress | None = None,
) -> list[list[dict[str, Any]]]:
    """For each prompt's token ids (chat template and generation prompt applied), `k` completions as {"text",
    "n_tokens"}; temperature 0 means greedy. `progress` (the caller's console progress) counts the prompts done.

    Decoded by `pruned_new_ids` where it applies (rows leave the batch as they end: the tokens `generate` makes, in
    less time), else by transformers' `generate`. Each batch reseeds from (seed, batch index), so a batch's samples
    do not depend on what ran before it: a resumed shard reproduces the rows an uninterrupted run would have written.
    """
    sampling = temperature > 0
    pruned = pruned_decoding_applies(model, sampling=sampling) and (sampling or k == 1)
    out: list[list[dict[str, Any]]] = []
    for start in tqdm(range(0, len(prompts), batch_size), desc=desc, unit="batch", mininterval=2):
        encoded = prompts[start : start + batch_size]
        input_ids, attention = left_padded(encoded, tokenizer.pad_token_id, model.device)
        if pruned:
            torch.manual_seed(seed * 1_000_003 + start)
            new = pruned_new_ids(
                model, input_ids, attention, max_new_tokens, tokenizer.eos_token_id, k=k, temperature=temperature,
                top_p=top_p,
            )  # fmt: skip
        else:
            new = sampled_new_ids(
                model, tokenizer, input_ids, attention, k=k, temperature=temperature, top_p=top_p,
                max_new_tokens=max_new_tokens, seed=seed * 1_000_003 + start,
            )  # fmt: skip
        for i in range(len(encoded)):
            out.append([completion(tokenizer, new[i * k + j]) for j in range(k)])
        if progress:
            progress.update(len(encoded))
    return out


def left_padded(encoded: list[list[int]], pad: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Input ids padded on the left to the longest prompt, and their attention mask."""
    width = max(len(e) for e in encoded)
    input_ids = torch.tensor([[pad] * (width - len(e)) + e for e in encoded], device=device)
    attention = torch.tensor([[0] * (width - len(e)) + [1] * len(e) for e in encoded], device=device)
    return input_ids, attention


def completion(tokenizer, ids: list[int]) -> dict[str, Any]:
    """{"text", "n_tokens"} of a sample's new ids: up to and including the first end-of-sequence token, pads
    not counted."""
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id  # read once: each read is a vocabulary lookup
    n = ids.index(eos) + 1 if eos in ids else len(ids)
    n = len([t for t in ids[:n] if t != pad])
    return {"text": tokenizer.decode(ids[:n], skip_special_tokens=True).strip(), "n_tokens": n}


def sampled_new_ids(
    model, tokenizer, input_ids, attention, *, k: int, temperature: float, top_p: float, max_new_tokens: int, seed: int
) -> list[list[int]]:
    """transformers' `generate`: `k` samples a prompt (greedy at temperature 0), each its new ids.

    The batch reseeds from `seed`, so its samples do not depend on what ran before it."""
    torch.manual_seed(seed)
    sampling = (
        dict(do_sample=True, temperature=temperature, top_p=top_p, top_k=None)
        if temperature > 0
        else dict(do_sample=False, temperature=None, top_p=None, top_k=None)
    )
    generated = model.generate(
        input_ids=input_ids,
        attention_mask=attention,
        max_new_tokens=max_new_tokens,
        num_return_sequences=k,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        **sampling,
    )
    return generated[:, input_ids.shape[1] :].tolist()


# Generation-config fields that change which token is picked, with their neutral values: a model that sets one is
# decoded by transformers' `generate`, which applies them. SAMPLING_NEUTRAL: those that only sampling reads.
GREEDY_NEUTRAL = {
    "repetition_penalty": (None, 1.0),
    "encoder_repetition_penalty": (None, 1.0),
    "no_repeat_ngram_size": (None, 0),
    "bad_words_ids": (None,),
    "suppress_tokens": (None,),
    "begin_suppress_tokens": (None,),
    "forced_bos_token_id": (None,),
    "forced_eos_token_id": (None,),
    "sequence_bias": (None,),
    "min_new_tokens": (None, 0),
    "min_length": (None, 0),
}
SAMPLING_NEUTRAL = {
    "min_p": (None, 0.0),
    "typical_p": (None, 1.0),
    "epsilon_cutoff": (None, 0.0),
    "eta_cutoff": (None, 0.0),
}


def pruned_decoding_applies(model, *, sampling: bool = False) -> bool:
    """Whether `pruned_new_ids` decodes this model as `generate` would: a decoder-only model on the CPU (where
    `torch.multinomial` draws one number per token of every row, so a row's sample does not depend on the
    others'), with transformers' default dynamic KV cache, taking position ids, whose generation config adds no
    logits processor to greedy decoding or to sampling with a temperature and top-p."""
    config = getattr(model, "generation_config", None)
    supports_cache = getattr(model, "_supports_default_dynamic_cache", lambda: False)()
    if model.config.is_encoder_decoder or config is None or not supports_cache or model.device.type != "cpu":
        return False
    if getattr(config, "cache_implementation", None) not in (None, "dynamic"):
        return False
    if "position_ids" not in inspect.signature(model.forward).parameters:
        return False
    neutral = {**GREEDY_NEUTRAL, **(SAMPLING_NEUTRAL if sampling else {})}
    return all(getattr(config, name, None) in values for name, values in neutral.items())


def pruned_new_ids(
    model,
    input_ids,
    attention,
    max_new_tokens: int,
    eos: int,
    *,
    k: int = 1,
    temperature: float = 0.0,
    top_p: float = 1.0,
) -> list[list[int]]:
    """New ids of `k` sequences a prompt (rows i * k to i * k + k - 1: prompt i), greedy at temperature 0, else
    sampled (temperature, top-p), each stopping at `eos` or after `max_new_tokens`; the tokens transformers'
    `generate(num_return_sequences=k)` makes from the same random state.

    Where `generate` reads every copy of a prompt and runs every row through the model until the batch's longest
    answer ends, this reads each prompt once (its KV cache copied k times) and a row leaves the batch (and its KV
    cache) the step it ends, so a batch costs the tokens it makes. Each row's computation is the one `generate`
    does (same positions, mask and cache, float32 scores through the same temperature and top-p warpers).
    Sampling still draws from a [all rows, vocabulary] table each step, ended rows included, as `generate` does:
    `torch.multinomial` on the CPU draws one exponential per cell and takes each row's best ratio, so a row's
    sample depends on its own probabilities and the random state alone (`multinomial` draws the same, faster).
    """
    from transformers import DynamicCache, TemperatureLogitsWarper, TopPLogitsWarper

    warpers = []  # as `generate` orders them; a temperature of 1 and a top-p of 1 change nothing and are left out
    if temperature > 0 and temperature != 1.0:
        warpers.append(TemperatureLogitsWarper(temperature))
    if temperature > 0 and top_p < 1.0:
        warpers.append(TopPLogitsWarper(top_p))
    n_rows = len(input_ids) * k
    rows = torch.arange(n_rows, device=input_ids.device)
    positions = (attention.cumsum(-1) - 1).masked_fill(attention == 0, 1)  # as `generate` numbers left-padded rows
    cache = DynamicCache(config=model.config.get_text_config(decoder=True))
    arguments = set(inspect.signature(model.forward).parameters)
    # The cache's keyword is `cache` since transformers 5.x (`past_key_values` before, deprecated).
    cache_kw = {"cache" if "cache" in arguments else "past_key_values": cache}
    last_only = {"logits_to_keep": 1} if "logits_to_keep" in arguments else {}  # as `generate` asks
    logits = model(
        input_ids=input_ids, attention_mask=attention, position_ids=positions, use_cache=True, **cache_kw, **last_only
    ).logits[:, -1]
    if k > 1:
        cache.batch_repeat_interleave(k)
        logits, attention, positions = (t.repeat_interleave(k, dim=0) for t in (logits, attention, positions))
    next_position = positions[:, -1:] + 1
    new: list[list[int]] = [[] for _ in range(n_rows)]
    going = torch.ones(n_rows, dtype=torch.bool, device=input_ids.device)  # of the rows in the batch (`rows`)
    every_row = None
    for step in range(max_new_tokens):
        scores = logits.to(dtype=torch.float32)
        if temperature > 0:
            for warp in warpers:
                scores = warp(None, scores)
            if every_row is None:
                every_row = scores.new_ones(n_rows, scores.shape[-1])  # ended rows: any probabilities
            every_row[rows] = torch.nn.functional.softmax(scores, dim=-1)
            tokens = multinomial(every_row)[rows]
        else:
            tokens = scores.argmax(-1)
        for row, token in zip(rows[going].tolist(), tokens[going].tolist()):
            new[row].append(token)
        going &= tokens != eos
        n_going = int(going.sum())
        if step == max_new_tokens - 1 or not n_going:
            break
        # Ended rows leave in groups (an eighth of the batch at least): each leaving copies every layer's cache.
        if len(rows) - n_going >= max(1, len(rows) // 8):
            keep = going.nonzero().squeeze(1)
            cache.batch_select_indices(keep)
            rows, tokens, attention, next_position = rows[keep], tokens[keep], attention[keep], next_position[keep]
            going = going[keep]
        attention = torch.cat([attention, attention.new_ones(len(rows), 1)], dim=1)
        logits = model(
            input_ids=tokens[:, None], attention_mask=attention, position_ids=next_position, use_cache=True,
            **cache_kw,
        ).logits[:, -1]  # fmt: skip
        next_position = next_position + 1
    return new


def multinomial(probs: torch.Tensor, generator=None) -> torch.Tensor:
    """One sample a row of `probs` [rows, vocabulary]: `torch.multinomial(probs, 1).squeeze(1)`, the same tokens
    from the same random state, leaving the generator where it leaves it, in a third of its time on the CPU.

    On the CPU, multinomial draws an exponential for every cell, in order, as -log1p(-u) of a float64 uniform u (the
    one `torch.rand` draws in float64) cast to float32, one element at a time, and takes each row's argmax of
    p / exponential. This draws the same uniforms and takes their logarithms in one vectorised call
    (`best_ratios`). Other tables (not float32, not contiguous, not on the CPU), or where this torch draws otherwise
    (`exact_multinomial`), go to multinomial.
    """
    cpu_float32 = probs.device.type == "cpu" and probs.dtype == torch.float32 and probs.is_contiguous()
    if not cpu_float32 or not exact_multinomial():
        return torch.multinomial(probs, 1, generator=generator).squeeze(1)
    if not bool((probs.max() < math.inf) & (probs.min() >= 0)):  # multinomial's checks, and its messages
        raise RuntimeError("probability tensor contains either `inf`, `nan` or element < 0")
    if bool((probs.sum(-1) == 0).any()):
        raise RuntimeError("invalid multinomial distribution (sum of probabilities <= 0)")
    return drawn_best_ratios(probs, generator)


def drawn_best_ratios(probs: torch.Tensor, generator=None) -> torch.Tensor:
    """`best_ratios` of `probs` and float64 uniforms drawn for every cell in order, a block of rows at a time (the
    uniforms come in the same order): those of a whole table of a large vocabulary would hold several times the
    table's memory."""
    blocks = probs.split(max(1, MULTINOMIAL_BLOCK_CELLS // probs.shape[-1]))
    return torch.cat([best_ratios(b, torch.rand(b.shape, dtype=torch.float64, generator=generator)) for b in blocks])


MULTINOMIAL_BLOCK_CELLS = 1 << 18  # cells of `multinomial`'s blocks: 2 MB of float64 uniforms


def best_ratios(probs: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """Each row's argmax of p / float32(-log1p(-u)) (`uniforms`: float64), with C's log1p, as torch's CPU kernel
    computes it.

    torch's vectorised log1p differs from C's in the last bit of a float64 now and then, which can move an
    exponential by one float32 step and a ratio by ~2.4e-7 of itself: a row whose best ratio is not clear of its
    second by 1e-6 of itself, or is tiny (subnormal ratios round coarsely), or not finite, is decided again with
    C's log1p (`math.log1p`), element by element (none of 153,600 rows of random tables was)."""
    ratios = torch.div(probs, uniforms.neg().log1p_().neg_().to(torch.float32))
    tokens = ratios.argmax(-1)
    top = ratios.topk(min(2, ratios.shape[-1]), dim=-1).values
    unclear = ~((top[:, 0] > top[:, -1] * (1 + 1e-6)) & (top[:, 0] > 1e-30))
    for row in unclear.nonzero().flatten().tolist():
        exponentials = torch.tensor([-1.0 * math.log1p(-u) for u in uniforms[row].tolist()], dtype=torch.float64)
        tokens[row] = (probs[row] / exponentials.to(torch.float32)).argmax()
    return tokens


@functools.cache
def exact_multinomial() -> bool:
    """Whether `multinomial`'s way draws what this torch's `torch.multinomial` draws on the CPU, tokens and
    the generator's state after (checked once a process, on a private generator)."""
    generator = torch.Generator().manual_seed(20261207)
    probs = torch.randn(16, 97, generator=generator).mul(3).softmax(-1)
    probs[3, 5:] = 0  # as top-p leaves rows
    start = generator.get_state()
    expected = torch.multinomial(probs, 1, generator=generator).squeeze(1)
    after = generator.get_state()
    generator.set_state(start)
    return torch.equal(drawn_best_ratios(probs, generator), expected) and torch.equal(generator.get_state(), after)


def kv_cache_bytes_per_token(model) -> int:
    """Bytes the KV cache holds for one token of one sequence: a key and a value per layer and KV head."""
    config = model.config.get_text_config(decoder=True)
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    return 2 * config.num_hidden_layers * kv_heads * head_dim * model.dtype.itemsize


def greedy_batch_size(
    kv_bytes_per_token: int, longest_prompt: int, max_new_tokens: int, batch_size: int, kv_cache_mb: float
) -> int:
    """Sequences a greedy generate call: `batch_size` at most, fewer when their KV cache at full length (the longest
    prompt plus `max_new_tokens`) would pass `kv_cache_mb`."""
    per_sequence = kv_bytes_per_token * (longest_prompt + max_new_tokens)
    return max(1, min(batch_size, int(kv_cache_mb * 2**20 // per_sequence)))


def greedy_verdicts(
    model,
    tokenizer,
    items,
    *,
    task_options: dict[str, dict[str, Any]],
    max_new_tokens: int,
    batch_size: int,
    seed: int,
    desc: str,
    kv_cache_mb: float = 2048,
    progress: Progress | None = None,
) -> list[dict[str, Any]]:
    """Greedy completions of `items` (a split's rows: id, task, difficulty, prompt messages, answer), each
    checked by its task's verifier: one evaluation row a item (id, task, difficulty, completion, prediction,
    gold, correct, n_tokens), in the items' order. What evaluate writes and what the curriculum's checks measure.

    Items are decoded longest prompt first, in batches of `greedy_batch_size`: similar prompts share a batch, so
    it pads little, and each row leaves its batch when its answer ends (`pruned_new_ids`); greedy decoding draws
    nothing at random, so the order changes no completion.
    """
    # The chat rows' prompt messages as SFT saw them (system message and earlier turns included).
    encoded = [prompt_ids(tokenizer, prompt_messages(messages)) for messages in items["prompt"]]
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i]))  # stable: ties keep the items' order
    batch = greedy_batch_size(
        kv_cache_bytes_per_token(model), max(map(len, encoded), default=0), max_new_tokens, batch_size, kv_cache_mb
    )
    decoded = generate_ids(
        model, tokenizer, [encoded[i] for i in order], max_new_tokens=max_new_tokens, batch_size=batch, seed=seed,
        desc=desc, progress=progress,
    )  # fmt: skip
    outputs: list[list[dict[str, Any]]] = [[] for _ in encoded]
    for i, samples in zip(order, decoded):
        outputs[i] = samples
    tasks = {name: get_task(name, **task_options.get(name, {})) for name in items["task"].unique()}
    rows = []
    for item, (sample,) in zip(items.itertuples(index=False), outputs):
        verdict = tasks[item.task].verify(sample["text"], item.answer)
        rows.append({
            "id": item.id, "task": item.task, "difficulty": item.difficulty, "completion": sample["text"],
            "prediction": verdict.prediction, "gold": item.answer, "correct": verdict.correct,
            "n_tokens": sample["n_tokens"],
        })  # fmt: skip
    return rows


def vllm_available() -> bool:
    try:
        import vllm  # noqa: F401
    except ImportError:
        return False
    return torch.cuda.is_available()


def generate_vllm(
    model_dir: str,
    prompts: list[str | list[Message]],
    *,
    k: int,
    temperature: float,
    top_p: float,
    max_new_tokens: int,
    seed: int,
) -> list[list[dict[str, Any]]]:  # pragma: no cover - GPU only
    """vLLM backend (GPU only). LoRA adapters are served with a LoRARequest, not merged."""
    import json
    from pathlib import Path

    from vllm import LLM, SamplingParams
    from vllm.lora.request import LoRARequest

    tokenizer = load_tokenizer(model_dir)
    adapter = Path(model_dir) / "adapter_config.json"
    base = adapter_base(model_dir) if adapter.exists() else model_dir
    ref = Path(base) / "sftdpo_model.json"
    if ref.exists():
        base = json.loads(ref.read_text())["name_or_path"]
    llm = LLM(model=base, tokenizer=model_dir, enable_lora=adapter.exists(), seed=seed)
    params = SamplingParams(n=k, temperature=temperature, top_p=top_p, max_tokens=max_new_tokens, seed=seed)
    texts = [
        tokenizer.apply_chat_template(prompt_messages(p), add_generation_prompt=True, tokenize=False) for p in prompts
    ]
    lora = LoRARequest("policy", 1, model_dir) if adapter.exists() else None
    results = llm.generate(texts, params, lora_request=lora)
    return [[{"text": o.text.strip(), "n_tokens": len(o.token_ids)} for o in r.outputs] for r in results]
