"""load_model: local checkpoints, Hub failures offline, non-MoE models, tokenizer padding."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

import scmoe_eval.models.loading as loading
from scmoe_eval.config import ModelConfig
from scmoe_eval.models.fixtures import build_tokenizer
from scmoe_eval.models.loading import ModelLoadError, load_model, load_tokenizer
from scmoe_eval.models.routing import RoutingPolicy as P

HINTS = ("model.path=/path/to/checkpoint", "MODEL=/path/to/checkpoint")


def _cfg(path, **kw) -> ModelConfig:
    return ModelConfig(path=str(path), **{"dtype": "float32", "device": "cpu", **kw})


@torch.no_grad()
def test_local_dir_loads_like_from_pretrained(tiny_mixtral, tiny_mixtral_path):
    lm = tiny_mixtral
    assert lm.adapter.name == "mixtral" and len(lm.controller.routers) == 4
    assert not lm.model.training and lm.model.dtype == torch.float32 and lm.device == torch.device("cpu")
    assert lm.tokenizer.padding_side == "left" and lm.tokenizer.pad_token_id is not None
    plain = AutoModelForCausalLM.from_pretrained(tiny_mixtral_path, dtype=torch.float32).eval()
    enc = lm.tokenizer(["def add(a, b):", "12 + 30 ="], return_tensors="pt", padding=True)
    assert enc["attention_mask"][1, 0] == 0  # left padding
    assert torch.equal(lm.model(**enc).logits, plain(**enc).logits)


def test_options_reach_the_model(tiny_mixtral_path):
    lm = load_model(_cfg(tiny_mixtral_path, dtype="bfloat16", attn_implementation="eager",
                         experts_implementation="eager", family="mixtral", device="auto", device_map="auto"))
    assert lm.model.dtype == torch.bfloat16
    assert lm.model.config._attn_implementation == "eager"
    assert lm.model.config._experts_implementation == "eager"
    if not torch.cuda.is_available():  # device_map="auto" falls back to CPU without CUDA
        assert lm.device == torch.device("cpu")
    with torch.no_grad(), lm.controller.use([P.rank(2)]):
        lm.model(**lm.tokenizer(["hi"], return_tensors="pt"))


def test_bad_options_are_clear_errors(tiny_mixtral_path):
    with pytest.raises(ValueError, match="model.dtype"):
        load_model(_cfg(tiny_mixtral_path, dtype="fp8"))
    with pytest.raises(KeyError, match="mixtral"):
        load_model(_cfg(tiny_mixtral_path, family="llama"))
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            load_model(_cfg(tiny_mixtral_path, device="cuda"))


@pytest.mark.parametrize("hub_id", ["mistralai/Mixtral-8x7B-v0.1", "no-such-user/no-such-moe-model"])
def test_offline_hub_id_names_the_override(monkeypatch, hub_id):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError) as err:
        load_model(ModelConfig(path=hub_id))
    for hint in HINTS:
        assert hint in str(err.value)
    assert hub_id in str(err.value)


def test_connection_error_names_the_override(monkeypatch):
    def unreachable(*args, **kwargs):
        try:
            raise ConnectionError("Failed to resolve 'huggingface.co'")
        except ConnectionError as exc:
            raise OSError("We couldn't connect to 'https://huggingface.co' to load the files") from exc

    monkeypatch.setattr(loading.AutoConfig, "from_pretrained", unreachable)
    with pytest.raises(ModelLoadError, match="model.path=/path/to/checkpoint"):
        load_model(ModelConfig(path="deepseek-ai/deepseek-moe-16b-base", trust_remote_code=True))


def test_missing_local_dir(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist") as err:
        load_model(_cfg(tmp_path / "nowhere"))
    assert HINTS[0] in str(err.value)


def test_non_moe_model_lists_families(tmp_path):
    tok = build_tokenizer(tmp_path)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2)
    LlamaForCausalLM(config).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="no supported MoE layers") as err:
        load_model(_cfg(tmp_path))
    for name in ("mixtral", "qwen2_moe", "qwen3_moe", "olmoe", "deepseek_v2", "deepseek_v3", "deepseek"):
        assert name in str(err.value)


def test_eos_doubles_as_pad(tmp_path):
    tok = build_tokenizer(tmp_path / "src")
    tok.pad_token = None
    tok.padding_side = "right"
    tok.save_pretrained(tmp_path / "nopad")
    assert AutoTokenizer.from_pretrained(tmp_path / "nopad").pad_token is None
    loaded = load_tokenizer(tmp_path / "nopad", {})
    assert loaded.pad_token == loaded.eos_token == "</s>" and loaded.padding_side == "left"


HUB_SCRIPT = """
import sys, torch
from scmoe_eval.config import ModelConfig
from scmoe_eval.models.loading import ModelLoadError, load_model
for revision in sys.argv[2:]:
    try:
        lm = load_model(ModelConfig(path=sys.argv[1], revision=revision or None, dtype="float32", device="cpu"))
    except ModelLoadError as exc:
        print("error", str(exc).replace(chr(10), " "))
        continue
    ids = lm.tokenizer(["def add(a, b):"], return_tensors="pt")
    with torch.no_grad():
        print(lm.adapter.name, lm.model(**ids).logits[0, -1, :4].tolist())
