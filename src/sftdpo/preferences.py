"""Preference pairs from scored rollouts, in TRL's conversational preference format.

Per prompt (train and val prompts alike; `split` says which): correctness pairs first (a correct sample
chosen over an incorrect one), then quality pairs among correct samples whose scores differ by at least
`quality_margin`; at most `max_pairs_per_prompt` in all; identical completions are deduplicated before
pairing. `shared_tokens` says how many leading tokens a pair's two completions share; `chosen_id` and
`rejected_id` name the rollouts the two completions are.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import pandas as pd

from sftdpo.chat import chat_messages
from sftdpo.io import read_parquet, write_json, write_parquet
from sftdpo.modeling import load_tokenizer
from sftdpo.tables import PAIR_COLUMNS


def _distinct(samples: pd.DataFrame, best_first: bool) -> list[tuple[str, float, str]]:
    """(completion, score, rollout id) of each distinct completion, best (or worst) first; of identical
    completions the first in that order is kept, with its id."""
    ordered = samples.sort_values(["score", "completion"], ascending=[not best_first, True], kind="stable")
    seen: dict[str, tuple[str, float, str]] = {}
    for text, value, rollout_id in zip(ordered["completion"], ordered["score"], ordered["id"]):
        seen.setdefault(text, (text, float(value), rollout_id))
    return list(seen.values())


def _interleave(a: list, b: list) -> list[tuple]:
    """All (a_i, b_j) ordered by i + j, so the first pairs spread over different samples."""
    return sorted(((x, y) for x in a for y in b), key=lambda p: (a.index(p[0]) + b.index(p[1]), a.index(p[0])))


def pairs_for_prompt(samples: pd.DataFrame, *, max_pairs: int, quality_margin: float) -> list[dict[str, Any]]:
    correct = _distinct(samples[samples["correct"]], best_first=True)
    wrong = _distinct(samples[~samples["correct"]], best_first=False)
    pairs = [(c, w, "correctness") for c, w in _interleave(correct, wrong)]
    pairs += [
        (c, w, "quality") for i, c in enumerate(correct) for w in correct[i + 1 :] if c[1] - w[1] >= quality_margin
    ]
    return [
        {
            "chosen_text": c[0],
            "rejected_text": w[0],
            "kind": kind,
            "chosen_score": c[1],
            "rejected_score": w[1],
            "chosen_id": c[2],
            "rejected_id": w[2],
        }
        for c, w, kind in pairs[:max_pairs]
    ]


def by_outcome(outcomes: Counter) -> dict[str, dict[str, int]]:
    """Prompts by outcome of their samples (all correct, all wrong, mixed), per split."""
    out: dict[str, dict[str, int]] = {}
    for (split, outcome), n in sorted(outcomes.items()):
        out.setdefault(split, {})[outcome] = n
    return out


def shared_prefix(a: list[int], b: list[int]) -> int:
    """How many leading tokens two sequences share: the position of the first divergent token."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def describe_shared(pairs: pd.DataFrame, chosen_lengths: list[int]) -> dict[str, Any]:
    """How close chosen and rejected are: shared leading tokens, overall and as a share of the chosen length."""
    shared = pairs["shared_tokens"].to_numpy()
    share = shared / np.maximum(np.asarray(chosen_lengths), 1)
    return {
        "mean": float(shared.mean()),
        "median": float(np.median(shared)),
        "p90": float(np.percentile(shared, 90)),
        "mean_share_of_chosen": float(share.mean()),
        "pairs_sharing_half_or_more": int((share >= 0.5).sum()),
        "by_kind": {k: float(g["shared_tokens"].mean()) for k, g in pairs.groupby("kind", sort=True)},
    }


def _context(rollout: pd.Series) -> list[dict[str, str]]:
    """The messages before a rollout's prompt (none in rollouts made without a `context` column)."""
    context = rollout.get("context")
    return [] if context is None or (isinstance(context, float) and pd.isna(context)) else list(context)


