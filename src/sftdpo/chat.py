"""Chat messages in TRL's conversational format and the prompt's token ids under a chat template."""

from __future__ import annotations


def chat_messages(prompt: str, completion: str | None = None) -> dict[str, list[dict[str, str]]]:
    """`{"prompt": [user message]}`, plus `{"completion": [assistant message]}` when a completion is given."""
    row = {"prompt": [{"role": "user", "content": prompt}]}
    if completion is not None:
        row["completion"] = [{"role": "assistant", "content": completion}]
    return row


def prompt_ids(tokenizer, prompt_messages: list[dict[str, str]]) -> list[int]:
    """Token ids of the prompt messages followed by the assistant's turn opener (generation prompt)."""
    return list(tokenizer.apply_chat_template(prompt_messages, add_generation_prompt=True)["input_ids"])
