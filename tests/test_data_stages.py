"""Collection and conversion on real files: parquet shards, resume, HDF5 token tensor."""

import json

import h5py
import numpy as np
import pytest

from conftest import GSM8K, program_demos, scratch_base_model
from sftdpo.collect import collect_shard, read_problems, row_meta, write_problems
from sftdpo.convert import ConvertGateError, convert
from sftdpo.io import read_json, read_parquet, write_parquet
from sftdpo.modeling import load_tokenizer
from sftdpo.tasks import get_task

COMMON = dict(
    task="arithmetic",
    task_options={},
    n_problems=90,
    expert="program",
    expert_options={"error_rate": 0.2},
    seed=5,
    n_shards=3,
    flush_every=7,
)


def test_shards_partition_the_problems_and_resume_without_repeats(tmp_path):
    frames = [
        collect_shard(**COMMON, shard=s, work_dir=str(tmp_path / "work"), out_path=str(tmp_path / f"{s}.parquet"))
        for s in range(3)
    ]
    ids = [i for f in frames for i in f["id"]]
    assert len(ids) == len(set(ids)) == 90
    assert (frames[0]["correct"] == ~frames[0]["meta"].str.contains("injected_error")).all()
    # Kill emulation: keep the first 10 progress lines of shard 0, rerun, compare.
    (progress,) = (tmp_path / "work").glob("*/0.jsonl")  # work/<key of the shard's arguments and code>/
    lines = progress.read_text().splitlines(keepends=True)
    progress.write_text("".join(lines[:10]) + lines[10][:15])
    again = collect_shard(**COMMON, shard=0, work_dir=str(tmp_path / "work"), out_path=str(tmp_path / "again.parquet"))
    assert again.equals(frames[0])
    assert len(progress.read_text().splitlines()) == 30


@pytest.mark.parametrize(
    "expert_meta",
    [
        {"error_rate": 0.05, "seed": 0},
        {"error_rate": 0.05, "injected_error": "invalid_step", "seed": 0},
        {"z": '\u00e9t\u00e9 "quoted" }', "a": [1, {"b": None}], "problem": "replaced", "x": 1.5e-07},  # a teacher's
        {},
    ],
)
def test_row_meta_is_the_expert_meta_with_the_problem_meta_as_one_json_encode(expert_meta):
    """row_meta splices the problem's meta into the expert's meta text; the text is the one json.dumps gives."""
    problem_meta = {"operands": [3, 45, 6], "ops": ["+", "-"], "note": "\u00fc {x}"}
    text = json.dumps(expert_meta, sort_keys=True, default=str)
    expected = json.dumps({**expert_meta, "problem": problem_meta}, sort_keys=True, default=str)
    problem_text = json.dumps(problem_meta, sort_keys=True, default=str)
    assert row_meta(text, problem_text) == row_meta(text, problem_text) == expected  # the second from the cache
    assert json.loads(expected)["problem"] == problem_meta


def test_a_program_expert_without_errors_writes_the_solver_s_answers(tmp_path):
    frame = collect_shard(**{**COMMON, "expert_options": {"error_rate": 0.0}}, shard=0, work_dir=str(tmp_path / "w"),
                          out_path=str(tmp_path / "0.parquet"))  # fmt: skip
    task = get_task("arithmetic")
    problems = {p.id: p for p in task.problems(90, 5)}
    assert len(frame) == 30 and frame["correct"].all()
    assert frame["completion"].tolist() == [task.solve(problems[i]) for i in frame["id"]]
    assert {json.dumps(json.loads(m)["problem"], sort_keys=True) for m in frame["meta"]} == {
        json.dumps(problems[i].meta, sort_keys=True) for i in frame["id"]
    }


GSM8K_TRAIN = GSM8K / "train.jsonl"
GSM8K_OPTIONS = {"path": str(GSM8K_TRAIN)}
no_gsm8k = pytest.mark.skipif(not GSM8K_TRAIN.exists(), reason=f"GSM8K not found at {GSM8K}")


