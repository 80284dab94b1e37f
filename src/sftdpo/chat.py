"""Chat messages in TRL's conversational format and the prompt's token ids under a chat template."""

from __future__ import annotations

import json
import logging
from typing import Any, Callable

log = logging.getLogger(__name__)

Message = dict[str, str]


def chat_messages(
    prompt: str, completion: str | None = None, *, context: list[Message] = ()
) -> dict[str, list[Message]]:
    """`{"prompt": [context..., user message]}`, plus `{"completion": [assistant message]}` when a completion is
    given. `context`: the messages before the final user message (a system message, earlier turns)."""
    messages = [{"role": m["role"], "content": m["content"]} for m in context] if context else []
    messages.append({"role": "user", "content": prompt})
    row = {"prompt": messages}
    if completion is not None:
        row["completion"] = [{"role": "assistant", "content": completion}]
    return row


def demo_context(meta: Any, system_prompt: str | None = None) -> list[Message]:
    """The messages before a demonstration's prompt: `meta.context` (an imported conversation's system message
    and earlier turns), with `system_prompt` (convert.system_prompt) first unless it has a system message."""
    if isinstance(meta, str) and '"context"' not in meta:
        meta = {}  # most rows: no JSON to parse (1M rows)
    meta = json.loads(meta) if isinstance(meta, str) and meta else meta if isinstance(meta, dict) else {}
    context = [{"role": m["role"], "content": m["content"]} for m in meta.get("context") or []]
    if system_prompt and not (context and context[0]["role"] == "system"):
        context.insert(0, {"role": "system", "content": system_prompt})
    return context


def with_user_text(prompt_messages: list[Message], text: str) -> list[Message]:
    """The prompt messages with the final user message's text replaced (rollouts' prompt variants)."""
    return [*(dict(m) for m in prompt_messages[:-1]), {"role": "user", "content": text}]


def prompt_ids(tokenizer, prompt_messages: list[Message]) -> list[int]:
    """Token ids of the prompt messages followed by the assistant's turn opener (generation prompt)."""
    return list(tokenizer.apply_chat_template(list(prompt_messages), add_generation_prompt=True)["input_ids"])


def render_chats(tokenizer, conversations: list[list[Message]], *, add_generation_prompt: bool) -> list[str]:
    """The texts of `tokenizer.apply_chat_template(conversations, add_generation_prompt=..., tokenize=False)`.

    Conversations of plain messages (string values only, none of them reasoning: every row convert makes) go
    straight to the template transformers compiles, with the keyword arguments its `render_jinja_template` gives it.
    What that function and apply_chat_template do first (per message: drop None values, copy every value into plain
    JSON types, alias reasoning fields) changes nothing on such messages and was half of convert's rendering time.
    The first conversation is rendered both ways on every call, so a transformers release that renders otherwise is
    caught, not copied. The template renders through `template_renderer`."""

    def through_apply(chats: list[list[Message]]) -> list[str]:
        return tokenizer.apply_chat_template(chats, add_generation_prompt=add_generation_prompt, tokenize=False)

    template, kwargs = _compiled_template(tokenizer)
    if not conversations or template is None or not all(map(_plain_message, (m for c in conversations for m in c))):
        return through_apply(conversations) if conversations else []
    render = template_renderer(template)
    texts = [
        render(messages=chat, tools=None, documents=None, add_generation_prompt=add_generation_prompt, **kwargs)
        for chat in conversations
    ]
    if texts[0] != through_apply(conversations[:1])[0]:
        log.warning("the chat template renders otherwise through apply_chat_template here: using the latter")
        return through_apply(conversations)
    return texts


def template_renderer(template) -> Callable[..., str]:
    """`template.render` for many calls in a row: the same text, with the template's globals copied once.

    Jinja's render makes each call's context from a copy of the template's globals, a ChainMap (the environment's
    and the template's) that Python reads key by key, twice (the context's variables and its globals' names): two
    thirds of a render of sftdpo's template (9.7 µs, 3.1 µs without). This copies them once, then makes each context as
    Template.render does (`jinja2.runtime.new_context`) and renders it as render does. An async environment, whose
    render runs differently, renders through `template.render`."""
    environment = template.environment
    if environment.is_async:
        return template.render
    variables = dict(template.globals)
    names = set(variables)

    def render(**kwargs: Any) -> str:
        context = environment.context_class(environment, {**variables, **kwargs}, template.name, template.blocks)
        context.globals_keys = names
        try:
            return environment.concat(template.root_render_func(context))
        except Exception:
            environment.handle_exception()  # raises it again with the template's line numbers, as render does

    return render


