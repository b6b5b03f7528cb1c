"""Tiny random-weight model of ANY transformers MoE family, built from its config class.

`fixtures.py` hand-writes the configs of the six families the paper work started with; the family
census (`census.py`) needs a small model of every MoE causal LM the installed transformers ships,
so this module shrinks a config class's defaults generically: every size-like key it knows
(hidden, expert and head sizes, expert counts, top-k, layer counts, per-layer lists...) is set
small, per-layer lists keep one layer of each kind they list, and `TINY_OVERRIDES` holds the few
per-family keys the generic rules cannot guess. Unknown keys keep their defaults.
"""

from __future__ import annotations

import importlib
from typing import Any

import torch
from torch import nn
from transformers import PretrainedConfig
from transformers.models.auto.configuration_auto import model_type_to_module_name
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

VOCAB = 512
EXPERTS = 8
TOP_K = 2

# key -> small value, applied when the config class has the key
_SIZES: dict[str, Any] = {
    "vocab_size": VOCAB,
    "hidden_size": 64,
    "d_model": 64,
    "intermediate_size": 128,
    "intermediate_size_mlp": 128,
    "dense_intermediate_size": 128,
    "ffn_hidden_size": 128,
    "moe_intermediate_size": 64,
    "expert_ffn_hidden_size": 64,
    "shared_expert_intermediate_size": 64,
    "shared_intermediate_size": 64,
    "shared_experts_intermediate_size": 64,
    "moe_shared_expert_intermediate_size": 64,
    "num_attention_heads": 4,
    "swa_num_attention_heads": 4,
    "head_dim": 16,
    "swa_head_dim": 16,
    "max_position_embeddings": 1024,
    "model_max_length": 1024,
    "kv_lora_rank": 16,
    "qk_rope_head_dim": 8,
    "qk_nope_head_dim": 8,
    "qk_head_dim": 16,
    "v_head_dim": 16,
    "index_head_dim": 16,
    "index_n_heads": 2,
    "index_topk": 8,
    "router_hidden_size": 16,
    "linear_key_head_dim": 16,
    "linear_value_head_dim": 16,
    "linear_num_key_heads": 2,
    "linear_num_value_heads": 4,
    "linear_head_dim": 16,
    "linear_num_heads": 4,
    "mamba_n_heads": 8,
    "mamba_d_head": 16,
    "mamba_d_state": 16,
    "mamba_dt_rank": 8,
    "mamba_chunk_size": 16,
    "mamba_num_heads": 8,
    "mamba_head_dim": 16,
    "ssm_state_size": 16,
    "chunk_size": 16,
    "n_groups": 1,
    "sliding_window": 16,
    "sliding_window_size": 16,
    "attention_chunk_size": 16,
    "hidden_size_per_layer_input": 16,
    "vocab_size_per_layer_input": VOCAB,
}
_EXPERT_KEYS = ("num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts")
_TOPK_KEYS = ("num_experts_per_tok", "moe_topk", "moe_k", "top_k_experts", "num_experts_per_token", "moe_top_k")
_SHARED_KEYS = ("n_shared_experts", "num_shared_experts", "moe_num_shared_experts")
_GROUP_KEYS = ("n_group", "num_expert_group")
_LAYER_KEYS = ("num_hidden_layers", "n_layers", "num_layers")
_DROP = ("num_attention_heads_per_layer", "layer_rope_theta")

# What the generic rules cannot guess, per family (module name), applied last.
TINY_OVERRIDES: dict[str, dict[str, Any]] = {
    "jamba": dict(num_hidden_layers=2, attn_layer_period=2, attn_layer_offset=1, expert_layer_period=1,
                  expert_layer_offset=0, use_mamba_kernels=False),
    "longcat_flash": dict(zero_expert_num=2),
    "granitemoehybrid": dict(layer_types=["mamba", "attention"], mamba_d_head=16),
    "lfm2_moe": dict(layer_types=["conv", "full_attention", "conv"]),
    "inkling2": dict(unpadded_vocab_size=VOCAB),
    "inkling2_loop": dict(unpadded_vocab_size=VOCAB),
    "dots1": dict(n_shared_experts=1),
    "dots3_note": dict(head_dim=16, per_layer_config=None),  # its per-layer overrides are full-size
    "mistral4": dict(head_dim=16),
    "gemma4": dict(enable_moe_block=True, global_head_dim=16, num_global_key_value_heads=2),
    "qwen4_exp": dict(indexer_n_heads=2, indexer_kv_heads=1, indexer_head_dim=16, indexer_budget=8,
                      indexer_compress_ratio=4, ngram_vocab_size_base=1024, hc_lowrank=8, split_ngram_parts=4),
}