"""


def test_hub_id_resolves_through_the_hub_cache(tmp_path, tiny_mixtral, tiny_mixtral_path):
    """A Hub id (and a pinned revision) goes through huggingface_hub's resolution, here served from a
    cache laid out as a download leaves it (HF_HUB_OFFLINE=1: the same code path minus the HTTP)."""
    import os
    import shutil
    import subprocess
    import sys

    sha = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--scmoe-test--tiny-mixtral"
    shutil.copytree(tiny_mixtral_path, repo / "snapshots" / sha)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(sha)
    enc = tiny_mixtral.tokenizer(["def add(a, b):"], return_tensors="pt")
    with torch.no_grad():
        want = tiny_mixtral.model(**enc).logits[0, -1, :4].tolist()
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    revisions = ["", sha, "main", "f" * 40]  # the last one was never downloaded
    out = subprocess.run([sys.executable, "-c", HUB_SCRIPT, "scmoe-test/tiny-mixtral", *revisions],
                         env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.strip().splitlines()[-4:]
    for line in lines[:3]:
        name, logits = line.split(" ", 1)
        assert name == "mixtral" and eval(logits) == want, line  # noqa: S307 - our own repr of floats
    assert lines[3].startswith("error") and "model.path=/path/to/checkpoint" in lines[3]


def test_remote_code_written_for_transformers_4_is_a_clear_error(tmp_path):
    """DeepSeekMoE-16B's remote modeling file imports a module transformers 5 removed; the loader says so.
    (transformers copies the two files into its modules cache, as for any remote-code checkpoint.)"""
    import json

    ckpt = tmp_path / "old-remote"
    ckpt.mkdir()
    (ckpt / "configuration_old.py").write_text(
        "from transformers import PretrainedConfig\n\n"
        "class OldConfig(PretrainedConfig):\n    model_type = 'deepseek'\n"
    )
    (ckpt / "modeling_old.py").write_text(
        "from transformers.modeling_attn_mask_utils import _prepare_4d_causal_attention_mask\n"
        "from .configuration_old import OldConfig\n"
    )
    (ckpt / "config.json").write_text(json.dumps({
        "model_type": "deepseek",
        "auto_map": {"AutoConfig": "configuration_old.OldConfig", "AutoModelForCausalLM": "modeling_old.OldForCausalLM"},
    }))
    with pytest.raises(ModelLoadError, match="modeling_attn_mask_utils.*transformers 4.x.*docs/models.md"):
        load_model(_cfg(ckpt, trust_remote_code=True))
