"""convert's prompt lengths: a prompt's number of ids taken from its full text's ids and its tail's
(`sftdpo.chat.prompt_lengths`, `AddedTokenSplits`) is the number encoding the prompt on its own gives, on tokenizers
of every kind the tokenizers library builds; a template that is not prefix-consistent is still an error."""

import json
import logging
import random

import pytest
from conftest import GSM8K

from sftdpo.chat import AddedTokenSplits, added_token_splits, encode_texts, prompt_lengths, prompt_tails

ROLES = ["<|user|>", "<|assistant|>", "<|eos|>"]


def corpus() -> list[str]:
    rows = [json.loads(line) for line in GSM8K.joinpath("train.jsonl").read_text().splitlines()[:300]]
    texts = [row["question"] + "\n" + row["answer"] for row in rows]
    return [*texts, "Q0: |> <| s|> abs 'é' Résous-le"]  # the characters the tests' texts add: none unknown


def tokenizer_of(kind: str):
    """A fast tokenizer trained on GSM8K text, of the kind named, with ROLES as special tokens."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if kind == "byte_level_bpe":  # sftdpo's own (Digits + ByteLevel)
        from sftdpo.modeling import train_tokenizer

        return train_tokenizer(corpus(), vocab_size=400)
    if kind == "metaspace_unigram":  # sentencepiece-like: a piece starts with "▁", prepended to the text's start only
        tokenizer = Tokenizer(models.Unigram())
        tokenizer.normalizer = normalizers.NFKC()
        tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="first")
        trainer = trainers.UnigramTrainer(vocab_size=300, special_tokens=["<unk>", *ROLES], unk_token="<unk>")
    elif kind == "lowercase_wordpiece":  # BERT-like: normalised, "##" pieces
        tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
        tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
        tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        trainer = trainers.WordPieceTrainer(vocab_size=300, special_tokens=["[UNK]", *ROLES])
    else:  # byte-level BPE with a prefix space on every piece
        tokenizer = Tokenizer(models.BPE())
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
        trainer = trainers.BpeTrainer(
            vocab_size=400, special_tokens=ROLES, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
        )
    tokenizer.train_from_iterator(corpus(), trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, additional_special_tokens=ROLES)


KINDS = ["byte_level_bpe", "metaspace_unigram", "lowercase_wordpiece", "prefix_space_bpe"]


@pytest.fixture(scope="module", params=KINDS)
def tokenizer(request):
    return tokenizer_of(request.param)


def pairs(seed: int = 0) -> list[tuple[str, str]]:
    """(prompt, full text) pairs: templated GSM8K rows, with completions that start inside the prompt's last piece
    (spaces, newlines, digits, letters), hold added tokens or start one the prompt's end began; prompts with no
    added token or several; and random texts made of added tokens' fragments."""
    rng = random.Random(seed)
    rows = [json.loads(line) for line in GSM8K.joinpath("test.jsonl").read_text().splitlines()[:40]]
    out = []
    for i, row in enumerate(rows):
        prompt = f"<|user|>\n{row['question']}\n<|assistant|>\n"
        out.append((prompt, prompt + row["answer"] + "<|eos|>"))
        out.append((prompt.rstrip("\n"), prompt + row["answer"]))  # the tail "<|assistant|>" alone
        out.append((f"{row['question']}\n", f"{row['question']}\n{row['answer']}"))  # no added token
        start = rng.choice([" ", "  x", "\n\n", "7", "x", "<|eos|>", "s|>", "<|assistant|>\n", "'s", "é"])
        tail = rng.choice(["\n<|assistant|>\n", "\n<|assistant|> ", "\n<|assistant|>\n<|eo", "\n<|assistant|>ab"])
        adversarial = f"<|user|>\nQ{i}: {row['question'][:40]}{tail}"
        out.append((adversarial, adversarial + start + row["answer"][:30] + "<|user|>\nmore<|assistant|>\n"))
    fragments = ["<|", "|>", "user", "assistant", "eos", "<|user|>", "<|assistant|>", "<|eos|>", " ", "\n", "7", "a"]
    for _ in range(200):
        text = "".join(rng.choice(fragments) for _ in range(rng.randint(1, 14)))
        cut = rng.randint(0, len(text))
        out.append((text[:cut], text))
    return out


def expected_lengths(tokenizer, prompts, fulls):
    """Encoding every prompt on its own: its number of ids, None where they are not the full text's first ids."""
    own, whole = encode_texts(tokenizer, prompts), encode_texts(tokenizer, fulls)
    return [len(ids) if full[: len(ids)] == ids else None for ids, full in zip(own, whole)]


def test_prompt_lengths_are_those_of_encoding_each_prompt(tokenizer):
    """Every consistent pair in one batch: the same lengths as encoding each prompt; each inconsistent pair alone:
    the prefix error. The tails did the work: most prompts were not encoded whole."""
    prompts, fulls = map(list, zip(*pairs()))
    expected = expected_lengths(tokenizer, prompts, fulls)
    consistent = [i for i, length in enumerate(expected) if length is not None]
    assert 150 < len(consistent) < len(expected)  # both kinds are tested
    full_ids = encode_texts(tokenizer, [fulls[i] for i in consistent])
    got = lengths_of(tokenizer, [prompts[i] for i in consistent], [fulls[i] for i in consistent], full_ids)
    assert got == [expected[i] for i in consistent]
    for i in set(range(len(expected))) - set(consistent):
        with pytest.raises(ValueError, match="not prefix-consistent"):
            lengths_of(tokenizer, [prompts[i]], [fulls[i]])
    splits = added_token_splits(tokenizer)
    sub_prompts, sub_fulls = [prompts[i] for i in consistent], [fulls[i] for i in consistent]
    tails = splits.tails(sub_prompts, sub_fulls)
    shortcut = splits.prompt_lengths(full_ids, tails, tail_ids(tokenizer, tails))
    assert sum(length is not None for length in shortcut) > len(consistent) / 2


