"""The Hugging Face code path (from_pretrained on an id or local directory, LoRA SFT, DPO against the
SFT adapter, evaluation of an adapter), exercised with a tiny model saved to a local directory."""

import json

import pandas as pd
import pytest

from conftest import converted_splits, train_settings
from sftdpo.dpo import train_dpo
from sftdpo.evaluate import evaluate
from sftdpo.io import read_json, write_parquet
from sftdpo.modeling import REFERENCE_FILE, build_scratch_model, load_model, make_base_model, train_tokenizer
from sftdpo.sft import train_sft
from sftdpo.tasks import get_task

TRAIN = train_settings(max_steps=4, max_length=64)
LORA = dict(r=4, alpha=8, dropout=0.0, target_modules="all-linear")


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    """A model directory laid out like a hub checkpoint (config.json, safetensors, tokenizer)."""
    task = get_task("arithmetic")
    texts = [p.prompt + "\n" + task.solve(p) for p in task.problems(200, seed=0)]
    tokenizer = train_tokenizer(texts, 280)
    model = build_scratch_model(
        tokenizer, layers=1, hidden_size=16, heads=2, intermediate_size=32, max_positions=128, seed=0
    )
    path = tmp_path_factory.mktemp("hub") / "tiny-llama"
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def test_hf_model_lora_sft_dpo_and_evaluation(hf_dir, tmp_path):
    base = tmp_path / "base"
    info = make_base_model(
        name_or_path=str(hf_dir), out_dir=str(base), scratch={}, tokenizer_texts=None, trust_remote_code=False, seed=0
    )
    assert info["kind"] == "reference"
    assert json.loads((base / REFERENCE_FILE).read_text())["name_or_path"] == str(hf_dir)
    assert not list(base.glob("*.safetensors"))  # weights are not copied, only referenced

    task = get_task("arithmetic")
    problems = task.problems(40, seed=1)
    paths = converted_splits(
        tmp_path, base, task, problems, max_length=64, fractions={"train": 0.6, "val": 0.2, "test": 0.2}
    )

    sft_dir = tmp_path / "sft"
    metrics = train_sft(
        base_dir=str(base),
        train_path=paths["train"],
        val_path=paths["val"],
        tokens_path=paths["tokens"],
        out_dir=str(sft_dir),
        metrics_path=str(tmp_path / "sft.json"),
        curve_path=str(tmp_path / "sft.png"),
        curriculum_path=str(tmp_path / "curriculum.json"),
        work_dir=str(tmp_path / "work_sft"),
        tracking_dir=str(tmp_path / "tracking"),
        train=TRAIN,
        lora=LORA,
        eval_rows=4,
        seed=0,
    )
    assert metrics["global_step"] == 4
    tokens = metrics["tokens_this_run"]  # SFT's own counts of its batches; real ones as Trainer counts them
    assert 0 < tokens["loss"] < tokens["real"] == metrics["num_input_tokens_seen"] <= tokens["padded"]
    assert metrics["loss_tokens_per_second"] == pytest.approx(tokens["loss"] / metrics["train_seconds_this_run"])
    adapter = json.loads((sft_dir / "adapter_config.json").read_text())
    assert adapter["r"] == 4 and adapter["base_model_name_or_path"] == str(hf_dir)
    assert (sft_dir / "tokenizer_config.json").exists()
    card = (sft_dir / "README.md").read_text()  # sftdpo's model card, not PEFT's blank template
    assert "# sftdpo: the sft model" in card and "a PEFT (LoRA) adapter" in card and "| steps | 4 |" in card
    assert f"| base model | {base} |" in card and f"| train split | {paths['train']} |" in card
    assert "lora:\n  alpha:" in card and "max_steps: 4" in card

    pairs = pd.DataFrame(
        [
            {
                "prompt": [{"role": "user", "content": p.prompt}],
                "chosen": [{"role": "assistant", "content": task.solve(p)}],
                "rejected": [{"role": "assistant", "content": "#### 0"}],
            }
            for p in problems[:8]
        ]
    )
    write_parquet(pairs, tmp_path / "pairs.parquet")
    dpo_dir = tmp_path / "dpo"
    dpo = train_dpo(
        sft_dir=str(sft_dir),
        pairs_path=str(tmp_path / "pairs.parquet"),
        out_dir=str(dpo_dir),
        metrics_path=str(tmp_path / "dpo.json"),
        curve_path=str(tmp_path / "dpo.png"),
        work_dir=str(tmp_path / "work_dpo"),
        tracking_dir=str(tmp_path / "tracking"),
        train=TRAIN,
        beta=0.1,
        loss_type=["sigmoid"],
        loss_weights=None,
        label_smoothing=0.0,
        dpop_lambda=0.0,
        lora=None,
        seed=0,
    )
    assert dpo["global_step"] == 4 and dpo["final_rewards_accuracies"] is not None
    card = (dpo_dir / "README.md").read_text()
    assert "# sftdpo: the dpo model" in card and f"| SFT model | {sft_dir} |" in card and "beta:" in card
    # The SFT adapter was trained further; the frozen "ref" copy served as the reference.
    assert json.loads((dpo_dir / "adapter_config.json").read_text())["base_model_name_or_path"] == str(hf_dir)
    model = load_model(str(dpo_dir))
    assert "default" in model.peft_config

    rows = evaluate(
        stage="dpo",
        model_dir=str(dpo_dir),
        items_path=paths["test"],
        out_path=str(tmp_path / "eval.parquet"),
        task_options={},
        max_new_tokens=8,
        batch_size=4,
        seed=0,
    )
    assert len(rows) == len(pd.read_parquet(paths["test"])) and set(rows["stage"]) == {"dpo"}
    assert read_json(tmp_path / "split.json")["counts"]["test"] == len(rows)


def test_a_plain_tokenizer_loads_without_torch_as_autotokenizer_loads_it(hf_dir, tmp_path, monkeypatch):
    """A directory whose tokenizer_config.json names a generic class (sftdpo's scratch tokenizer) loads through that
    class, without torch's import (convert's jobs: ~2 s each), into the same tokenizer AutoTokenizer gives; one
    naming another class goes through AutoTokenizer."""
    import shutil
    import subprocess
    import sys

    import transformers

    from sftdpo.modeling import load_tokenizer, rendering

    code = (
        "import sys; from sftdpo.modeling import load_tokenizer; "
        f"t = load_tokenizer({str(hf_dir)!r}); print(type(t).__name__, 'torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["TokenizersBackend", "False"]
    auto_calls = []
    original = transformers.AutoTokenizer.from_pretrained
    monkeypatch.setattr(
        transformers.AutoTokenizer, "from_pretrained", lambda *a, **k: auto_calls.append(a[-1]) or original(*a, **k)
    )
    plain = load_tokenizer(str(hf_dir))
    assert auto_calls == []
    auto = original(str(hf_dir))
    auto.padding_side = "left"
    assert type(plain) is type(auto) and {k: str(v) for k, v in vars(plain).items()} == {
        k: str(v) for k, v in vars(auto).items()
    }
    assert rendering(plain) == rendering(auto)
    texts = ["What is 12 + 7?<|eos|>", "<|user|>\n3 * 4\n<|assistant|>\n"]
    assert plain(texts)["input_ids"] == auto(texts)["input_ids"]
    other = tmp_path / "other"
    shutil.copytree(hf_dir, other)
    config = json.loads((other / "tokenizer_config.json").read_text())
    (other / "tokenizer_config.json").write_text(json.dumps({**config, "tokenizer_class": "GPT2Tokenizer"}))
    load_tokenizer(str(other))
    assert auto_calls == [str(other)]
