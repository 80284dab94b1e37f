"""Hub models on clusters whose GPU nodes have no internet: base_model downloads the model once (through the
HF_HOME cache) into results/base/model; the GPU rules load that directory with HF_HUB_OFFLINE=1; without
network a download fails within seconds with one line. The Hub is a real HTTP server on loopback (HF_ENDPOINT)."""

import json
import time

import pytest
import yaml

from conftest import TINY, snakemake
from fake_hub import COMMIT, FakeHub, closed_port
from sftdpo.modeling import make_base_model

REPO = "tiny-org/tiny-llama"


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """A loopback Hub serving a small Llama (config, safetensors weights, tokenizer with chat template)."""
    files = tmp_path_factory.mktemp("hub") / REPO
    texts = [f"What is {a}+{b}?\n{a}+{b}={a + b}\n#### {a + b}" for a in range(10) for b in range(10)]
    scratch = dict(layers=1, hidden_size=16, heads=2, intermediate_size=32, max_positions=256, tokenizer_vocab_size=280)
    make_base_model(name_or_path="scratch", out_dir=str(files), scratch=scratch, tokenizer_texts=texts,
                    trust_remote_code=False, seed=0)  # fmt: skip
    server = FakeHub(REPO, files)
    yield server
    server.stop()


def hub_config(path, **model):
    path.write_text(yaml.safe_dump({"model": {"name_or_path": REPO, "revision": "main", **model}}))
    return path


def test_base_model_downloads_a_hub_model_into_a_model_directory(hub, tmp_path):
    overlay = hub_config(tmp_path / "hub.yaml")
    env = {"HF_ENDPOINT": hub.endpoint, "HF_HOME": str(tmp_path / "hf")}
    snakemake("-c1", "results/base/model", "--configfile", TINY, overlay, cwd=tmp_path, env=env)
    model = tmp_path / "results/base/model"
    assert {"config.json", "model.safetensors", "tokenizer.json", "chat_template.jinja"} <= {
        p.name for p in model.iterdir()
    }
    assert (model / "model.safetensors").read_bytes() == hub.files["model.safetensors"]
    source = json.loads((model / "sftdpo_source.json").read_text())
    assert source == source | {"kind": "hub", "name_or_path": REPO, "revision": "main", "commit": COMMIT,
                               "endpoint": hub.endpoint}  # fmt: skip
    assert f"GET /{REPO}/resolve/{COMMIT}/model.safetensors" in hub.requests

    # The login-node recipe: once in the cache (HF_HOME), the model is found with the Hub offline.
    seen = len(hub.requests)
    started = time.monotonic()
    snakemake("-c1", "results/base/model", "--forcerun", "base_model", "--configfile", TINY, overlay, cwd=tmp_path,
              env={**env, "HF_HUB_OFFLINE": "1"})  # fmt: skip
    assert len(hub.requests) == seen and time.monotonic() - started < 60
    assert (model / "model.safetensors").read_bytes() == hub.files["model.safetensors"]


@pytest.mark.parametrize("offline", [False, True], ids=["no-network", "HF_HUB_OFFLINE"])
def test_without_network_base_model_fails_within_seconds_with_one_line(tmp_path, offline):
    endpoint = f"http://127.0.0.1:{closed_port()}"
    env = {
        "HF_ENDPOINT": endpoint,
        "HF_HOME": str(tmp_path / "empty-cache"),
        **({"HF_HUB_OFFLINE": "1"} if offline else {}),
    }
    started = time.monotonic()
    proc = snakemake("-c1", "results/base/model", "--configfile", TINY, hub_config(tmp_path / "hub.yaml"),
                     cwd=tmp_path, env=env, check=False)  # fmt: skip
    assert proc.returncode != 0 and time.monotonic() - started < 60
    log = (tmp_path / "logs/base_model.log").read_text().strip().splitlines()[-1]
    assert log.startswith(
        f"sftdpo.modeling.HubDownloadError: cannot download model {REPO} (revision main) from {endpoint}: "
    )
    assert f"HF_HOME={tmp_path / 'empty-cache'}" in log and f"hf download {REPO} --revision main" in log
    assert log in proc.stdout + proc.stderr  # show-failed-logs puts it on the console
    assert not (tmp_path / "results/base/model").exists()


@pytest.mark.e2e
def test_gpu_rules_load_the_downloaded_model_with_the_hub_gone(hub, tmp_path):
    """Download with the Hub up, stop it, then evaluate the base model: the evaluate job runs offline."""
    overlay = hub_config(tmp_path / "hub.yaml")
    env = {"HF_ENDPOINT": hub.endpoint, "HF_HOME": str(tmp_path / "hf")}
    snakemake("-c1", "results/base/model", "--configfile", TINY, overlay, cwd=tmp_path, env=env)
    gone = {**env, "HF_ENDPOINT": f"http://127.0.0.1:{closed_port()}", "HF_HOME": str(tmp_path / "no-cache")}
    snakemake("-c2", "results/eval/base.parquet", "--configfile", TINY, overlay, cwd=tmp_path, env=gone)
    log = (tmp_path / "logs/evaluate/base.log").read_text()
    assert "rule evaluate" in log and "base: accuracy" in log
    assert (tmp_path / "results/eval/base.parquet").stat().st_size > 0
