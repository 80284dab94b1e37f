"""Models and tokenizers: the scratch default, Hugging Face ids/paths, PEFT adapters.

A model directory written by this pipeline is one of:
- a full `save_pretrained` model (the scratch base model, or full fine-tuning);
- a PEFT adapter (`adapter_config.json`); its `base_model_name_or_path` is another such directory, recorded as
  an absolute path, and `sftdpo_base.json` beside it says where that directory is relative to the adapter (see
  `record_base`);
- a reference to a local model directory (`sftdpo_model.json`), with the tokenizer saved beside it;
- a Hugging Face Hub model downloaded into it (config, safetensors weights, tokenizer; `sftdpo_source.json` says
  which id, revision, commit and endpoint), so later rules load it without network (HF_HUB_OFFLINE=1).
Every directory carries the tokenizer, so all stages format prompts with the same chat template.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from sftdpo.io import atomic_path

log = logging.getLogger(__name__)

REFERENCE_FILE = "sftdpo_model.json"
SOURCE_FILE = "sftdpo_source.json"
BASE_FILE = "sftdpo_base.json"
# The files of a Hub model that loading it needs (no other frameworks' weights, no README or images).
HUB_FILES = ["*.json", "*.safetensors", "*.model", "*.txt", "*.tiktoken", "*.jinja"]


class HubDownloadError(RuntimeError):
    pass


def hub_endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT


def download_hub_model(repo_id: str, revision: str | None, out_dir: Path, *, trust_remote_code: bool) -> dict[str, Any]:
    """Download a Hub model's files through the Hugging Face cache (HF_HOME) and place them in `out_dir`.

    A model already in the cache (downloaded on a login node, or by an earlier run) is used without network.
    Without network and cache, one line names the model, the endpoint and how to pre-download it.
    """
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    patterns = HUB_FILES + (["*.py"] if trust_remote_code else [])
    try:
        snapshot = Path(snapshot_download(repo_id, revision=revision, allow_patterns=patterns))
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise HubDownloadError(
            f"cannot download model {repo_id} (revision {revision}) from {hub_endpoint()}: {reason}. "
            f"Download it once on a machine with network into a cache this node reads (HF_HOME={_hf_home()}): "
            f"`HF_HOME=<shared dir> hf download {repo_id} --revision {revision}` or `snakemake results/base/model` "
            "there; or set model.name_or_path to a local model directory"
        ) from None
    # Weights: hard links into the cache where the filesystem allows it (never rewritten), else copies; the
    # small files are copied, since the tokenizer is saved over them.
    shutil.copytree(snapshot, out_dir, copy_function=_link_or_copy, ignore=shutil.ignore_patterns(".*"))
    return {"kind": "hub", "name_or_path": repo_id, "revision": revision, "commit": snapshot.name,
            "endpoint": hub_endpoint(), "trust_remote_code": trust_remote_code}  # fmt: skip


def _hf_home() -> str:
    from huggingface_hub import constants

    return constants.HF_HOME


def _link_or_copy(src: str, dst: str) -> None:
    if src.endswith(".safetensors"):
        try:
            os.link(os.path.realpath(src), dst)
            return
        except OSError:
            pass
    shutil.copy2(src, dst)


SPECIAL_TOKENS = {"pad": "<|pad|>", "eos": "<|eos|>", "roles": ["<|system|>", "<|user|>", "<|assistant|>"]}

# The assistant turn ends with the eos token and nothing after it, so generation stops there and
# `template(prompt, add_generation_prompt=True)` is a prefix of `template(prompt + completion)`.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{ '<|' + message['role'] + '|>\n' }}"
    "{%- if message['role'] == 'assistant' -%}{{ message['content'] + '<|eos|>' }}"
    "{%- else -%}{{ message['content'] + '\n' }}{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|assistant|>\n' }}{%- endif -%}"
)

# model.chat_template presets (sftdpo.config_checks.CHAT_TEMPLATE_PRESETS names them).
CHAT_TEMPLATES = {"sftdpo": CHAT_TEMPLATE}


def chat_template_text(template: str) -> str:
    """A preset's template, or the text of a Jinja file."""
    return CHAT_TEMPLATES[template] if template in CHAT_TEMPLATES else Path(template).read_text()