def tail_ids(tokenizer, tails):
    texts = list(dict.fromkeys(tail.text for tail in tails if tail))
    return dict(zip(texts, encode_texts(tokenizer, texts)))


def lengths_of(tokenizer, prompts, fulls, full_ids=None):
    """`prompt_lengths` as convert calls it: tails at rendering, their ids encoded with the full texts'."""
    tails = prompt_tails(tokenizer, prompts, fulls)
    full_ids = encode_texts(tokenizer, fulls) if full_ids is None else full_ids
    return prompt_lengths(tokenizer, prompts, full_ids, tails, tail_ids(tokenizer, tails))


def test_a_row_whose_model_makes_an_added_tokens_id_encodes_its_prompt():
    """An added token whose content is a string of the model's vocabulary (here byte-level "Ġthe", made from " the")
    takes the model's id, so plain text can give an added token's id: the row's count of added-token ids is then
    not its count of occurrences, and its prompt is encoded on its own."""
    from tokenizers import AddedToken

    tokenizer = tokenizer_of("byte_level_bpe")
    vocab = tokenizer.backend_tokenizer.get_vocab(with_added_tokens=False)
    piece = next(p for p in ("Ġthe", "Ġa", "Ġis") if p in vocab)
    tokenizer.add_tokens([AddedToken(piece, normalized=False)])
    assert tokenizer.convert_tokens_to_ids(piece) == vocab[piece]
    word = piece[1:]
    prompt = f"<|user|>\nWhat is {word} sum of {word} two?\n<|assistant|>\n"
    # the third: the plain " the" would pass for the literal piece ending the prompt, its ids followed by the same
    # "\n" as the piece's: only the count of added-token ids tells them apart
    prompts = [prompt, "<|user|>\nno<|assistant|>\n", f"<|user|> {word}\n{piece}\n"]
    fulls = [prompt + "42<|eos|>", "<|user|>\nno<|assistant|>\n1", f"<|user|> {word}\n{piece}\n42"]
    full_ids = encode_texts(tokenizer, fulls)
    assert full_ids[0].count(vocab[piece]) == full_ids[2].count(vocab[piece]) == 2  # one from the plain " the"
    splits = added_token_splits(tokenizer)
    tails = splits.tails(prompts, fulls)
    shortcut = splits.prompt_lengths(full_ids, tails, tail_ids(tokenizer, tails))
    assert shortcut[0] is None and shortcut[1] is not None and shortcut[2] is None
    assert lengths_of(tokenizer, prompts, fulls) == expected_lengths(tokenizer, prompts, fulls)


@pytest.mark.parametrize(
    "change",
    ["overlapping_contents", "content_inside_another", "normalized", "rstrip", "single_word", "split_special_tokens"],
)
def test_the_shortcut_is_off_where_its_conditions_do_not_hold(change):
    """Added tokens that overlap, that are normalised, strip or match single words, or special tokens not split:
    every prompt is encoded, with the same lengths."""
    from tokenizers import AddedToken

    tokenizer = tokenizer_of("byte_level_bpe")
    assert added_token_splits(tokenizer) is not None
    plain = {"normalized": False}  # as special tokens are: only the change named is made
    if change == "overlapping_contents":  # "<|assistant|>\n<|eos|>" would hold two overlapping occurrences
        tokenizer.add_tokens([AddedToken("|>\n<|", **plain)])
    elif change == "content_inside_another":
        tokenizer.add_tokens([AddedToken("ant|>", **plain)])
    elif change == "split_special_tokens":
        tokenizer.split_special_tokens = True
        tokenizer.backend_tokenizer.encode_special_tokens = True
    else:
        tokenizer.add_tokens([AddedToken("Step", **{**plain, change: True})])
    assert added_token_splits(tokenizer) is None
    prompts, fulls = map(list, zip(*[pair for pair in pairs()[:40]]))
    expected = expected_lengths(tokenizer, prompts, fulls)
    keep = [i for i, length in enumerate(expected) if length is not None]
    got = lengths_of(tokenizer, [prompts[i] for i in keep], [fulls[i] for i in keep])
    assert got == [expected[i] for i in keep]


def test_a_tokenizer_that_splits_otherwise_is_caught_by_the_first_prompt(monkeypatch, caplog):
    """The first prompt found from its tail is also encoded whole: lengths that disagree (here one id off, as a
    tokenizers release that split otherwise would give) make a warning, and every prompt is encoded."""
    tokenizer = tokenizer_of("byte_level_bpe")
    prompts, fulls = map(list, zip(*pairs()[:40:4]))  # templated GSM8K rows, all consistent
    expected = expected_lengths(tokenizer, prompts, fulls)
    original = AddedTokenSplits.prompt_lengths
    monkeypatch.setattr(
        AddedTokenSplits,
        "prompt_lengths",
        lambda self, *args: [None if n is None else n - 1 for n in original(self, *args)],
    )
    with caplog.at_level(logging.WARNING, logger="sftdpo.chat"):
        got = lengths_of(tokenizer, prompts, fulls)
    assert got == expected
    assert "does not split prompts at their added tokens as expected" in caplog.text
