"""Conversations: multi-turn chat imports kept whole (context turns, loss on every assistant turn, the verifier on
the final answer, malformed turns quarantined with file, line and field) and `convert.system_prompt`, rendered the
same for SFT, the rollouts and the evaluation."""

import json
from pathlib import Path

import h5py

from conftest import converted_splits, scratch_base_model
from sftdpo.chat import prompt_ids, with_user_text
from sftdpo.collect import collect_shard
from sftdpo.convert import convert
from sftdpo.evaluate import evaluate
from sftdpo.generation import prompt_messages
from sftdpo.io import read_json, read_parquet, write_parquet
from sftdpo.modeling import load_tokenizer
from sftdpo.rollouts import rollout_shard
from sftdpo.tasks import get_task
from sftdpo.validate import check_rows

CHAT = Path(__file__).parent / "conversations" / "multi_turn_chat.jsonl"
SYSTEM = "Solve it step by step and end with #### and the number."


def token_rows(tokens_path):
    with h5py.File(tokens_path) as h5:
        return h5["tokens"][:]


def test_multi_turn_chat_import_keeps_conversations(tmp_path):
    task = get_task("arithmetic")
    demos = collect_shard(
        task="gsm8k", task_options={}, n_problems=8, expert="files", seed=0, shard=0, n_shards=1,
        expert_options={"paths": [str(CHAT)], "format": "chat", "max_bad_fraction": 1.0},
        work_dir=str(tmp_path / "work"), out_path=str(tmp_path / "demos.parquet"), flush_every=10,
        summary_path=str(tmp_path / "summary.json"),
    )  # fmt: skip
    # Malformed turns are bad rows with the file, line and field; the rest are kept, whatever their length.
    bad = read_json(tmp_path / "summary.json")["files"]["bad_records"]
    expected = [
        (4, "messages[1].role", "'user' where 'assistant' belongs: expected an optional system message, then user"),
        (5, "messages[1].content", "empty assistant message"),
        (6, "messages[1].content", "missing"),
        (7, "answer", "no '#### <number>' answer line in 'messages[assistant]'"),
        (8, "messages", "the conversation does not end with an assistant message (the demonstration)"),
    ]
    assert [(b["file"], b["line"], b["field"]) for b in bad] == [
        (str(CHAT), line, field) for line, field, _ in expected
    ]
    assert all(b["reason"].startswith(reason) for b, (_, _, reason) in zip(bad, expected)), bad
    # The demonstration is the final exchange; the verifier checks the final answer (line 3's earlier assistant
    # turns have none, and line 1's earlier answer, 7, is not the row's).
    assert demos["prompt"].tolist() == [
        "He eats 2 of them. How many are left?",
        "A pen costs $2. How much do 5 pens cost?",
        "And then I find 3 more. How many now?",
    ]
    assert demos["answer"].tolist() == ["5", "10", "9"]
    checked = check_rows(demos, source="demos", task_options={}, max_prompt_chars=1000, max_completion_chars=1000)
    assert checked["reason"].isna().all()
    write_parquet(demos, tmp_path / "validated.parquet")

    problems = task.problems(40, seed=0)
    model_dir = scratch_base_model(tmp_path / "base", task, problems)
    report = convert(
        validated_path=str(tmp_path / "validated.parquet"), model_dir=model_dir,
        chat_path=str(tmp_path / "chat.parquet"), tokens_path=str(tmp_path / "tokens.h5"),
        report_path=str(tmp_path / "convert.json"), max_length=256,
        system_prompt=SYSTEM,
    )  # fmt: skip
    assert report["multi_turn_rows"] == 2 and report["n_rows"] == 3
    chat = read_parquet(tmp_path / "chat.parquet")
    lines = [json.loads(line)["messages"] for line in CHAT.read_text().splitlines()]
    # Line 1 keeps its own system message; the others get convert.system_prompt before their turns.
    expected = [
        lines[0],
        [{"role": "system", "content": SYSTEM}, *lines[1]],
        [{"role": "system", "content": SYSTEM}, *lines[2]],
    ]
    tokenizer = load_tokenizer(model_dir)
    tokens = token_rows(tmp_path / "tokens.h5")
    for row, conversation in zip(chat.itertuples(), expected):
        final = conversation[:-1]
        final[-1] = {**final[-1], "content": final[-1]["content"].strip()}
        assert [dict(m) for m in row.messages][:-1] == final and [dict(m) for m in row.prompt] == final
        assert row.completion[0]["content"].endswith(f"#### {row.answer}")
        ids, attention, loss = tokens[row.token_row].T
        # The loss covers every assistant turn, earlier ones included, and nothing else.
        assistant = [m["content"] for m in row.messages if m["role"] == "assistant"]
        assert tokenizer.decode(ids[loss == 1]) == "".join(text + tokenizer.eos_token for text in assistant)
        # What evaluate and the rollouts encode is the training row up to its final assistant turn.
        rendered = prompt_ids(tokenizer, prompt_messages(list(row.prompt)))
        assert list(ids[: len(rendered)]) == rendered and loss[len(rendered)] == 1
        assert not loss[len(rendered) - 1]