def train_tokenizer(texts: list[str], vocab_size: int):
    """Byte-level BPE trained on task text; digits are always single tokens (arithmetic-friendly)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = [SPECIAL_TOKENS["pad"], SPECIAL_TOKENS["eos"], *SPECIAL_TOKENS["roles"]]
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token=SPECIAL_TOKENS["pad"],
        eos_token=SPECIAL_TOKENS["eos"],
        additional_special_tokens=SPECIAL_TOKENS["roles"],
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.padding_side = "left"  # generation pads on the left; training collators pad themselves
    return fast


def build_scratch_model(
    tokenizer, *, layers: int, hidden_size: int, heads: int, intermediate_size: int, max_positions: int, seed: int
):
    from transformers import LlamaConfig, LlamaForCausalLM

    import torch

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=max_positions,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model


def make_base_model(
    *,
    name_or_path: str,
    out_dir: str,
    scratch: dict[str, Any],
    tokenizer_texts: list[str] | None,
    trust_remote_code: bool,
    seed: int,
    revision: str | None = None,
    chat_template: str | None = None,
) -> dict[str, Any]:
    """Write the base model directory. Returns the info recorded in it. `revision`: a Hub id's branch, tag
    or commit (None: its default branch); `chat_template`: a preset or a Jinja file that replaces the
    tokenizer's template (None keeps it)."""
    with atomic_path(out_dir) as tmp:
        if name_or_path == "scratch":
            tokenizer = train_tokenizer(tokenizer_texts or [], scratch["tokenizer_vocab_size"])
            model = build_scratch_model(
                tokenizer,
                layers=scratch["layers"],
                hidden_size=scratch["hidden_size"],
                heads=scratch["heads"],
                intermediate_size=scratch["intermediate_size"],
                max_positions=scratch["max_positions"],
                seed=seed,
            )
            model.save_pretrained(tmp)
            info = {"kind": "scratch", "parameters": sum(p.numel() for p in model.parameters()), **scratch}
        elif not os.path.isdir(os.path.expanduser(name_or_path)):
            info = download_hub_model(name_or_path, revision, tmp, trust_remote_code=trust_remote_code)
            (tmp / SOURCE_FILE).write_text(json.dumps(info, indent=2) + "\n")
            tokenizer = hub_tokenizer(str(tmp), trust_remote_code)
        else:
            tokenizer = hub_tokenizer(name_or_path, trust_remote_code)
            tmp.mkdir(parents=True)
            # Absolute, so the directory loads from any working directory (and adapters over it record it so).
            absolute = os.path.abspath(os.path.expanduser(name_or_path))
            info = {"kind": "reference", "name_or_path": absolute, "trust_remote_code": trust_remote_code}
            (tmp / REFERENCE_FILE).write_text(json.dumps(info, indent=2) + "\n")
        if chat_template:
            tokenizer.chat_template = chat_template_text(chat_template)
            info["chat_template"] = chat_template
        tokenizer.save_pretrained(tmp)
        info["vocab_size"] = len(tokenizer)
        info["tokenizer_hash"] = tokenizer_hash(tokenizer)
    return info


def hub_tokenizer(name_or_path: str, trust_remote_code: bool):
    """A Hugging Face model's tokenizer, with sftdpo's chat template if it has none and a pad token."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    if tokenizer.chat_template is None:
        log.warning("%s has no chat template; using sftdpo's", name_or_path)
        tokenizer.chat_template = CHAT_TEMPLATE
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _digest(value: Any) -> str:
    import hashlib

    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:16]


def tokenizer_hash(tokenizer) -> str:
    return _digest({"vocab": sorted(tokenizer.get_vocab().items()), "template": tokenizer.chat_template})


# A prompt every stage renders to compare with what convert rendered: its text shows the generation prompt too.
RENDERING_PROBE = [{"role": "user", "content": "What is 2 + 3?"}]
SPECIAL_TOKEN_NAMES = ("bos_token", "eos_token", "pad_token", "unk_token")


def rendering(tokenizer) -> dict[str, Any]:
    """How a tokenizer turns prompts into tokens: convert records it (convert.json `rendering`) and every stage
    that loads a model checks its tokenizer against it (`check_rendering`)."""
    return {
        "tokenizer_hash": tokenizer_hash(tokenizer),
        "vocab_digest": _digest(sorted(tokenizer.get_vocab().items())),
        "chat_template_digest": _digest(tokenizer.chat_template),
        "special_tokens": {name: getattr(tokenizer, name, None) for name in SPECIAL_TOKEN_NAMES},
        "generation_prompt": tokenizer.apply_chat_template(RENDERING_PROBE, add_generation_prompt=True, tokenize=False),
    }


class RenderingMismatch(RuntimeError):
    """A model's tokenizer renders prompts differently from the one the training data was converted with."""


