"""Chat messages in TRL's conversational format and the prompt's token ids under a chat template."""

from __future__ import annotations

import functools
import json
import logging
import re
from itertools import chain
from typing import Any, Callable, NamedTuple

import numpy as np

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
    They render all in one call of the template looped over them (`block_template`) where it can be, else one by one
    (`template_renderer`). The first conversation is rendered through apply_chat_template on every call, so a
    transformers release that renders otherwise is caught, not copied, and the last one on its own, so a template
    whose loop would carry something from one conversation to the next is caught too."""

    def through_apply(chats: list[list[Message]]) -> list[str]:
        return tokenizer.apply_chat_template(chats, add_generation_prompt=add_generation_prompt, tokenize=False)

    template, source, kwargs = _compiled_template(tokenizer)
    if not conversations or template is None or not all(map(_plain_message, chain.from_iterable(conversations))):
        return through_apply(conversations) if conversations else []
    settings = dict(tools=None, documents=None, add_generation_prompt=add_generation_prompt, **kwargs)
    render = template_renderer(template)
    texts = render_block(block_template(source), conversations, settings)
    if texts is not None and texts[-1] != render(messages=conversations[-1], **settings):
        log.warning("the chat template renders a conversation otherwise after others: rendering one at a time")
        texts = None
    if texts is None:
        texts = [render(messages=chat, **settings) for chat in conversations]
    if texts[0] != through_apply(conversations[:1])[0]:
        log.warning("the chat template renders otherwise through apply_chat_template here: using the latter")
        return through_apply(conversations)
    return texts


# Between the texts `block_template` renders: not whitespace to Jinja (its `\s`), so no whitespace control strips it.
BLOCK_SEPARATOR = "\x00"
BLOCK_VARIABLE = "sftdpo_conversations"


@functools.lru_cache(maxsize=8)
def block_template(source: str):
    """The chat template `source` rendered once for each conversation of a list, in one call: its text inside
    `{% for messages in sftdpo_conversations %}...{% endfor %}`, BLOCK_SEPARATOR after each conversation's text, as
    transformers compiles templates. A render of one conversation builds a Jinja context for it (~1 µs) and the
    loop does not: convert rendered its conversations and prompts in ~1.5 µs a row this way against ~5.5 one by one.
    The loop's body sees what a render of one conversation sees: a `set` in it lasts one pass, and the body starts
    on a line of its own (trim_blocks takes the newline after the `for`) without the one trailing newline Jinja
    drops from a template (unless keep_trailing_newline). None where that cannot be shown from the source: a
    template that reads `loop` or BLOCK_VARIABLE outside its own loops, or extends, includes, imports or defines
    blocks, an environment without trim_blocks, or a source that does not compile."""
    from jinja2 import TemplateError, meta, nodes
    from transformers.utils.chat_template_utils import _compile_jinja_template

    environment = _compile_jinja_template(source).environment
    if not environment.trim_blocks:
        return None
    body = source if environment.keep_trailing_newline else re.sub(r"(\r\n|\r|\n)\Z", "", source)
    try:
        tree = environment.parse(body)
        wrapped = _compile_jinja_template(
            f"{{% for messages in {BLOCK_VARIABLE} %}}\n{body}{BLOCK_SEPARATOR}{{% endfor %}}"
        )
    except TemplateError:
        return None
    unsupported = (nodes.Extends, nodes.Block, nodes.Include, nodes.Import, nodes.FromImport)
    if {"loop", BLOCK_VARIABLE} & meta.find_undeclared_variables(tree) or any(tree.find_all(unsupported)):
        return None
    return wrapped


def render_block(template, conversations: list[list[Message]], settings: dict[str, Any]) -> list[str] | None:
    """Each conversation's text from one render of `block_template`'s template; None where there is none, or a
    text holds BLOCK_SEPARATOR (so the texts cannot be told apart: they are rendered one by one)."""
    if template is None:
        return None
    text = template_renderer(template)(**{BLOCK_VARIABLE: conversations}, **settings)
    if text.count(BLOCK_SEPARATOR) != len(conversations):
        return None
    return text.split(BLOCK_SEPARATOR)[:-1]


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
    """A message transformers hands to the template as it is: string values only, none of them reasoning. A role
    and a content alone (convert's messages) are told in a third of the time the general test takes."""
    if len(message) == 2 and type(message.get("role")) is str and type(message.get("content")) is str:
        return True
    return all(type(value) is str for value in message.values()) and REASONING_KEYS.isdisjoint(message)


def _compiled_template(tokenizer) -> tuple[Any, str | None, dict[str, Any]]:
    """The tokenizer's chat template as transformers compiles it (cached there), its source, and the keyword
    arguments apply_chat_template renders it with (the special tokens' texts); (None, None, {}) where these are not
    plain strings or transformers has no such function."""
    try:
        from transformers.utils.chat_template_utils import _compile_jinja_template
    except ImportError:
        return None, None, {}
    kwargs = dict(tokenizer.special_tokens_map)
    if not all(type(value) is str for value in kwargs.values()):
        return None, None, {}
    source = tokenizer.get_chat_template()
    return _compile_jinja_template(source), source, kwargs


def encode_texts(tokenizer, texts: list[str]) -> list[list[int]]:
    """The ids of `tokenizer(texts, add_special_tokens=False)["input_ids"]`.

    A fast tokenizer whose call would make exactly that one Rust call (`direct_backend`) goes through the backend's
    `encode_batch_fast`: the same ids without character offsets, and without the Python objects the call builds for
    every row (a third less time on convert's rows). Anything else goes through the call."""
    backend = direct_backend(tokenizer)
    if backend is None:
        encoded = tokenizer(texts, add_special_tokens=False, return_attention_mask=False, return_token_type_ids=False)
        return encoded["input_ids"]
    return [encoding.ids for encoding in backend.encode_batch_fast(texts, add_special_tokens=False)]


def direct_backend(tokenizer):
    """The tokenizer's Rust backend when `tokenizer(texts, add_special_tokens=False)` is exactly one call of its
    `encode_batch` (transformers' own `TokenizersBackend` encoding, no truncation or padding set on the backend,
    special tokens split as the call would), else None."""
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
    return backend if direct else None


NOT_PREFIX_CONSISTENT = (
    "the tokenizer's chat template is not prefix-consistent: template(prompt, add_generation_prompt=True) is not a "
    "prefix of template(prompt + completion)"
)


def prompt_tails(tokenizer, prompts: list[str], fulls: list[str]) -> list[PromptTail | None]:
    """Each prompt's tail (`AddedTokenSplits.tails`), None for all where the tokenizer does not allow them."""
    splits = added_token_splits(tokenizer)
    return splits.tails(prompts, fulls) if splits else [None] * len(prompts)


def prompt_lengths(
    tokenizer, prompts: list[str], full_ids: list[list[int]], tails: list, tail_ids: dict[str, list[int]]
) -> list[int]:
    """How many of each full text's ids (`encode_texts`) are its prompt's: the prompt's own ids, shown to be the
    first ids of the full text's. ValueError when they are not (the chat template is not prefix-consistent).

    Where the tokenizer allows it (`AddedTokenSplits`), a prompt its full text starts with is not encoded again:
    only its tail from its last added token on is (`prompt_tails`; `tail_ids`: the ids of their texts), once for all
    the prompts that end alike (encoding every prompt was a third of convert's tokenizer work). The first prompt
    found so is also encoded whole and compared, so a tokenizers release that splits otherwise is caught (a
    warning), not trusted: then every prompt is encoded."""
    splits = added_token_splits(tokenizer)
    lengths = splits.prompt_lengths(full_ids, tails, tail_ids) if splits and tail_ids else [None] * len(prompts)
    canary = next((i for i, length in enumerate(lengths) if length is not None), None)
    others = [i for i, length in enumerate(lengths) if length is None]
    encoded = encode_texts(tokenizer, [prompts[i] for i in [*others, *([canary] if canary is not None else [])]])
    if canary is not None and encoded.pop() != full_ids[canary][: lengths[canary]]:
        log.warning("the tokenizer does not split prompts at their added tokens as expected: encoding every prompt")
        others, encoded = list(range(len(prompts))), encode_texts(tokenizer, prompts)
    for i, ids in zip(others, encoded):
        if full_ids[i][: len(ids)] != ids:
            raise ValueError(NOT_PREFIX_CONSISTENT)
        lengths[i] = len(ids)
    return lengths


class PromptTail(NamedTuple):
    """A prompt from its last added token on (`text`), the number of added tokens before that one's end (`before`)
    and in its whole full text (`total`)."""

    before: int
    total: int
    text: str


class AddedTokenSplits:
    """A prompt's ids from its full text's ids and its tail's.

    The tokenizers library encodes a text in pieces: it first cuts out every match of an added token (a
    leftmost-longest search, before normalising), then normalises, pre-tokenises and encodes each piece between
    them on its own; with add_special_tokens=False the post-processor adds no ids. `added_token_splits` makes one
    only where (1) no added token is normalised, strips whitespace or must be a single word, (2) no added token's
    content overlaps one's (none inside another, no proper end of one the start of one) and (3) special tokens are
    split: then the matches are exactly the contents' occurrences. Let a prompt P start its full text F, and T be
    the added token whose occurrence in P ends last, at j. Then P's ids are those of P[:j], which end with T's id,
    followed by those of the piece P[j:]; F's ids start with the same ids of P[:j]. So ids(P) = ids(F)[:k] +
    ids(T + P[j:])[1:], where k is just past that T's id in ids(F) (P[j:] is read after T in both, at an offset
    past 0: Metaspace's prepend_scheme "first" looks at that). k is found by counting added-token ids, one per
    occurrence where the row's count of them is its count of occurrences (a model could in principle make an added
    token's id from plain text: such a row's prompt is encoded)."""

    def __init__(self, contents: list[str], added_ids: list[int], vocab_size: int):
        self.pattern = re.compile("|".join(map(re.escape, contents)))
        self.is_added = np.zeros(max(vocab_size, max(added_ids) + 1), dtype=bool)
        self.is_added[added_ids] = True

    def tails(self, prompts: list[str], fulls: list[str]) -> list[PromptTail | None]:
        """Each prompt's tail, None where its full text does not start with it or it holds no added token."""
        tails: list[PromptTail | None] = []
        for prompt, full in zip(prompts, fulls):
            end, before, total, start = len(prompt), 0, 0, 0
            if full.startswith(prompt):
                for match in self.pattern.finditer(full):
                    total += 1
                    if match.end() <= end:
                        before, start = before + 1, match.start()
            tails.append(PromptTail(before, total, prompt[start:]) if before else None)
        return tails

    def prompt_lengths(self, full_ids: list[list[int]], tails: list, tail_ids: dict[str, list[int]]) -> list:
        """Each prompt's number of ids, None where it must be encoded: no tail, added-token ids not one per
        occurrence, or the tail's ids not following T's in the full text's (encoding the prompt shows the error)."""
        lengths = np.fromiter(map(len, full_ids), dtype=np.int64, count=len(full_ids))
        ends = np.cumsum(lengths)
        flat = np.fromiter(chain.from_iterable(full_ids), dtype=np.int64, count=int(ends[-1]) if len(ends) else 0)
        positions = np.flatnonzero(self.is_added[flat])  # of every added-token id, in all rows' ids laid end to end
        rows = np.searchsorted(ends, positions, side="right")
        per_row = np.bincount(rows, minlength=len(full_ids))
        first = (np.cumsum(per_row) - per_row).tolist()  # each row's first added-token id's index in positions
        row_starts = (ends - lengths).tolist()
        per_row, positions = per_row.tolist(), positions.tolist()
        out: list[int | None] = []
        for i, (ids, tail) in enumerate(zip(full_ids, tails)):
            if tail is None or per_row[i] != tail.total:
                out.append(None)
                continue
            k = positions[first[i] + tail.before - 1] - row_starts[i] + 1
            head, *rest = tail_ids[tail.text]
            # not T's id there, or not the tail's ids after it (not prefix-consistent): the prompt is encoded
            consistent = ids[k - 1] == head and ids[k : k + len(rest)] == rest
            out.append(k + len(rest) if consistent else None)
        return out


def added_token_splits(tokenizer) -> AddedTokenSplits | None:
    """`AddedTokenSplits` for the tokenizer when its conditions hold, else None."""
    backend = direct_backend(tokenizer)
    if backend is None or backend.encode_special_tokens:
        return None
    added = backend.get_added_tokens_decoder()
    key = tuple((i, t.content, t.normalized or t.lstrip or t.rstrip or t.single_word) for i, t in sorted(added.items()))
    return _added_token_splits(key, backend.get_vocab_size(with_added_tokens=True))


@functools.lru_cache(maxsize=8)
def _added_token_splits(added: tuple[tuple[int, str, bool], ...], vocab_size: int) -> AddedTokenSplits | None:
    contents = [content for _, content, _ in added]
    if not added or any(flagged or not content for _, content, flagged in added) or len(set(contents)) < len(contents):
        return None
    starts = {content[:n] for content in contents for n in range(1, len(content))}
    if any(content[n:] in starts for content in contents for n in range(1, len(content))):
        return None  # an occurrence could overlap another
    if any(a != b and a in b for a in contents for b in contents):
        return None
    return AddedTokenSplits(contents, [i for i, _, _ in added], vocab_size)


def normalise_prompt(prompt: Any) -> str:
    """A prompt's identity for duplicates and leakage: lower case, whitespace collapsed (chat messages joined).

    Validation flags two rows with the same normalised prompt, and the split keeps them together."""
    if isinstance(prompt, (list, tuple)) or hasattr(prompt, "tolist"):
        prompt = " ".join(m["content"] for m in list(prompt))
    return " ".join(str(prompt).lower().split())
