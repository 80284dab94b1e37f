"""model.chat_template: a preset or a Jinja file replaces the tokenizer's template in the base model directory,
which every later stage formats prompts with."""

import copy

import pytest

from test_config import MINIMAL, filled

from conftest import TINY_SCRATCH
from sftdpo.config_checks import CHAT_TEMPLATE_PRESETS, config_problems
from sftdpo.modeling import CHAT_TEMPLATE, CHAT_TEMPLATES, load_tokenizer, make_base_model

TEMPLATE = (
    "{%- for m in messages -%}{{ '### ' + m['role'] + ':\\n' + m['content'] }}"
    "{%- if m['role'] == 'assistant' -%}{{ '<|eos|>' }}{%- else -%}{{ '\\n' }}{%- endif -%}{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '### assistant:\\n' }}{%- endif -%}"
)


def test_a_template_file_becomes_the_model_directorys_template(tmp_path):
    (tmp_path / "template.jinja").write_text(TEMPLATE)
    texts = ["What is 1+2?\n1+2=3\n#### 3"]
    info = make_base_model(name_or_path="scratch", out_dir=str(tmp_path / "base"), scratch=TINY_SCRATCH,
                           tokenizer_texts=texts, trust_remote_code=False, seed=0,
                           chat_template=str(tmp_path / "template.jinja"))  # fmt: skip
    tokenizer = load_tokenizer(str(tmp_path / "base"))
    text = tokenizer.apply_chat_template([{"role": "user", "content": "What is 1+2?"}], tokenize=False,
                                         add_generation_prompt=True)  # fmt: skip
    assert text == "### user:\nWhat is 1+2?\n### assistant:\n"
    assert info["chat_template"] == str(tmp_path / "template.jinja")
    make_base_model(name_or_path="scratch", out_dir=str(tmp_path / "preset"), scratch=TINY_SCRATCH,
                    tokenizer_texts=texts, trust_remote_code=False, seed=0, chat_template="sftdpo")  # fmt: skip
    assert load_tokenizer(str(tmp_path / "preset")).chat_template == CHAT_TEMPLATE


def test_presets_and_the_config_check_agree(tmp_path):
    assert set(CHAT_TEMPLATES) == set(CHAT_TEMPLATE_PRESETS)
    config = copy.deepcopy(MINIMAL)
    config["model"]["chat_template"] = str(tmp_path / "missing.jinja")
    problems = config_problems(filled(config))
    assert any(
        p.startswith(f"model.chat_template: {tmp_path / 'missing.jinja'} is neither a preset (sftdpo)")
        for p in problems
    )
    config["model"]["chat_template"] = "sftdpo"
    assert not config_problems(filled(config))


# -- issue 14: every stage that loads a model renders prompts as convert did --------------------------------


def converted(tmp_path):
    """A scratch base model and the data converted with its tokenizer; returns (base dir, convert.json)."""
    from conftest import converted_splits, scratch_base_model
    from sftdpo.tasks import get_task

    task = get_task("arithmetic")
    problems = task.problems(60, seed=0)
    base = scratch_base_model(tmp_path / "base", task, problems)
    converted_splits(tmp_path, base, task, problems, max_length=48, fractions={"train": 0.6, "val": 0.2, "test": 0.2})
    return base, str(tmp_path / "convert.json")


def test_convert_records_the_rendering_and_the_same_tokenizer_passes(tmp_path):
    import json

    from sftdpo.modeling import check_rendering, rendering

    base, conversion = converted(tmp_path)
    record = json.loads(open(conversion).read())["rendering"]
    tokenizer = load_tokenizer(base)
    assert record == rendering(tokenizer)
    assert record["generation_prompt"] == "<|user|>\nWhat is 2 + 3?\n<|assistant|>\n"
    assert record["special_tokens"]["eos_token"] == "<|eos|>" and record["special_tokens"]["pad_token"] == "<|pad|>"
    check_rendering(tokenizer, base, conversion)  # the tokenizer convert used: no error
    check_rendering(tokenizer, base, None)  # library callers without a convert.json


def test_a_template_changed_after_conversion_stops_with_both_digests(tmp_path):
    import json

    from sftdpo.modeling import RenderingMismatch, check_rendering, rendering

    base, conversion = converted(tmp_path)
    recorded = json.loads(open(conversion).read())["rendering"]
    tokenizer = load_tokenizer(base)
    tokenizer.chat_template = TEMPLATE
    with pytest.raises(RenderingMismatch) as err:
        check_rendering(tokenizer, base, conversion)
    message = str(err.value)
    changed = rendering(tokenizer)
    assert f"tokenizer digest {changed['tokenizer_hash']} here, {recorded['tokenizer_hash']} at conversion" in message
    assert (
        f"chat_template_digest: '{changed['chat_template_digest']}' in {base}, "
        f"'{recorded['chat_template_digest']}' at conversion" in message
    )
    assert "generation_prompt: '### user:\\nWhat is 2 + 3?\\n### assistant:\\n'" in message
    assert "vocab_digest" not in message and "special_tokens" not in message  # only what differs is named

    tokenizer = load_tokenizer(base)
    tokenizer.pad_token = tokenizer.eos_token
    with pytest.raises(RenderingMismatch, match=r"special_tokens: .*'pad_token': '<\|eos\|>'.* at conversion"):
        check_rendering(tokenizer, base, conversion)


@pytest.mark.e2e
def test_a_model_whose_template_changed_after_conversion_is_refused_by_the_pipeline(finished):
    """Through the snakemake CLI: sft (over the base model), rollouts, dpo and evaluate (over the SFT model) each
    stop before computing, naming the model directory and both digests."""
    from conftest import TINY, snakemake

    def change_template(model):
        tokenizer = load_tokenizer(str(finished / model))
        tokenizer.chat_template = TEMPLATE
        tokenizer.save_pretrained(str(finished / model))

    def run(targets, model):
        """Force the jobs of `targets` alone (--force); the edit outdates nothing else (no mtime trigger)."""
        change_template(model)
        proc = snakemake(*targets.values(), "-c1", "--keep-going", "--force", "--rerun-triggers", "input", "params",
                         "code", "--configfile", TINY, cwd=finished, check=False)  # fmt: skip
        assert proc.returncode != 0 and "renders prompts differently" in proc.stderr
        return targets

    # A forced rollout shard would make dpo wait for new pairs: it runs on its own.
    targets = run({"dpo": "results/dpo/metrics.json", "evaluate/sft": "results/eval/sft.parquet"}, "results/sft/model")
    targets |= run({"rollouts/0": "results/rollouts/shards/0.parquet"}, "results/sft/model")
    targets |= run({"sft": "results/sft/metrics.json"}, "results/base/model")
    for job, target in targets.items():
        model = "results/base/model" if job == "sft" else "results/sft/model"
        log = (finished / "logs" / f"{job}.log").read_text()
        assert f"{model} renders prompts differently from the tokenizer the data was converted with" in log, job
        assert "chat_template_digest" in log and "generation_prompt: '### user:" in log, job
        assert not (finished / target).exists(), job  # nothing computed under the wrong template