def check_rendering(tokenizer, model_dir: str, conversion_path: str | None) -> None:
    """Stop when `model_dir`'s tokenizer (chat template, vocabulary, special tokens, generation prompt) differs
    from the one convert used (`conversion_path`: convert.json; None: no check, for library callers)."""
    if conversion_path is None:
        return
    expected = json.loads(Path(conversion_path).read_text()).get("rendering")
    if expected is None:
        raise RenderingMismatch(f"{conversion_path} has no `rendering` record: rerun convert (--forcerun convert)")
    found = rendering(tokenizer)
    differences = [
        f"{key}: {found[key]!r} in {model_dir}, {expected.get(key)!r} at conversion"
        for key in ("chat_template_digest", "vocab_digest", "special_tokens", "generation_prompt")
        if found[key] != expected.get(key)
    ]
    if differences:
        raise RenderingMismatch(
            f"{model_dir} renders prompts differently from the tokenizer the data was converted with "
            f"({conversion_path}): tokenizer digest {found['tokenizer_hash']} here, {expected['tokenizer_hash']} "
            "at conversion.\n  " + "\n  ".join(differences) + "\nRestore that directory's tokenizer files or "
            "rebuild it (`snakemake --forcerun <its rule>`); to change the template on purpose, set "
            "model.chat_template, so that base_model, convert and every later stage rerun with it."
        )


# The generic classes of a tokenizer.json that AutoTokenizer loads a directory naming them with; they load without
# AutoTokenizer's model-config handling, which imports torch (~2 s of every data job that tokenizes).
PLAIN_TOKENIZER_CLASSES = frozenset({"TokenizersBackend", "PreTrainedTokenizerFast"})


def load_tokenizer(model_dir: str):
    """The directory's tokenizer, padding on the left: one of PLAIN_TOKENIZER_CLASSES named by its
    tokenizer_config.json (sftdpo's own from-scratch tokenizer), without remote code or an auto_map, through that
    class; any other through AutoTokenizer."""
    config_path = Path(model_dir) / "tokenizer_config.json"
    config = json.loads(config_path.read_text()) if config_path.exists() else {}
    plain = (
        config.get("tokenizer_class") in PLAIN_TOKENIZER_CLASSES
        and "auto_map" not in config
        and (Path(model_dir) / "tokenizer.json").exists()
        and not _trust(model_dir)
    )
    if plain:
        from transformers import PreTrainedTokenizerFast

        tokenizer = PreTrainedTokenizerFast.from_pretrained(model_dir)
    else:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=_trust(model_dir))
    tokenizer.padding_side = "left"
    return tokenizer


def _trust(model_dir: str) -> bool:
    for name in (REFERENCE_FILE, SOURCE_FILE):
        info = Path(model_dir) / name
        if info.exists():
            return bool(json.loads(info.read_text()).get("trust_remote_code"))
    return False


def load_model(model_dir: str, *, dtype: str = "float32", trainable_adapter: bool = False):
    """Load any model directory this pipeline writes (see the module docstring); `dtype` as torch names it."""
    from transformers import AutoModelForCausalLM

    path = Path(model_dir)
    if (path / "adapter_config.json").exists():
        from peft import PeftModel

        base_dir = adapter_base(model_dir)
        model = PeftModel.from_pretrained(load_model(base_dir, dtype=dtype), model_dir, is_trainable=trainable_adapter)
        for peft_config in model.peft_config.values():  # the base as found, which a further save then records
            peft_config.base_model_name_or_path = base_dir
        return model
    ref = path / REFERENCE_FILE
    if ref.exists():
        info = json.loads(ref.read_text())
        return AutoModelForCausalLM.from_pretrained(
            info["name_or_path"], dtype=dtype, trust_remote_code=info.get("trust_remote_code", False)
        )
    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, trust_remote_code=_trust(model_dir))