def causal_lm_class(family: str) -> type[nn.Module]:
    """The family's `*ForCausalLM` class (the auto mapping's when it has one, else the modeling file's)."""
    module = importlib.import_module(f"transformers.models.{family}.modeling_{family}")
    for model_type, name in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.items():
        if model_type_to_module_name(model_type) == family and name.endswith("ForCausalLM") and hasattr(module, name):
            return getattr(module, name)
    names = sorted(n for n in vars(module) if n.endswith("ForCausalLM") and isinstance(getattr(module, n), type))
    if not names:
        raise ValueError(f"transformers.models.{family} has no *ForCausalLM class")
    return getattr(module, names[0])


def _shrink_layers(values: list, n: int) -> list:
    """`n` entries of a per-layer list that keep one layer of every kind it lists, in layer order."""
    first = sorted({v: i for i, v in reversed(list(enumerate(values)))}.values())
    chosen = sorted((first + [i for i in range(len(values)) if i not in first])[:n])
    return [values[i] for i in chosen]


def _per_layer_lists(defaults: dict[str, Any], layers: int) -> dict[str, list]:
    return {
        key: value
        for key, value in defaults.items()
        if isinstance(value, list) and len(value) == layers and key not in _DROP and layers > 1
    }


def tiny_config_kwargs(family: str, config_cls: type[PretrainedConfig]) -> dict[str, Any]:
    """Config kwargs for a tiny random model of `family` (a transformers module name)."""
    defaults = config_cls().to_dict()
    layer_key = next((k for k in _LAYER_KEYS if k in defaults), None)
    layers = int(defaults[layer_key]) if layer_key else 0
    lists = _per_layer_lists(defaults, layers)
    kinds = max([len(set(v)) for v in lists.values() if all(isinstance(x, str) for x in v)] + [2])
    out: dict[str, Any] = {k: v for k, v in _SIZES.items() if k in defaults}
    heads, kv = defaults.get("num_attention_heads"), defaults.get("num_key_value_heads")
    if kv is not None:
        out["num_key_value_heads"] = 4 if kv == heads else (1 if kv == 1 else 2)
    if "swa_num_key_value_heads" in defaults:
        out["swa_num_key_value_heads"] = 2
    if "kv_lora_rank" in defaults:  # MLA: head_dim is the rope part
        out["head_dim"] = 8
        if defaults.get("q_lora_rank") is not None:
            out["q_lora_rank"] = 16
        out["num_key_value_heads"] = 4
    for key in _EXPERT_KEYS:
        if key in defaults:
            out[key] = EXPERTS
    for key in _TOPK_KEYS:
        if key in defaults:
            out[key] = TOP_K
    for key in _SHARED_KEYS:
        if defaults.get(key):
            out[key] = 1
    for key in _GROUP_KEYS:
        if key in defaults and "topk_group" in defaults:
            out[key], out["topk_group"] = 4, 2
    if defaults.get("first_k_dense_replace"):
        out["first_k_dense_replace"] = 1
    if defaults.get("num_dense_layers"):
        out["num_dense_layers"] = 1
    if "mlp_only_layers" in defaults:
        out["mlp_only_layers"] = []
    if layer_key:
        n = max(kinds, 2 + int(bool(out.get("first_k_dense_replace") or out.get("num_dense_layers"))))
        out[layer_key] = n
        for key, values in lists.items():  # layer kinds keep one of each; index/flag lists keep their head
            out[key] = _shrink_layers(values, n) if all(isinstance(x, str) for x in values) else values[:n]
    for key in _DROP:
        if key in defaults:
            out[key] = None
    out.update(TINY_OVERRIDES.get(family, {}))
    return out


def build_tiny_model(
    family: str, *, seed: int = 0, dtype: torch.dtype = torch.float32, **overrides: Any
) -> nn.Module:
    """Random-weight eval-mode `*ForCausalLM` of `family` (transformers module name), tiny and CPU-fast."""
    model_cls = causal_lm_class(family)
    config_cls = model_cls.config_class
    kwargs = {**tiny_config_kwargs(family, config_cls), **overrides}
    kwargs = {k: v for k, v in kwargs.items() if v is not None or k in config_cls().to_dict()}
    config = config_cls(**kwargs, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(seed)
    model = model_cls._from_config(config, dtype=dtype)
    _randomise_biases(model)
    return model.eval()


def _randomise_biases(model: nn.Module) -> None:
    """Selection biases start at zero: make them random so the tests exercise them."""
    with torch.no_grad():
        for name, buffer in list(model.named_buffers()) + list(model.named_parameters()):
            if name.endswith(("e_score_correction_bias", "expert_bias")) and buffer.dtype.is_floating_point:
                buffer.copy_(0.05 * torch.randn_like(buffer))
