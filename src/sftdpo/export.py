"""A model that travels: one stage's model as a standalone directory (adapters merged into their base, the
tokenizer beside it, a model card), loadable with `AutoModelForCausalLM.from_pretrained` alone."""

from __future__ import annotations

import json
import logging
from typing import Any

import sftdpo.pages as pages
from sftdpo.io import atomic_path, read_json
from sftdpo.modeling import lineage, load_model, load_tokenizer

log = logging.getLogger(__name__)


def export_model(
    *, stage: str, model_dir: str, out_dir: str, summary_path: str, config: dict[str, Any]
) -> list[dict[str, Any]]:
    """Merge `model_dir`'s adapters (if any) and save the model, its tokenizer and README.md to `out_dir`."""
    model = load_model(model_dir)
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    chain = lineage(model_dir)
    with atomic_path(out_dir) as tmp:
        model.save_pretrained(tmp)
        load_tokenizer(model_dir).save_pretrained(tmp)
        (tmp / "README.md").write_text(model_card(stage, chain, read_json(summary_path), config), encoding="utf-8")
    log.info("exported %s (%s) to %s", stage, " <- ".join(step["path"] for step in chain), out_dir)
    return chain


def model_card(stage: str, chain: list[dict[str, Any]], summary: dict[str, Any], config: dict[str, Any]) -> str:
    """A Hugging Face model card: what the model is, where it came from, how it scored, the config used."""
    hub = next((step["source"] for step in chain if step.get("source", {}).get("kind") == "hub"), None)
    return pages.model_card(
        title=f"sftdpo: the {stage} model",
        intro=f"The `{stage}` stage of an sftdpo run (expert demonstrations, SFT, preference pairs, DPO), with any "
        "adapters merged into their base: load it with `AutoModelForCausalLM.from_pretrained` and its tokenizer "
        "(chat template included) with `AutoTokenizer.from_pretrained`.",
        tags=[stage],
        tables=[lineage_table(chain), accuracy_table(stage, summary)],
        config=config,
        base_model=hub["name_or_path"] if hub else None,
    )


def lineage_table(chain: list[dict[str, Any]]) -> pages.Table:
    rows = [
        [step["path"], step["kind"], json.dumps(step["source"], sort_keys=True) if "source" in step else "-"]
        for step in chain
    ]
    return pages.Table("Lineage", ["model directory", "kind", "source"], rows,
                       "This model, then the model each adapter was trained on.")  # fmt: skip


def accuracy_table(stage: str, summary: dict[str, Any]) -> pages.Table:
    s = summary["stages"].get(stage)
    rows = [] if s is None else [[stage, s["accuracy"], pages.ci(s["ci95"]), s["n"]]]
    rows += [
        [f"by difficulty {level}", acc, "-", s["n_by_difficulty"][level]]
        for level, acc in (s or {}).get("by_difficulty", {}).items()
    ]
    return pages.Table(
        "Test accuracy", ["", "accuracy", "95% CI", "n"], rows, "Greedy decoding on the run's test split."
    )