@pytest.mark.parametrize(
    "task, options",
    [("arithmetic", {}), pytest.param("gsm8k", GSM8K_OPTIONS, marks=no_gsm8k)],
    ids=["arithmetic", "gsm8k"],
)
def test_problems_made_once_are_each_shards_problems(tmp_path, task, options):
    """rule problems writes the task's problems once; each collect shard reads back its own, equal to the ones it
    would make (id, prompt, answer, difficulty and meta), from its own row group, and writes the same rows."""
    import pyarrow.parquet as pq

    n, seed, n_shards = 90, 5, 4
    path = str(tmp_path / "problems.parquet")
    assert (
        write_problems(task=task, task_options=options, n_problems=n, seed=seed, n_shards=n_shards, out_path=path)[
            "n_problems"
        ]
        == n
    )
    problems = get_task(task, **options).problems(n, seed)
    for shard in range(n_shards):
        mine, meta_texts = read_problems(path, shard)
        assert mine == problems[shard::n_shards]
        assert meta_texts == [json.dumps(p.meta, sort_keys=True, default=str) for p in mine]  # as demo rows take them
    metadata = pq.ParquetFile(path).metadata
    assert metadata.num_row_groups == n_shards and metadata.row_group(1).num_rows == len(problems[1::n_shards])
    settings = {**COMMON, "task": task, "task_options": options, "n_problems": n, "seed": seed, "n_shards": n_shards}
    made = collect_shard(**settings, shard=1, work_dir=str(tmp_path / "a"), out_path=str(tmp_path / "made.parquet"))
    read = collect_shard(**settings, shard=1, work_dir=str(tmp_path / "b"), out_path=str(tmp_path / "read.parquet"),
                         problems_path=path)  # fmt: skip
    assert len(made) == len(problems[1::n_shards]) and read.equals(made)
    assert (tmp_path / "made.parquet").read_bytes() == (tmp_path / "read.parquet").read_bytes()


def test_convert_writes_ids_attention_and_loss_masks(tmp_path):
    task = get_task("arithmetic")
    problems = task.problems(60, seed=0)
    model_dir = scratch_base_model(tmp_path / "base", task, problems)
    write_parquet(program_demos(task, problems[:20]), tmp_path / "v.parquet")
    report = convert(
        validated_path=str(tmp_path / "v.parquet"),
        model_dir=str(model_dir),
        chat_path=str(tmp_path / "chat.parquet"),
        tokens_path=str(tmp_path / "t.h5"),
        report_path=str(tmp_path / "c.json"),
        max_length=40,
    )
    chat = read_parquet(tmp_path / "chat.parquet")
    tokenizer = load_tokenizer(str(model_dir))
    with h5py.File(tmp_path / "t.h5") as h5:
        tokens = h5["tokens"][:]
        assert h5.attrs["max_length"] == 40 and len(h5.attrs["tokenizer_hash"]) == 16
        assert [i.decode() for i in h5["ids"][:]] == chat["id"].tolist()
    assert tokens.dtype == np.int32 and tokens.shape == (len(chat), 40, 3)
    for row in chat.itertuples():
        ids, attention, loss = tokens[row.token_row].T
        n = int(attention.sum())
        assert attention[:n].all() and not attention[n:].any()
        # The loss covers exactly the assistant turn: the completion text plus the eos token.
        target = tokenizer.decode(ids[loss == 1])
        assert target == row.completion[0]["content"] + tokenizer.eos_token
        assert row.messages[-1]["content"] == row.completion[0]["content"]
    assert report["overlength"] == [] or all(o["n_tokens"] > 40 for o in report["overlength"])
    assert len(chat) + len(report["overlength"]) == 20


def assistant_token_mask(tokenizer, messages):
    """The reference convert's masks are held to: (ids, loss mask) of a conversation by apply_chat_template, one
    call per prefix: the mask is 1 from the conversation rendered up to each assistant turn (with the generation
    prompt) to the conversation rendered up to its end."""
    full = list(tokenizer.apply_chat_template(list(messages))["input_ids"])
    mask = [0] * len(full)
    for i, message in enumerate(messages):
        if message["role"] == "assistant":
            start = tokenizer.apply_chat_template(list(messages[:i]), add_generation_prompt=True)["input_ids"]
            end = tokenizer.apply_chat_template(list(messages[: i + 1]))["input_ids"]
            assert full[: len(start)] == start and full[: len(end)] == end
            mask[len(start) : len(end)] = [1] * (len(end) - len(start))
    return full, mask


def test_a_block_of_multi_turn_conversations_only_is_tokenized(tmp_path):
    """A block of conversations with earlier assistant turns only: every assistant turn is masked."""
    from sftdpo.convert import tokenize_conversations

    task = get_task("arithmetic")
    tokenizer = load_tokenizer(scratch_base_model(tmp_path / "base", task, task.problems(60, seed=0)))
    turns = [{"role": "user", "content": "What is 1+1?"}, {"role": "assistant", "content": "1+1=2\n#### 2"}]
    conversation = {"prompt": [*turns, {"role": "user", "content": "What is 2+2?"}],
                    "completion": [{"role": "assistant", "content": "2+2=4\n#### 4"}]}  # fmt: skip
    ids, masks = tokenize_conversations(tokenizer, [conversation, conversation])
    expected = assistant_token_mask(tokenizer, conversation["prompt"] + conversation["completion"])
    assert (ids[0], masks[0]) == (ids[1], masks[1]) == expected
    first_answer = tokenizer.apply_chat_template(turns)["input_ids"]
    assert sum(masks[0][: len(first_answer)]) > 0 and sum(masks[0][len(first_answer) :]) > 0  # both turns


