"""Chat messages in TRL's conversational format and the prompt's token ids under a chat template."""

from __future__ import annotations

from typing import Any


def chat_messages(prompt: str, completion: str | None = None) -> dict[str, list[dict[str, str]]]:
    """`{"prompt": [user message]}`, plus `{"completion": [assistant message]}` when a completion is given."""
    row = {"prompt": [{"role": "user", "content": prompt}]}
    if completion is not None:
        row["completion"] = [{"role": "assistant", "content": completion}]
    return row


def prompt_ids(tokenizer, prompt_messages: list[dict[str, str]]) -> list[int]:
    """Token ids of the prompt messages followed by the assistant's turn opener (generation prompt)."""
    return list(tokenizer.apply_chat_template(prompt_messages, add_generation_prompt=True)["input_ids"])


def normalise_prompt(prompt: Any) -> str:
    """A prompt's identity for duplicates and leakage: lower case, whitespace collapsed (chat messages joined).

    Validation flags two rows with the same normalised prompt, and the split keeps them together."""
    if isinstance(prompt, (list, tuple)) or hasattr(prompt, "tolist"):
        prompt = " ".join(m["content"] for m in list(prompt))
    return " ".join(str(prompt).lower().split())