def build_preferences(
    *,
    rollouts_path: str,
    tokenizer_dir: str,
    pairs_path: str,
    report_path: str,
    max_pairs_per_prompt: int,
    quality_margin: float,
) -> dict[str, Any]:
    rollouts = read_parquet(rollouts_path)
    rows: list[dict[str, Any]] = []
    outcomes: Counter = Counter()
    for (prompt_id, variant), samples in rollouts.groupby(["prompt_id", "variant"], sort=True):
        split = samples["split"].iloc[0]
        n_correct = int(samples["correct"].sum())
        outcome = "all_correct" if n_correct == len(samples) else "all_wrong" if n_correct == 0 else "mixed"
        outcomes[(split, outcome)] += 1
        first = samples.iloc[0]
        for i, pair in enumerate(
            pairs_for_prompt(samples, max_pairs=max_pairs_per_prompt, quality_margin=quality_margin)
        ):
            rows.append(
                {
                    "id": f"{prompt_id}:{variant}:{i}",
                    "prompt_id": prompt_id,
                    "chosen_id": pair["chosen_id"],
                    "rejected_id": pair["rejected_id"],
                    "split": split,
                    "task": first["task"],
                    "difficulty": first["difficulty"],
                    "prompt": chat_messages(first["prompt"], context=_context(first))["prompt"],
                    "chosen": chat_messages("", pair["chosen_text"])["completion"],
                    "rejected": chat_messages("", pair["rejected_text"])["completion"],
                    "kind": pair["kind"],
                    "chosen_score": pair["chosen_score"],
                    "rejected_score": pair["rejected_score"],
                    "shared_tokens": 0,
                }
            )
    pairs = pd.DataFrame(rows, columns=PAIR_COLUMNS)
    if not (pairs["split"] == "train").any():
        raise ValueError(
            f"{rollouts_path}: no preference pairs from train prompts ({by_outcome(outcomes)} prompts by outcome); "
            "raise rollouts.k or "
            "rollouts.temperature so prompts get both correct and incorrect samples"
        )
    key = (
        pairs["prompt"].map(lambda m: "\x01".join(f"{x['role']}:{x['content']}" for x in m))
        + "\x00"
        + pairs["chosen"].map(lambda m: m[0]["content"])
        + "\x00"
        + pairs["rejected"].map(lambda m: m[0]["content"])
    )
    pairs = pairs[~key.duplicated()].reset_index(drop=True)
    tokenizer = load_tokenizer(tokenizer_dir)
    chosen = [tokenizer(m[0]["content"])["input_ids"] for m in pairs["chosen"]]
    rejected = [tokenizer(m[0]["content"])["input_ids"] for m in pairs["rejected"]]
    pairs["shared_tokens"] = [shared_prefix(c, r) for c, r in zip(chosen, rejected)]
    train = pairs["split"] == "train"
    report = {
        "n_pairs": int(train.sum()),
        "n_heldout_pairs": int((~train).sum()),
        "n_rollouts": int(len(rollouts)),
        "rollout_accuracy": float(rollouts["correct"].mean()),
        "rollout_accuracy_by_split": {s: float(g["correct"].mean()) for s, g in rollouts.groupby("split")},
        "pairs_by_split": {s: int(v) for s, v in sorted(Counter(pairs["split"]).items())},
        "pairs_by_kind": {k: int(v) for k, v in sorted(Counter(pairs.loc[train, "kind"]).items())},
        "pairs_by_difficulty": {str(k): int(v) for k, v in sorted(Counter(pairs.loc[train, "difficulty"]).items())},
        "prompts_by_outcome": by_outcome(outcomes),
        # Pairs that share most of their tokens (math answers differing in a digit) are where plain DPO
        # lowers the chosen likelihood too (Pal et al. 2024, DPO-Positive).
        "shared_tokens": describe_shared(pairs[train], [len(c) for c, t in zip(chosen, train) if t]),
        "max_pairs_per_prompt": max_pairs_per_prompt,
        "quality_margin": quality_margin,
    }
    write_parquet(pairs, pairs_path)
    write_json(report, report_path)
    return report