@pytest.mark.parametrize("template", ["scratch", "chatml"])
def test_convert_masks_every_assistant_turn_as_apply_chat_template_does(tmp_path, template):
    """Real GSM8K conversations, a quarter with an earlier exchange (whose answer holds a special token's text),
    some with a system message, in one block: every row's ids and loss mask are the reference's (one
    apply_chat_template call per prefix), with sftdpo's template and a ChatML-like one."""
    from sftdpo.convert import tokenize_conversations

    task = get_task("gsm8k", path=str(GSM8K / "train.jsonl"))
    tokenizer = load_tokenizer(scratch_base_model(tmp_path / "base", task, task.problems(60, seed=0)))
    if template == "chatml":
        tokenizer.chat_template = CHATML
        tokenizer.add_special_tokens(
            {"bos_token": "<|bos|>", "additional_special_tokens": ["<|im_start|>", "<|im_end|>"]}
        )
    chats = gsm8k_conversations(80)
    conversations = [{"prompt": chat[:-1], "completion": chat[-1:]} for chat in chats]
    ids, masks = tokenize_conversations(tokenizer, conversations)
    expected = [assistant_token_mask(tokenizer, chat) for chat in chats]
    assert list(zip(ids, masks)) == expected
    with_earlier_turns = [i for i, chat in enumerate(chats) if sum(m["role"] == "assistant" for m in chat) > 1]
    assert len(with_earlier_turns) == 20
    for i in with_earlier_turns:  # two spans of ones: the earlier answer's and the completion's
        runs = "".join(map(str, masks[i])).replace("0", " ").split()
        assert len(runs) == 2