def test_system_prompt_reaches_training_rollouts_and_evaluation(tmp_path):
    task = get_task("arithmetic")
    problems = task.problems(60, seed=1)
    model_dir = scratch_base_model(tmp_path / "base", task, problems)
    paths = converted_splits(tmp_path, model_dir, task, problems, max_length=96, system_prompt=SYSTEM,
                             fractions={"train": 0.6, "val": 0.2, "test": 0.2})  # fmt: skip
    chat = read_parquet(tmp_path / "chat.parquet")
    tokenizer = load_tokenizer(model_dir)
    tokens = token_rows(paths["tokens"])
    for row in chat.itertuples():
        assert [m["role"] for m in row.messages] == ["system", "user", "assistant"]
        assert row.messages[0]["content"] == SYSTEM and row.prompt[0]["content"] == SYSTEM
        ids, _, loss = tokens[row.token_row].T
        n_prompt = int(loss.argmax())
        assert SYSTEM in tokenizer.decode(ids[:n_prompt])  # the tokenized prompt holds it
    test = read_parquet(paths["test"])
    for row in test.itertuples():
        ids, _, loss = tokens[row.token_row].T
        n_prompt = int(loss.argmax())
        # evaluate's prompt and a rollout's ("{prompt}" variant) are the training prompt, token for token.
        assert prompt_ids(tokenizer, prompt_messages(list(row.prompt))) == list(ids[:n_prompt])
        variant = with_user_text(row.prompt, "{prompt}".format(prompt=row.prompt[-1]["content"]))
        assert prompt_ids(tokenizer, variant) == list(ids[:n_prompt])
    # Both stages run on these prompts; the rollouts record the system message as the prompt's context.
    evaluated = evaluate(stage="base", model_dir=model_dir, items_path=paths["test"],
                         out_path=str(tmp_path / "e.parquet"), task_options={}, max_new_tokens=4, batch_size=8,
                         seed=0)  # fmt: skip
    assert len(evaluated) == len(test)
    rollouts = rollout_shard(
        model_dir=model_dir, train_path=paths["train"], val_path=paths["val"], out_path=str(tmp_path / "r.parquet"),
        work_dir=str(tmp_path / "work"), shard=0, n_shards=1, n_prompts=3, n_val_prompts=0, k=2, temperature=1.0,
        top_p=1.0, max_new_tokens=4, batch_size=4, variants=[], backend="transformers", task_options={}, seed=0,
    )  # fmt: skip
    assert len(rollouts) == 6
    assert all([dict(m) for m in context] == [{"role": "system", "content": SYSTEM}] for context in rollouts["context"])
