"""DeepSeekMoE (v1) -> native Qwen2-MoE conversion, checked against a DeepSeekMoE forward written here
from the architecture (Llama attention, dense first layer, softmax top-k without renormalisation,
shared experts added unweighted), independent of transformers."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from scmoe_eval.config import ModelConfig
from scmoe_eval.decoding.engine import Contrast, DecodeEngine
from scmoe_eval.models.convert_deepseek_moe import convert, convert_config
from scmoe_eval.models.fixtures import fixture_path
from scmoe_eval.models.loading import load_model
from scmoe_eval.models.routing import RoutingPolicy as P

pytestmark = pytest.mark.usefixtures("one_thread")

CFG = dict(model_type="deepseek", vocab_size=512, hidden_size=32, intermediate_size=48, moe_intermediate_size=16,
           num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=4, n_shared_experts=2,
           n_routed_experts=8, num_experts_per_tok=3, moe_layer_freq=1, first_k_dense_replace=1,
           norm_topk_prob=False, scoring_func="softmax", hidden_act="silu", max_position_embeddings=256,
           rms_norm_eps=1e-6, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False, rope_theta=10000.0,
           rope_scaling=None, attention_bias=False, torch_dtype="float32")


def _weights(cfg: dict) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    H, I, M, S, E = (cfg["hidden_size"], cfg["intermediate_size"], cfg["moe_intermediate_size"],
                     cfg["moe_intermediate_size"] * cfg["n_shared_experts"], cfg["n_routed_experts"])

    def r(*shape: int, scale: float = 0.2) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * scale

    def mlp(prefix: str, width: int) -> dict[str, torch.Tensor]:
        return {f"{prefix}.gate_proj.weight": r(width, H), f"{prefix}.up_proj.weight": r(width, H),
                f"{prefix}.down_proj.weight": r(H, width)}

    w = {"model.embed_tokens.weight": r(cfg["vocab_size"], H, scale=1.0), "model.norm.weight": 1 + r(H),
         "lm_head.weight": r(cfg["vocab_size"], H)}
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}"
        w |= {f"{p}.input_layernorm.weight": 1 + r(H), f"{p}.post_attention_layernorm.weight": 1 + r(H)}
        w |= {f"{p}.self_attn.{n}_proj.weight": r(H, H) for n in "qkvo"}
        if i < cfg["first_k_dense_replace"]:
            w |= mlp(f"{p}.mlp", I)
        else:
            w[f"{p}.mlp.gate.weight"] = r(E, H, scale=1.0)
            for e in range(E):
                w |= mlp(f"{p}.mlp.experts.{e}", M)
            w |= mlp(f"{p}.mlp.shared_experts", S)
    return w


def _reference_logits(w: dict[str, torch.Tensor], cfg: dict, ids: torch.Tensor) -> torch.Tensor:
    """DeepSeekMoE forward for one unpadded sequence ids (L,) -> logits (L, V), float64."""
    w = {k: v.double() for k, v in w.items()}
    H, nh, eps, k = cfg["hidden_size"], cfg["num_attention_heads"], cfg["rms_norm_eps"], cfg["num_experts_per_tok"]
    d, L = H // nh, ids.shape[0]

    def norm(x, weight):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight

    def mlp(x, prefix):
        return (F.silu(x @ w[f"{prefix}.gate_proj.weight"].T) * (x @ w[f"{prefix}.up_proj.weight"].T)) @ \
            w[f"{prefix}.down_proj.weight"].T

    inv = 1.0 / cfg["rope_theta"] ** (torch.arange(0, d, 2, dtype=torch.float64) / d)
    ang = torch.arange(L, dtype=torch.float64)[:, None] * inv[None]  # (L, d/2)
    cos, sin = torch.cat([ang.cos()] * 2, -1), torch.cat([ang.sin()] * 2, -1)  # (L, d)

    def rope(x):  # (nh, L, d): rotate the two halves
        half = torch.cat([-x[..., d // 2:], x[..., : d // 2]], -1)
        return x * cos + half * sin

    x = w["model.embed_tokens.weight"][ids]  # (L, H)
    causal = torch.full((L, L), float("-inf"), dtype=torch.float64).triu(1)
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}"
        h = norm(x, w[f"{p}.input_layernorm.weight"])
        q, kk, v = ((h @ w[f"{p}.self_attn.{n}_proj.weight"].T).view(L, nh, d).transpose(0, 1) for n in "qkv")
        att = torch.softmax(rope(q) @ rope(kk).transpose(-1, -2) / math.sqrt(d) + causal, -1) @ v  # (nh, L, d)
        x = x + att.transpose(0, 1).reshape(L, H) @ w[f"{p}.self_attn.o_proj.weight"].T
        h = norm(x, w[f"{p}.post_attention_layernorm.weight"])
        if i < cfg["first_k_dense_replace"]:
            x = x + mlp(h, f"{p}.mlp")
            continue
        probs = torch.softmax(h @ w[f"{p}.mlp.gate.weight"].T, -1)  # (L, E), raw weights: no renormalisation
        top_w, top_i = probs.topk(k, -1)
        routed = torch.zeros_like(h)
        for t in range(L):
            for j in range(k):
                routed[t] += top_w[t, j] * mlp(h[t : t + 1], f"{p}.mlp.experts.{int(top_i[t, j])}")[0]
        x = x + routed + mlp(h, f"{p}.mlp.shared_experts")
    return norm(x, w["model.norm.weight"]) @ w["lm_head.weight"].T


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    src = tmp_path_factory.mktemp("deepseek-moe")
    weights = _weights(CFG)
    save_file(weights, str(src / "model.safetensors"))
    (src / "config.json").write_text(json.dumps(CFG))
    tok_dir = fixture_path("mixtral")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (src / name).write_bytes((tok_dir / name).read_bytes())
    dst = tmp_path_factory.mktemp("qwen2moe")
    convert(src, dst, shard_bytes=200_000)  # several shards
    return weights, dst


@torch.no_grad()
def test_converted_model_matches_a_deepseekmoe_forward(converted):
    weights, dst = converted
    assert len(json.loads((dst / "model.safetensors.index.json").read_text())["weight_map"]) > 0
    assert len(list(dst.glob("model-*.safetensors"))) > 1
    lm = load_model(ModelConfig(path=str(dst), dtype="float32", device="cpu"))
    assert lm.adapter.name == "qwen2_moe" and len(lm.controller.routers) == 2  # layer 0 stays dense
    ids = torch.tensor([1, 17, 99, 250, 3, 42, 7, 300])
    got = lm.model(input_ids=ids[None]).logits[0].double()
    want = _reference_logits(weights, CFG, ids)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-4)


@torch.no_grad()
def test_paper_deepseek_settings_run_on_the_converted_model(converted):
    """The paper's DeepSeekMoE SCMoE setting: strong = default top-k, weak = topk(1) with the raw probability."""
    _, dst = converted
    lm = load_model(ModelConfig(path=str(dst), dtype="float32", device="cpu"))
    engine = DecodeEngine(lm)
    out = engine.generate(["def add(a, b):", "12 + 30 ="], max_new_tokens=8, ban_eos=True,
                          contrast=Contrast(P.default(), P.topk(1), alpha=0.1, beta=0.5))
    assert [g.num_tokens for g in out] == [8, 8]
    seen = []  # registered after the controller's hook: the selection the experts receive
    handle = lm.controller.routers[0].register_forward_hook(lambda m, a, out: seen.append(out))
    with lm.controller.use([P.topk(1)]):
        lm.model(input_ids=torch.tensor([[1, 17, 99, 250]]))
    handle.remove()
    logits, weights, index = seen[0]
    probs = logits.float().softmax(-1)  # (T, E)
    top = probs.max(-1)
    assert torch.equal(index[:, 0], top.indices)  # the top expert...
    torch.testing.assert_close(weights[:, 0].float(), top.values)  # ...at its raw probability, not 1
    assert bool((weights[:, 0] < 1).all()) and bool((weights[:, 1:] == 0).all())


def test_config_without_an_equivalent_is_refused():
    for key, value in (("scoring_func", "sigmoid"), ("attention_bias", True), ("rope_scaling", {"type": "linear"})):
        with pytest.raises(ValueError, match=key):
            convert_config({**CFG, key: value})
    with pytest.raises(ValueError, match="model_type"):
        convert_config({**CFG, "model_type": "mixtral"})
    cfg = convert_config({**CFG, "num_hidden_layers": 6, "first_k_dense_replace": 1, "moe_layer_freq": 2})
    assert cfg.mlp_only_layers == [0, 1, 3, 5]  # sparse where layer >= 1 and layer % 2 == 0
    assert cfg.shared_expert_intermediate_size == 32 and not cfg.norm_topk_prob
