"""model.chat_template: a preset or a Jinja file replaces the tokenizer's template in the base model directory,
which every later stage formats prompts with."""

import copy

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