def lineage(model_dir: str) -> list[dict[str, Any]]:
    """The model directory, then the one each adapter was trained on, down to the base: path, kind
    (adapter, model, reference, hub) and, for a reference or a Hub download, where it came from."""
    chain: list[dict[str, Any]] = []
    path = Path(model_dir)
    while (path / "adapter_config.json").exists():
        chain.append({"path": _shown(path), "kind": "adapter"})
        path = Path(adapter_base(str(path)))
    info = next((json.loads((path / n).read_text()) for n in (REFERENCE_FILE, SOURCE_FILE) if (path / n).exists()), {})
    chain.append({"path": _shown(path), "kind": info.get("kind", "model"), **({"source": info} if info else {})})
    return chain


def _shown(path: Path) -> str:
    """A path as people read it in a lineage: relative to the working directory (the project) when inside it."""
    absolute = Path(os.path.abspath(path))
    return str(absolute.relative_to(Path.cwd())) if absolute.is_relative_to(Path.cwd()) else str(path)


# Models that travel. PEFT, vLLM, TRL and `AutoPeftModelForCausalLM` load an adapter's base from
# `base_model_name_or_path` as written, relative to *their* working directory, so a relative
# `results/sft/model` only loads from the project directory. `record_base` writes it absolute instead:
# those loaders then find the base from anywhere, as long as it stays where it was trained. Beside it,
# sftdpo_base.json keeps where the base is relative to the adapter (when both are inside the project),
# and the pipeline's own loads (`adapter_base`) take that first: a copied or moved project (or results/
# tree) then loads its own base, never the original's, which may since have been retrained or deleted;
# the absolute path is the fallback for an adapter copied out of its tree. A model that must travel
# without its base: `results/export/<stage>/` (adapters merged, no path to another directory).
def record_base(adapter_dir: Path, final_dir: str) -> None:
    """Make the adapter saved in `adapter_dir` (to be renamed to `final_dir`) name its base so that it loads
    from anywhere: `base_model_name_or_path` absolute, sftdpo_base.json with the path relative to the adapter.
    A Hub id (no such local directory) is left as it is."""
    config_path = adapter_dir / "adapter_config.json"
    if not config_path.exists():
        return
    config = json.loads(config_path.read_text())
    recorded = config.get("base_model_name_or_path")
    if not recorded or not os.path.isdir(os.path.expanduser(recorded)):
        return
    base, final, project = (os.path.abspath(os.path.expanduser(recorded)), os.path.abspath(final_dir), os.getcwd())
    config["base_model_name_or_path"] = base
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    inside = all(Path(p).is_relative_to(project) for p in (base, final))
    relative = os.path.relpath(base, final) if inside else None
    (adapter_dir / BASE_FILE).write_text(
        json.dumps({"base_model_name_or_path": base, "relative_to_adapter": relative}, indent=2) + "\n"
    )


def adapter_base(adapter_dir: str) -> str:
    """The model directory (or Hub id) the adapter in `adapter_dir` was trained on: its place relative to the
    adapter (the same results/ tree) when sftdpo_base.json records one and it is there, else
    `base_model_name_or_path` as recorded (see `record_base`)."""
    path = Path(adapter_dir)
    recorded = json.loads((path / "adapter_config.json").read_text())["base_model_name_or_path"]
    side = path / BASE_FILE
    relative = json.loads(side.read_text())["relative_to_adapter"] if side.exists() else None
    if relative is not None and (path / relative).is_dir():
        return os.path.normpath(path / relative)
    if os.path.isabs(recorded) and not os.path.isdir(recorded):
        places = [f"{recorded} (adapter_config.json base_model_name_or_path)"]
        places += [] if relative is None else [f"{os.path.normpath(path / relative)} ({BASE_FILE})"]
        raise FileNotFoundError(
            f"{path}: the model this adapter was trained on is not at {' nor at '.join(places)}; copy the whole "
            "results/ directory, or point base_model_name_or_path at that model"
        )
    return recorded


def device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def use_bf16(precision: str) -> bool:
    """bf16 when asked, or on `auto` with a GPU that supports it; CPU `auto` stays fp32."""
    if precision == "bf16":
        return True
    if precision == "fp32":
        return False
    import torch

    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