# A ChatML-like template with what real templates use: a default system message, the special tokens map, filters.
CHATML = (
    "{{ bos_token }}{%- if messages[0]['role'] != 'system' -%}"
    "{{ '<|im_start|>system\\nYou are helpful.<|im_end|>\\n' }}{%- endif -%}"
    "{%- for m in messages -%}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] | trim + '<|im_end|>\\n' }}"
    "{%- endfor -%}{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)


def gsm8k_conversations(n: int) -> list[list[dict]]:
    """Real GSM8K rows as conversations: with and without a system message and earlier turns, and texts that hold
    a special token's text, unicode and surrounding spaces."""
    rows = [json.loads(line) for line in GSM8K.joinpath("train.jsonl").read_text().splitlines()[:n]]
    out = []
    for i, row in enumerate(rows):
        turn = [{"role": "user", "content": row["question"]}, {"role": "assistant", "content": row["answer"]}]
        context = [{"role": "system", "content": " Résous-le pas à pas. "}] if i % 3 == 0 else []
        if i % 4 == 1:
            context += [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4<|eos|>"}]
        out.append(context + turn)
    return out


@pytest.mark.parametrize("case", ["scratch", "chatml", "split_special_tokens", "backend_truncation", "none_value"])
def test_render_chats_and_encode_texts_give_what_apply_chat_template_gives(tmp_path, monkeypatch, case):
    """convert's rendering (the template transformers compiles, called directly) and encoding (the backend's
    encode_batch_fast) give the texts and ids of apply_chat_template and the tokenizer call, on real GSM8K rows;
    the direct paths are taken where they are the same call, and the tokenizer call where it is not (special tokens
    split, truncation set on the backend)."""
    from transformers.tokenization_utils_tokenizers import TokenizersBackend

    from sftdpo.chat import encode_texts, render_chats

    task = get_task("gsm8k", path=str(GSM8K / "train.jsonl"))
    conversations = gsm8k_conversations(60)
    model_dir = scratch_base_model(tmp_path / "base", task, task.problems(60, seed=0))
    tokenizer = load_tokenizer(model_dir)
    if case == "chatml":
        tokenizer.chat_template = CHATML
        tokenizer.add_special_tokens(
            {"bos_token": "<|bos|>", "additional_special_tokens": ["<|im_start|>", "<|im_end|>"]}
        )
    if case == "split_special_tokens":
        tokenizer.split_special_tokens = True
    if case == "backend_truncation":
        tokenizer.backend_tokenizer.enable_truncation(8)
    if case == "none_value":
        conversations[5][-1]["name"] = None  # apply_chat_template drops it
    calls = {"apply_chat_template": 0, "_encode_plus": 0}  # conversations / texts each was given
    for cls, name in ((type(tokenizer), "apply_chat_template"), (TokenizersBackend, "_encode_plus")):
        original = getattr(cls, name)

        def counted(self, *args, _original=original, _name=name, **kwargs):
            calls[_name] += len(args[0] if args else kwargs.get("text", kwargs.get("conversation")))
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(cls, name, counted)
    # transformers' renderer (its per-message copies): only under apply_chat_template, not on convert's direct path
    import transformers.tokenization_utils_base as base
    from transformers.utils import chat_template_utils

    original_render = base.render_jinja_template

    def counted_render(conversations, *args, **kwargs):
        calls["render_jinja_template"] += len(conversations)
        return original_render(conversations, *args, **kwargs)

    calls["render_jinja_template"] = 0
    monkeypatch.setattr(base, "render_jinja_template", counted_render)
    monkeypatch.setattr(chat_template_utils, "render_jinja_template", counted_render)
    texts = {g: render_chats(tokenizer, conversations, add_generation_prompt=g) for g in (False, True)}
    ids = encode_texts(tokenizer, texts[False])
    direct_calls = dict(calls)
    assert texts[True] == tokenizer.apply_chat_template(conversations, add_generation_prompt=True, tokenize=False)
    assert texts[False] == tokenizer.apply_chat_template(conversations, tokenize=False)
    expected = tokenizer(texts[False], add_special_tokens=False)["input_ids"]
    assert ids == expected and len(ids) == 60 and min(map(len, ids)) > 20
    # the rendering's check: one conversation through apply_chat_template per call; all of them with a None value
    assert direct_calls["apply_chat_template"] == (120 if case == "none_value" else 2)
    assert direct_calls["render_jinja_template"] == direct_calls["apply_chat_template"]
    assert direct_calls["_encode_plus"] == (60 if case in ("split_special_tokens", "backend_truncation") else 0)
    if case == "chatml":
        assert texts[True][0].startswith("<|bos|><|im_start|>system\nRésous-le pas à pas.<|im_end|>")
        assert ids[1][:2] == tokenizer.convert_tokens_to_ids(["<|bos|>", "<|im_start|>"])
    if case == "split_special_tokens":
        assert tokenizer.eos_token_id not in ids[1]  # "4<|eos|>" in the context, split into pieces
    if case == "backend_truncation":
        assert max(map(len, ids)) > 8


# A template that reads the globals Jinja and transformers give it, sets variables and raises on a bad role.
GLOBALS_TEMPLATE = (
    "{%- set ns = namespace(turns=0) -%}{%- set row = cycler('odd', 'even') -%}"
    "{%- for m in messages -%}{%- if m['role'] not in ['system', 'user', 'assistant'] -%}"
    "{{ raise_exception('unknown role ' + m['role']) }}{%- endif -%}{%- set ns.turns = ns.turns + 1 -%}"
    "{{ row.next() }}{% for _ in range(loop.index) %}>{% endfor %} {{ m['role'] }}: {{ m['content'] }};"
    "{%- endfor -%}{%- if add_generation_prompt -%}{{ ns.turns }} turns, {{ eos_token }} assistant:{%- endif -%}"
)


@pytest.mark.parametrize("source", ["sftdpo", "chatml", "globals"])
def test_template_renderer_renders_and_raises_as_template_render(source):
    """render_chats' `template_renderer` (the template's globals copied once for many renders) gives the text
    Jinja's Template.render gives, on the templates sftdpo makes, ChatML, and one that reads Jinja's and
    transformers' globals, and raises the same error where the template raises."""
    from jinja2.exceptions import TemplateError
    from transformers.utils.chat_template_utils import _compile_jinja_template

    from sftdpo.chat import template_renderer
    from sftdpo.modeling import CHAT_TEMPLATES

    template = _compile_jinja_template(
        {"sftdpo": CHAT_TEMPLATES["sftdpo"], "chatml": CHATML}.get(source, GLOBALS_TEMPLATE)
    )
    render = template_renderer(template)
    tokens = {"bos_token": "<|bos|>", "eos_token": "<|eos|>", "pad_token": "<|pad|>"}
    for chat in gsm8k_conversations(12):
        for generation_prompt in (True, False):
            settings = dict(
                messages=chat, tools=None, documents=None, add_generation_prompt=generation_prompt, **tokens
            )
            assert render(**settings) == template.render(**settings)
    if source == "globals":
        text = render(messages=gsm8k_conversations(2)[1], add_generation_prompt=True, **tokens)
        assert text.startswith("odd> user: What is 2+2?;even>> assistant: 4<|eos|>;odd>>> user: ")
        assert text.endswith(";4 turns, <|eos|> assistant:")
        bad = dict(messages=[{"role": "tool", "content": "{}"}], add_generation_prompt=False, **tokens)
        with pytest.raises(TemplateError, match="unknown role tool") as ours:
            render(**bad)
        with pytest.raises(TemplateError) as jinjas:
            template.render(**bad)
        assert type(ours.value) is type(jinjas.value) and str(ours.value) == str(jinjas.value)


# Templates whose edges meet the loop `block_template` puts around them: a leading newline and indented tags, a
# trailing newline Jinja drops, `messages` set anew, a macro, a text ending in whitespace control, and a namespace
# that a reverse pass over the messages sets.
EDGE_TEMPLATES = [
    "\n  {% if messages[0]['role'] == 'system' %}[{{ messages[0]['content'] }}]{% endif %}\n"
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}{{ '>' if add_generation_prompt }}\n",
    "{% if messages[0]['role'] == 'system' %}{% set messages = messages[1:] %}{% endif %}"
    "{% for m in messages %}<{{ loop.index }}>{{ m['content'] | trim }}{% endfor %}\n\n",
    "{% macro turn(m) %}{{ m['role'] | upper }}={{ m['content'] }}{% endmacro %}"
    "{%- for m in messages -%}{{ turn(m) }};{%- endfor -%}{%- if add_generation_prompt %} A= {%- endif -%}",
    # a namespace found by a reverse pass, as tool-calling templates find the last user turn
    "{%- set ns = namespace(last_user=-1) -%}{%- for m in messages[::-1] -%}"
    "{%- if m.role == 'user' and ns.last_user < 0 -%}{%- set ns.last_user = messages|length - 1 - loop.index0 -%}"
    "{%- endif -%}{%- endfor -%}{%- for m in messages -%}{%- set content = m.content -%}"
    "{%- if m.role == 'assistant' and loop.index0 > ns.last_user -%}{{ '(final) ' }}{%- endif -%}"
    "{{ m.role }}:{{ content }}{{ '|' if not loop.last }}{%- endfor -%}{{ '|assistant:' if add_generation_prompt }}",
]


@pytest.mark.parametrize("source", ["sftdpo", "chatml", "globals", *range(len(EDGE_TEMPLATES))])
def test_block_template_renders_each_conversation_as_one_render_does(source):
    """`block_template` (the chat template looped over a block of conversations, rendered in one call) gives each
    conversation the text the template gives it alone, on sftdpo's template, ChatML, one that reads Jinja's and
    transformers' globals and sets variables, and templates whose start and end meet the loop."""
    from transformers.utils.chat_template_utils import _compile_jinja_template

    from sftdpo.chat import block_template, render_block, template_renderer
    from sftdpo.modeling import CHAT_TEMPLATES

    text = {"sftdpo": CHAT_TEMPLATES["sftdpo"], "chatml": CHATML, "globals": GLOBALS_TEMPLATE}.get(source)
    text = text or EDGE_TEMPLATES[source]
    block = block_template(text)
    assert block is not None
    one = template_renderer(_compile_jinja_template(text))
    conversations = gsm8k_conversations(12)
    for generation_prompt in (True, False):
        settings = dict(tools=None, documents=None, add_generation_prompt=generation_prompt,
                        bos_token="<|bos|>", eos_token="<|eos|>")  # fmt: skip
        texts = render_block(block, conversations, settings)
        assert texts == [one(messages=chat, **settings) for chat in conversations]
        assert len(set(texts)) == 12 and all(texts)


def test_block_template_leaves_what_it_cannot_show_to_one_render_at_a_time(tmp_path, caplog, monkeypatch):
    """No block template where the loop would change a text (a template reading `loop` outside its own loops, or
    the loop's own variable; includes); a block whose texts hold the separator, and one whose template renders a
    conversation otherwise after others, are rendered one at a time, with the same texts as apply_chat_template."""
    from transformers.utils.chat_template_utils import _compile_jinja_template

    import sftdpo.chat
    from sftdpo.chat import BLOCK_SEPARATOR, block_template, render_chats

    for source in ("{{ loop.index }}{{ messages }}", "{{ sftdpo_conversations }}", "{% include 'x' %}"):
        assert block_template(source) is None
    task = get_task("gsm8k", path=str(GSM8K / "train.jsonl"))
    tokenizer = load_tokenizer(scratch_base_model(tmp_path / "base", task, task.problems(20, seed=0)))
    conversations = gsm8k_conversations(6)
    conversations[3][-1]["content"] += BLOCK_SEPARATOR
    expected = tokenizer.apply_chat_template(conversations, tokenize=False)
    assert render_chats(tokenizer, conversations, add_generation_prompt=False) == expected
    # a loop that numbers its conversations: every text but the first differs from the template's own
    numbered = _compile_jinja_template(
        "{% for messages in sftdpo_conversations %}{{ loop.index }}" + BLOCK_SEPARATOR + "{% endfor %}"
    )
    monkeypatch.setattr(sftdpo.chat, "block_template", lambda source: numbered)
    texts = render_chats(tokenizer, conversations[:3] + conversations[4:], add_generation_prompt=True)
    assert texts == tokenizer.apply_chat_template(
        conversations[:3] + conversations[4:], tokenize=False, add_generation_prompt=True
    )
    assert "renders a conversation otherwise after others" in caplog.text


def test_chat_blocks_after_the_first_are_the_table_pandas_makes(tmp_path, monkeypatch):
    """convert_shard makes its first block's chat table through pandas and builds the later ones as its schema
    (`chat_table`): in blocks of 7 rows the file holds what one block makes (nulls, earlier turns and rows over
    max_length among them), and its schema, pandas' metadata included, is the same."""
    import pyarrow.parquet as pq

    import sftdpo.convert
    from sftdpo.convert import convert_shard
    from sftdpo.io import content_digest

    task = get_task("arithmetic")
    problems = task.problems(60, seed=0)
    model_dir = scratch_base_model(tmp_path / "base", task, problems)
    demos = program_demos(task, problems)
    demos["answer"] = demos["answer"].astype(object)
    demos.loc[[3, 30, 45], "answer"] = None
    demos["meta"] = None
    context = [{"role": "user", "content": "1+1?"}, {"role": "assistant", "content": "2"}]
    demos.loc[[10, 40], "meta"] = json.dumps({"context": context})
    write_parquet(demos, tmp_path / "v.parquet")
    found = []
    for batch in (4096, 7):
        monkeypatch.setattr(sftdpo.convert, "BATCH", batch)
        out = tmp_path / str(batch)
        out.mkdir()
        summary = convert_shard(
            validated_path=str(tmp_path / "v.parquet"), model_dir=str(model_dir), shard=0, n_shards=1,
            chat_path=str(out / "chat.parquet"), tokens_path=str(out / "t.h5"), summary_path=str(out / "s.json"),
            max_length=43,
        )  # fmt: skip
        found.append((content_digest(out / "chat.parquet"), content_digest(out / "t.h5"), summary))
        schema = pq.read_schema(out / "chat.parquet")
        found[-1] += (schema, schema.metadata)
        chat = read_parquet(out / "chat.parquet")
    assert found[0] == found[1]
    assert 0 < len(summary["overlength"]) < 60 and summary["multi_turn_rows"] == 2
    assert chat["answer"].isna().sum() >= 1 and len(chat["messages"].iloc[0]) >= 2


def test_convert_in_worker_processes_writes_the_same_files(tmp_path, monkeypatch):
    """Blocks tokenized by two worker processes give the files one process writes (some rows over max_length)."""
    import sftdpo.convert
    from sftdpo.io import content_digest

    task = get_task("arithmetic")
    problems = task.problems(120, seed=0)
    model_dir = scratch_base_model(tmp_path / "base", task, problems)
    write_parquet(program_demos(task, problems), tmp_path / "v.parquet")
    monkeypatch.setattr(sftdpo.convert, "BATCH", 10)  # 12 blocks: enough to start the workers
    digests = []
    for workers in (1, 2):
        out = tmp_path / f"workers{workers}"
        out.mkdir()
        monkeypatch.setattr(sftdpo.convert, "_WORKER", {})  # set only where blocks are tokenized
        report = convert(
            validated_path=str(tmp_path / "v.parquet"), model_dir=str(model_dir), chat_path=str(out / "chat.parquet"),
            tokens_path=str(out / "t.h5"), report_path=str(out / "c.json"), max_length=30, workers=workers,
        )  # fmt: skip
        digests.append((content_digest(out / "chat.parquet"), content_digest(out / "t.h5"), report))
        assert bool(sftdpo.convert._WORKER) == (workers == 1)  # two workers: none of it in this process
    assert 0 < len(digests[0][2]["overlength"]) < 120
    assert digests[0] == digests[1]


def test_convert_encodes_a_block_in_a_thread_while_it_renders_the_next(tmp_path, monkeypatch):
    """In the job's own process (`pipelined_blocks`), block i is encoded in the encoder thread while block i+1 is
    rendered; the blocks come out in order, each as `_tokenize_block` makes it alone (a block of multi-turn rows among
    them), and an error in the encoder thread reaches the caller."""
    import threading

    import sftdpo.convert as convert_module

    task = get_task("arithmetic")
    problems = task.problems(40, seed=0)
    demos = program_demos(task, problems)
    tokenizer = load_tokenizer(scratch_base_model(tmp_path / "base", task, problems))
    context = json.dumps({"context": [{"role": "user", "content": "What is 1+1?"},
                                      {"role": "assistant", "content": "1+1=2\n#### 2"}]})  # fmt: skip
    metas = [None] * 20 + [context] * 10 + [None] * 10
    rows = list(zip(demos["prompt"], demos["completion"], metas))
    blocks = [tuple(map(list, zip(*rows[start : start + 10]))) for start in range(0, 40, 10)]
    monkeypatch.setattr(convert_module, "_WORKER", {})
    convert_module._start_worker("unused", None, 40, tokenizer)
    alone = [convert_module._tokenize_block(block) for block in blocks]

    rendered = [threading.Event() for _ in blocks]
    overlapped, encoder_threads = [], set()
    render, encode = convert_module._rendered_block, convert_module._encoded_block

    def rendering(block):
        result = render(block)
        rendered[blocks.index(block)].set()
        return result

    def encoding(block_rendered):
        i = next(i for i, block in enumerate(blocks) if block[0][0] == block_rendered[0][0]["prompt"][-1]["content"])
        encoder_threads.add(threading.current_thread().name)
        if i + 1 < len(blocks):  # the next block is rendered while this one is encoded, or never (a serial loop)
            overlapped.append(rendered[i + 1].wait(timeout=30))
        return encode(block_rendered)

    monkeypatch.setattr(convert_module, "_rendered_block", rendering)
    monkeypatch.setattr(convert_module, "_encoded_block", encoding)
    piped = list(convert_module.pipelined_blocks(blocks))
    assert overlapped == [True] * 3 and all(name.startswith("convert-encoder") for name in encoder_threads)
    assert len(piped) == len(alone) == 4 and sum(piped[2][1]) > sum(piped[0][1])  # the multi-turn block: longer
    for (conversations, n_tokens, tensor), (conversations_alone, n_tokens_alone, tensor_alone) in zip(piped, alone):
        assert conversations == conversations_alone
        assert np.array_equal(n_tokens, n_tokens_alone) and np.array_equal(tensor, tensor_alone)

    def failing(block_rendered):
        raise RuntimeError("the encoder failed")

    monkeypatch.setattr(convert_module, "_encoded_block", failing)
    with pytest.raises(RuntimeError, match="the encoder failed"):
        list(convert_module.pipelined_blocks(blocks))


def test_workers_get_the_job_s_tokenizer_unless_it_is_a_model_s_own_code(tmp_path):
    """A transformers tokenizer goes to the worker processes pickled, and tokenizes there as in the job; a class from
    elsewhere (a model's trust_remote_code tokenizer) is loaded by each worker from the model directory instead."""
    import pickle

    from sftdpo.convert import shipped_tokenizer

    task = get_task("arithmetic")
    tokenizer = load_tokenizer(scratch_base_model(tmp_path / "base", task, task.problems(30, seed=0)))
    shipped = pickle.loads(pickle.dumps(shipped_tokenizer(tokenizer)))
    texts = tokenizer.apply_chat_template([[{"role": "user", "content": "What is 12+30?"}]], tokenize=False)
    assert (
        shipped(texts)["input_ids"] == tokenizer(texts)["input_ids"]
        and shipped.chat_template == tokenizer.chat_template
    )
    remote_code = type("RemoteTokenizer", (type(tokenizer),), {"__module__": "transformers_modules.some_model"})
    tokenizer.__class__ = remote_code
    assert shipped_tokenizer(tokenizer) is None


@pytest.mark.parametrize("shards", [2, 5, 130])  # 130 shards of 120 rows: ten of them empty
def test_convert_shards_put_together_make_the_files_of_one(tmp_path, monkeypatch, shards):
    """convert_shard over a share of the rows each, then merge_shards: the chat rows, token tensor and report of one
    shard, `token_row` counted over all shards, overlength rows and gates over the totals."""
    import sftdpo.convert
    from sftdpo.io import content_digest

    task = get_task("arithmetic")
    problems = task.problems(120, seed=0)
    model_dir = scratch_base_model(tmp_path / "base", task, problems)
    write_parquet(program_demos(task, problems), tmp_path / "v.parquet")
    monkeypatch.setattr(sftdpo.convert, "BATCH", 10)
    found = []
    for n in (1, shards):
        out = tmp_path / f"shards{n}"
        report = convert(
            validated_path=str(tmp_path / "v.parquet"), model_dir=str(model_dir), chat_path=str(out / "chat.parquet"),
            tokens_path=str(out / "t.h5"), report_path=str(out / "c.json"), max_length=30, shards=n,
        )  # fmt: skip
        found.append((content_digest(out / "chat.parquet"), content_digest(out / "t.h5"), report))
        assert sorted(p.name for p in out.iterdir()) == ["c.json", "chat.parquet", "t.h5"]  # shards' files removed
    assert 0 < len(found[0][2]["overlength"]) < 120
    assert found[0] == found[1]
    chat = read_parquet(tmp_path / f"shards{shards}/chat.parquet")
    assert chat["token_row"].tolist() == list(range(len(chat)))
    with pytest.raises(ConvertGateError, match=r"gate max_dropped_fraction: \d+/120 rows"):
        convert(
            validated_path=str(tmp_path / "v.parquet"), model_dir=str(model_dir), chat_path=str(tmp_path / "g/c.pq"),
            tokens_path=str(tmp_path / "g/t.h5"), report_path=str(tmp_path / "g/c.json"), max_length=30, shards=shards,
            gates={"max_dropped_fraction": 0.0},
        )  # fmt: skip
    assert not (tmp_path / "g/c.pq").exists()


def test_convert_shards_cover_every_row_once_in_order():
    from sftdpo.convert import shard_rows

    for n_rows, n_shards in [(0, 3), (1, 1), (2, 5), (40_967, 3), (10**6, 8)]:
        parts = [shard_rows(n_rows, i, n_shards) for i in range(n_shards)]
        assert [r for part in parts for r in part] == list(range(n_rows))
        assert max(map(len, parts)) - min(map(len, parts)) <= 1
    with pytest.raises(ValueError, match="convert shard 3 is not one of 3 shards"):
        shard_rows(10, 3, 3)


@pytest.mark.e2e
def test_convert_job_tokenizes_in_worker_processes_with_the_same_files(tmp_path):
    """Through the snakemake CLI with enough rows for convert's worker processes (3 threads; up to 2 a job tokenizes
    in its own process): the job's script is imported again by each spawned worker, and the files equal those one
    process writes from the same validated rows; so do those of 3 convert shards of 2 threads each."""
    import yaml
    from conftest import TINY, snakemake

    from sftdpo.io import content_digest

    overlay = tmp_path / "rows.yaml"
    # 10 blocks of 4,096 rows in one convert shard (tiny.yaml has two)
    overlay.write_text(yaml.safe_dump({"task": {"n_problems": 40_000}, "convert": {"shards": 1}}))
    snakemake("results/data/convert.json", "-c3", "--set-threads", "convert_shard=3", "--configfile", TINY, overlay,
              cwd=tmp_path, timeout=900)  # fmt: skip
    assert "tokenized by 3 worker processes" in (tmp_path / "logs/convert_shard/0.log").read_text()
    results = tmp_path / "results"
    one_shard = {name: content_digest(results / "data" / name) for name in ("chat.parquet", "tokens.h5")}
    alone = tmp_path / "alone"
    alone.mkdir()
    report = convert(
        validated_path=str(results / "demos/validated.parquet"), model_dir=str(results / "base/model"),
        chat_path=str(alone / "chat.parquet"), tokens_path=str(alone / "tokens.h5"),
        report_path=str(alone / "convert.json"), max_length=96, gates={}, workers=1,
    )  # fmt: skip
    assert report["n_rows"] > 8 * 4096
    for name in ("chat.parquet", "tokens.h5"):
        assert content_digest(results / "data" / name) == content_digest(alone / name), name
    # Three convert_shard jobs of ~12,700 rows each, put together by rule convert: the same files again; only the
    # convert jobs rerun.
    overlay.write_text(yaml.safe_dump({"task": {"n_problems": 40_000}, "convert": {"shards": 3}}))
    out = snakemake("results/data/convert.json", "-c2", "--configfile", TINY, overlay, cwd=tmp_path, timeout=900)
    assert sorted(p.name for p in (results / "data/shards").glob("*.summary.json")) == [
        "0.summary.json", "1.summary.json", "2.summary.json"]  # fmt: skip
    assert "rule validate:" not in out.stderr and "rule convert_shard:" in out.stderr
    assert "worker processes" not in (tmp_path / "logs/convert_shard/0.log").read_text()
    validated = len(read_parquet(results / "demos/validated.parquet"))
    shares = [read_json(results / f"data/shards/{i}.summary.json")["rows"] for i in range(3)]
    assert shares == [[0, validated // 3], [validated // 3, 2 * validated // 3], [2 * validated // 3, validated]]
    assert {name: content_digest(results / "data" / name) for name in one_shard} == one_shard
