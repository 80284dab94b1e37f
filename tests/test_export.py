"""Models that travel: `snakemake results/export/{stage}` writes a directory that transformers alone loads,
from any working directory, and that answers as the pipeline's evaluation of that stage did."""

import json
import shutil
import subprocess
import sys

import pandas as pd
import pytest

from conftest import TINY, snakemake

# Only transformers, in a fresh interpreter elsewhere: the greedy answers to the first test prompts.
GENERATE = """
import json, sys
from transformers import AutoModelForCausalLM, AutoTokenizer
path, prompts = sys.argv[1], json.loads(sys.argv[2])
model, tok = AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)
out = []
for prompt in prompts:
    ids = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)["input_ids"]
    new = model.generate(ids, max_new_tokens=32, do_sample=False)[0, ids.shape[1]:]
    out.append(tok.decode(new, skip_special_tokens=True).strip())
print(json.dumps(out))
"""


@pytest.mark.e2e
def test_exported_dpo_model_loads_anywhere_and_answers_as_evaluated(finished, tmp_path):
    snakemake("-c1", "results/export/dpo", "--configfile", TINY, cwd=finished)
    export = finished / "results/export/dpo"
    assert not (export / "adapter_config.json").exists()  # merged: no adapter, no path to another directory
    evaluated = pd.read_parquet(finished / "results/eval/dpo.parquet").head(5)
    test = pd.read_parquet(finished / "results/data/test.parquet").set_index("id")
    prompts = [test.loc[item, "prompt"][0]["content"] for item in evaluated["id"]]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = subprocess.run([sys.executable, "-c", GENERATE, str(export), json.dumps(prompts)], cwd=elsewhere,
                          capture_output=True, text=True, check=True)  # fmt: skip
    assert json.loads(proc.stdout.splitlines()[-1]) == list(evaluated["completion"])

    card = (export / "README.md").read_text()
    summary = json.loads((finished / "results/report/summary.json").read_text())["stages"]["dpo"]
    assert card.startswith("---\nlibrary_name: transformers\n") and "# sftdpo: the dpo model" in card
    assert (
        f"| dpo | {summary['accuracy']:.3f} | [{summary['ci95'][0]:.3f}, {summary['ci95'][1]:.3f}] | {summary['n']} |"
        in card
    )
    assert "| results/dpo/adapter | adapter | - |" in card and "| results/sft/model | model | - |" in card
    assert "beta: 0.1" in card and "max_steps: 10" in card
    # The adapter itself carries sftdpo's card too (PEFT writes a blank template).
    adapter_card = (finished / "results/dpo/adapter/README.md").read_text()
    assert "a PEFT (LoRA) adapter" in adapter_card and "| SFT model | results/sft/model |" in adapter_card
    assert "| steps | 10 |" in adapter_card


# Only PEFT and transformers, elsewhere: load the DPO adapter (its base found by adapter_config.json) and answer.
PEFT_GENERATE = GENERATE.replace(
    "from transformers import AutoModelForCausalLM, AutoTokenizer",
    "from peft import AutoPeftModelForCausalLM as AutoModelForCausalLM\nfrom transformers import AutoTokenizer",
)


@pytest.mark.e2e
def test_adapters_load_from_anywhere_and_after_the_project_moved(finished, tmp_path):
    # Retrain DPO here, so that its adapter records this project's SFT model (the copy recorded the session run's).
    snakemake("-c1", "--forcerun", "dpo", "results/eval/dpo.parquet", "--configfile", TINY, cwd=finished)
    adapter = json.loads((finished / "results/dpo/adapter/adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == str(finished / "results/sft/model")  # absolute
    assert json.loads((finished / "results/dpo/adapter/sftdpo_base.json").read_text())["relative_to_adapter"] == (
        "../../sft/model"
    )
    evaluated = pd.read_parquet(finished / "results/eval/dpo.parquet").head(5)
    test = pd.read_parquet(finished / "results/data/test.parquet").set_index("id")
    prompts = json.dumps([test.loc[item, "prompt"][-1]["content"] for item in evaluated["id"]])
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    def peft_answers(adapter_dir):
        return subprocess.run([sys.executable, "-c", PEFT_GENERATE, str(adapter_dir), prompts], cwd=elsewhere,
                              capture_output=True, text=True)  # fmt: skip

    # A copy of results/ somewhere else loads with AutoPeftModelForCausalLM from any working directory.
    shutil.copytree(finished / "results", tmp_path / "copy/results", symlinks=True)
    proc = peft_answers(tmp_path / "copy/results/dpo/adapter")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.splitlines()[-1]) == list(evaluated["completion"])

    # The project moves: the recorded absolute path is gone. PEFT alone cannot find the base any more...
    moved = tmp_path / "moved"
    shutil.move(finished, moved)
    proc = peft_answers(moved / "results/dpo/adapter")
    assert proc.returncode != 0 and str(finished / "results/sft/model") in proc.stderr
    # ...the pipeline's own loads find it beside the adapter: the evaluation reruns to the same rows.
    snakemake("-c1", "--forcerun", "evaluate", "results/eval/dpo.parquet", "--configfile", TINY, cwd=moved)
    again = pd.read_parquet(moved / "results/eval/dpo.parquet").head(5)
    assert list(again["completion"]) == list(evaluated["completion"])