# Keys transformers copies a message's reasoning between before rendering (chat_template_utils._REASONING_FIELDS).
REASONING_KEYS = frozenset({"reasoning_content", "thinking", "reasoning"})


def _plain_message(message: Message) -> bool:
    """A message transformers hands to the template as it is: string values only, none of them reasoning."""
    return all(type(value) is str for value in message.values()) and REASONING_KEYS.isdisjoint(message)


def _compiled_template(tokenizer) -> tuple[Any, dict[str, Any]]:
    """The tokenizer's chat template as transformers compiles it (cached there) and the keyword arguments
    apply_chat_template renders it with (the special tokens' texts); (None, {}) where these are not plain strings
    or transformers has no such function."""
    try:
        from transformers.utils.chat_template_utils import _compile_jinja_template
    except ImportError:
        return None, {}
    kwargs = dict(tokenizer.special_tokens_map)
    if not all(type(value) is str for value in kwargs.values()):
        return None, {}
    return _compile_jinja_template(tokenizer.get_chat_template()), kwargs


def encode_texts(tokenizer, texts: list[str]) -> list[list[int]]:
    """The ids of `tokenizer(texts, add_special_tokens=False)["input_ids"]`.

    A fast tokenizer whose call would make exactly that one Rust call (transformers' own `TokenizersBackend`
    encoding, no truncation or padding set on the backend, special tokens split as the call would) goes through
    the backend's `encode_batch_fast`: the same ids without character offsets, and without the Python objects the
    call builds for every row (a third less time on convert's rows). Anything else goes through the call."""
    from transformers.tokenization_utils_tokenizers import TokenizersBackend

    backend = getattr(tokenizer, "backend_tokenizer", None)
    direct = (
        isinstance(tokenizer, TokenizersBackend)
        and all(
            getattr(type(tokenizer), name) is getattr(TokenizersBackend, name) for name in ("__call__", "_encode_plus")
        )
        and hasattr(backend, "encode_batch_fast")
        and backend.truncation is None
        and backend.padding is None
        and backend.encode_special_tokens == bool(tokenizer.split_special_tokens)
    )
    if not direct:
        encoded = tokenizer(texts, add_special_tokens=False, return_attention_mask=False, return_token_type_ids=False)
        return encoded["input_ids"]
    return [encoding.ids for encoding in backend.encode_batch_fast(texts, add_special_tokens=False)]


def assistant_token_mask(tokenizer, messages: list[Message]) -> tuple[list[int], list[int]]:
    """(input ids, loss mask) of a conversation; the mask is 1 on the tokens of every assistant turn (what the
    template appends after the assistant opener, end-of-turn token included), 0 elsewhere.

    Each turn's tokens are found by rendering the conversation up to it, so the template must be
    prefix-consistent: template(messages[:i], add_generation_prompt=True) a prefix of template(messages)."""
    full = list(tokenizer.apply_chat_template(list(messages))["input_ids"])
    mask = [0] * len(full)
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        start = prompt_ids(tokenizer, messages[:i])
        end = list(tokenizer.apply_chat_template(list(messages[: i + 1]))["input_ids"])
        if full[: len(start)] != start or full[: len(end)] != end:
            raise ValueError(
                "the tokenizer's chat template is not prefix-consistent: template(prompt, "
                f"add_generation_prompt=True) is not a prefix of template(prompt + completion) at message {i}"
            )
        mask[len(start) : len(end)] = [1] * (len(end) - len(start))
    return full, mask


def normalise_prompt(prompt: Any) -> str:
    """A prompt's identity for duplicates and leakage: lower case, whitespace collapsed (chat messages joined).

    Validation flags two rows with the same normalised prompt, and the split keeps them together."""
    if isinstance(prompt, (list, tuple)) or hasattr(prompt, "tolist"):
        prompt = " ".join(m["content"] for m in list(prompt))
    return " ".join(str(prompt).lower().split())
