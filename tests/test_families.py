"""Family adapters on a tiny random model of every supported family, plus a DeepSeekMoE-style MoEGate.

Each family is checked three ways: stock equivalence (torch.equal against the same checkpoint
without hooks), per-row batches against separate runs, and the selected experts/weights against a
float64 reference written from the family's published routing rule.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from types import SimpleNamespace
from typing import Iterator

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModelForCausalLM, LlamaConfig

from scmoe_eval.models.families import FAMILIES, DeepseekMoeAdapter, detect_family
from scmoe_eval.models.fixtures import FIXTURE_FAMILIES, build_tiny_checkpoint, fixture_path
from scmoe_eval.models.routing import RoutingController, RoutingPolicy as P

NORMALISES = {"mixtral": True, "qwen2_moe": False, "qwen3_moe": True, "olmoe": False, "deepseek_v2": False,
              "deepseek_v3": True}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def ids() -> torch.Tensor:
    return torch.randint(3, 512, (4, 9), generator=torch.Generator().manual_seed(1))  # (B, S)


def _load(path, dtype=torch.float32):
    return AutoModelForCausalLM.from_pretrained(path, dtype=dtype).eval()


@pytest.fixture(scope="module", params=FIXTURE_FAMILIES)
def family(request):
    """(family name, stock model, hooked model, controller) for one tiny fixture."""
    path = fixture_path(request.param)
    stock, hooked = _load(path), _load(path)
    ctl = RoutingController(hooked)
    yield request.param, stock, hooked, ctl
    ctl.remove()


@contextmanager
def _capture(routers) -> Iterator[list]:
    """Record each router's final output (after the controller's hook replaced it)."""
    seen: list = []
    handles = [r.register_forward_hook(lambda m, a, out: seen.append(out)) for r in routers]
    try:
        yield seen
    finally:
        for handle in handles:
            handle.remove()


@torch.no_grad()
def test_detected_adapter_and_stock_equivalence(family, ids):
    name, stock, hooked, ctl = family
    assert ctl.adapter.name == name and type(detect_family(hooked.config)) is FAMILIES.get(name)
    assert ctl.num_experts == 8 and ctl.default_k == 2
    assert len(ctl.routers) == hooked.config.num_hidden_layers - getattr(hooked.config, "first_k_dense_replace", 0)
    ref = stock(ids).logits
    for policies in ([P.default()] * 4, [P.topk(ctl.default_k)] * 4):
        with ctl.use(policies):
            assert torch.equal(hooked(ids).logits, ref), (name, policies)
    with ctl.use([P.rank(2)] * 4):
        assert not torch.allclose(hooked(ids).logits, ref, atol=1e-4)


@torch.no_grad()
def test_topp_and_random_weights_follow_the_family_normalisation(family, ids):
    """Dynamic (topp) and random-k weights renormalise exactly where the family's top-k does."""
    name, _, hooked, ctl = family
    scale = float(getattr(hooked.config, "routed_scaling_factor", 1.0)) if name.startswith("deepseek") else 1.0
    with _capture(ctl.routers[:1]) as seen, ctl.use([P.topp(0.5), P.random(3, seed=0)] * 2):
        hooked(ids)
    logits, weights, index = seen[0]
    S = ids.shape[1]
    for t in range(logits.shape[0]):
        _, gates = _reference_order(name, ctl.routers[0], logits[t])
        picked = {e: w for e, w in zip(index[t].tolist(), weights[t].tolist()) if w != 0}
        total = sum(picked.values()) / scale
        if NORMALISES[name]:
            assert total == pytest.approx(1.0, rel=1e-5), (name, t)
        else:
            assert total == pytest.approx(float(gates[list(picked)].sum()), rel=1e-5), (name, t)
            assert total < 1.0 or (t // S) % 2 == 0
    assert index.shape[1] == ctl.num_experts  # topp widens every row to E


@torch.no_grad()
def test_mixed_rows_equal_separate_runs(family, ids):
    name, _, hooked, ctl = family
    policies = [P.topk(ctl.default_k), P.rank(2), P.topp(0.5), P.default()]
    with ctl.use(policies):
        mixed = hooked(ids).logits
    for row, policy in enumerate(policies):
        with ctl.use([policy]):
            alone = hooked(ids[row : row + 1]).logits
        torch.testing.assert_close(mixed[row : row + 1], alone, rtol=0, atol=1e-5, msg=f"{name} {policy}")


def _reference_order(name: str, router: nn.Module, logits: torch.Tensor) -> tuple[list[int], torch.Tensor]:
    """(experts best first, gate value per expert) for one token, in float64 from the family's rule."""
    logits = logits.double()
    if name != "deepseek_v3":
        gates = logits.softmax(-1)
        choice = gates
    else:
        gates = logits.sigmoid()
        choice = gates + router.e_score_correction_bias.double()
    E = len(choice)
    allowed = set(range(E))
    if name in ("deepseek_v2", "deepseek_v3"):
        size = E // router.num_group
        groups = [choice[g * size : (g + 1) * size] for g in range(router.num_group)]
        if name == "deepseek_v2":
            group_score = [float(g.max()) for g in groups]
        else:
            group_score = [float(g.sort(descending=True).values[:2].sum()) for g in groups]
        best = sorted(range(len(groups)), key=lambda g: -group_score[g])[: router.topk_group]
        allowed = {g * size + i for g in best for i in range(size)}
    order = sorted(range(E), key=lambda e: (e not in allowed, -float(choice[e])))
    return order, gates


@torch.no_grad()
def test_weights_follow_the_family_rule(family, ids):
    """topk(2): family normalisation and scaling; rank(2): the 2nd expert with weight exactly 1."""
    name = family[0]
    hooked = _load(fixture_path(name))
    ctl = RoutingController(hooked, reuse_stock=False)  # the recomputation, not the router's own output
    scale = float(getattr(hooked.config, "routed_scaling_factor", 1.0)) if name.startswith("deepseek") else 1.0
    S = ids.shape[1]
    with _capture(ctl.routers) as seen, ctl.use([P.topk(2), P.rank(2)] * 2):
        hooked(ids)
    assert len(seen) == len(ctl.routers)
    for router, (logits, weights, index) in zip(ctl.routers, seen):
        for t in range(0, logits.shape[0], 3):
            order, gates = _reference_order(name, router, logits[t])
            if (t // S) % 2 == 0:  # topk(2)
                chosen = order[:2]
                want = gates[chosen]
                if NORMALISES[name]:
                    want = want / want.sum()
                assert sorted(index[t].tolist()) == sorted(chosen), (name, t)
                got = dict(zip(index[t].tolist(), weights[t].tolist()))
                for e, w in zip(chosen, (want * scale).tolist()):
                    assert got[e] == pytest.approx(w, rel=1e-5)
            else:  # rank(2), padded to K=2 with a duplicate of the same expert at weight 0
                assert index[t].tolist() == [order[1], order[1]], (name, t)
                assert weights[t].tolist() == [1.0, 0.0]


@pytest.mark.parametrize("name", ["deepseek_v2", "deepseek_v3", "qwen2_moe"])
@torch.no_grad()
def test_topk_bit_exact_at_larger_k(name, tmp_path, ids):
    """DeepSeek routers call topk(sorted=False): the adapter reproduces that slot order, so any k is exact."""
    path = build_tiny_checkpoint(name, tmp_path / name, num_experts_per_tok=4, num_hidden_layers=2)
    stock, hooked = _load(path), _load(path)
    ctl = RoutingController(hooked, reuse_stock=False)  # recompute topk(own k), no stock shortcut
    with ctl.use([P.topk(4)] * 4):
        assert torch.equal(hooked(ids).logits, stock(ids).logits)


@pytest.mark.parametrize("name", ["mixtral", "qwen2_moe"])
@torch.no_grad()
def test_bfloat16_keeps_router_dtype(name, ids):
    stock, hooked = _load(fixture_path(name), torch.bfloat16), _load(fixture_path(name), torch.bfloat16)
    ctl = RoutingController(hooked)
    with _capture([stock.model.layers[0].mlp.gate]) as ref:
        want = stock(ids).logits
    with ctl.use([P.topk(2), P.default()] * 2):
        assert torch.equal(hooked(ids).logits, want)
    with _capture(ctl.routers[:1]) as seen, ctl.use([P.rank(2), P.topp(0.6)] * 2):
        hooked(ids)
    assert seen[0][1].dtype == ref[0][1].dtype  # mixtral: fp32, qwen2_moe: bf16


def test_unsupported_model_lists_families():
    tiny_llama = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                             num_attention_heads=2, num_key_value_heads=2)
    with pytest.raises(ValueError, match="no supported MoE layers") as err:
        detect_family(tiny_llama)
    for name in (*FIXTURE_FAMILIES, "deepseek"):
        assert name in str(err.value)
    with pytest.raises(KeyError, match="mixtral"):
        FAMILIES.get("llama")


# ---------------------------------------------------------------- DeepSeekMoE-16B (remote code) stand-in
class MoEGate(nn.Module):
    """Written here from the interface of DeepSeekMoE-16B's remote `MoEGate` (transformers 4.x code):
    forward(hidden (B,S,H)) -> (topk_idx (T,K), topk_weight (T,K), aux_loss); softmax in the model
    dtype, topk(sorted=False), renormalised only if top_k > 1 and norm_topk_prob."""

    def __init__(self, hidden: int, experts: int, top_k: int, norm_topk_prob: bool) -> None:
        super().__init__()
        self.top_k, self.n_routed_experts, self.norm_topk_prob = top_k, experts, norm_topk_prob
        self.scoring_func = "softmax"
        self.weight = nn.Parameter(torch.randn(experts, hidden) * 0.5)

    def forward(self, hidden_states: torch.Tensor):
        h = hidden_states.shape[-1]
        scores = F.linear(hidden_states.view(-1, h), self.weight).softmax(dim=-1)  # (T, E)
        topk_weight, topk_idx = torch.topk(scores, k=self.top_k, dim=-1, sorted=False)
        if self.top_k > 1 and self.norm_topk_prob:
            topk_weight = topk_weight / (topk_weight.sum(dim=-1, keepdim=True) + 1e-20)
        return topk_idx, topk_weight, None


class ToyDeepseekMoE(nn.Module):
    """Routed experts weighted by the gate, plus a shared expert that is always on. Dispatches as the
    remote `DeepseekMoE.moe_infer` does: flattened slot s belongs to token s // num_experts_per_tok,
    where num_experts_per_tok is the block's configured K, whatever width the gate returned."""

    def __init__(self, hidden: int, experts: int, top_k: int, norm: bool) -> None:
        super().__init__()
        self.num_experts_per_tok = top_k
        self.gate = MoEGate(hidden, experts, top_k, norm)
        self.experts = nn.ModuleList(nn.Linear(hidden, hidden, bias=False) for _ in range(experts))
        self.shared_experts = nn.Linear(hidden, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, S, H)
        idx, w, _ = self.gate(x)
        flat = x.reshape(-1, x.shape[-1])  # (T, H)
        slots, slot_w = idx.reshape(-1), w.reshape(-1, 1)  # (T*K,), (T*K, 1)
        token = torch.arange(slots.numel()) // self.num_experts_per_tok  # (T*K,)
        routed = torch.zeros_like(flat)
        for e, expert in enumerate(self.experts):
            hit = slots == e
            routed.index_add_(0, token[hit], torch.tanh(expert(flat[token[hit]])) * slot_w[hit].to(flat.dtype))
        return (routed + self.shared_experts(flat)).view_as(x)


class ToyDeepseekModel(nn.Module):
    """Dense first layer, then MoE layers, like DeepSeekMoE-16B (first_k_dense_replace=1)."""

    def __init__(self, hidden: int = 16, experts: int = 8, top_k: int = 3, norm: bool = False) -> None:
        super().__init__()
        self.config = SimpleNamespace(model_type="deepseek")
        self.layers = nn.ModuleList([nn.Linear(hidden, hidden)] + [ToyDeepseekMoE(hidden, experts, top_k, norm)
                                                                   for _ in range(2)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = x + layer(x)
        return x


def _toy(dtype: torch.dtype = torch.float32, norm: bool = False) -> tuple[ToyDeepseekModel, torch.Tensor]:
    torch.manual_seed(0)
    return ToyDeepseekModel(norm=norm).to(dtype), torch.randn(3, 5, 16, dtype=dtype)  # (B, S, H)


@torch.no_grad()
def test_deepseek_moegate_adapter():
    model, x = _toy()
    ref = model(x)
    ctl = RoutingController(model)
    assert isinstance(ctl.adapter, DeepseekMoeAdapter) and (ctl.num_experts, ctl.default_k) == (8, 3)
    for policies in (None, [P.default()] * 3, [P.topk(3)] * 3):
        with ctl.use(policies):
            assert torch.equal(model(x), ref)
    with _capture(ctl.routers[:1]) as seen, ctl.use([P.topk(2), P.rank(1), P.topp(0.5)]):
        mixed = model(x)
    idx, w, aux = seen[0]
    assert aux is None and idx.shape == (15, 8)  # topp widens to E
    probs = F.linear(x.reshape(-1, 16) + model.layers[0](x).reshape(-1, 16), ctl.routers[0].weight).softmax(-1)
    top2 = probs[:5].topk(2)
    assert torch.equal(idx[:5, :2].sort(-1).values, top2.indices.sort(-1).values)
    torch.testing.assert_close(w[:5, :2].sum(-1), top2.values.sum(-1))  # raw probabilities, not renormalised
    assert torch.equal(idx[5:10, 0], probs[5:10].argmax(-1)) and torch.equal(w[5:10, 0], torch.ones(5))
    kept = w[10:].sum(-1)  # topp keeps raw probabilities too (norm_topk_prob=false), as the paper's gate
    assert bool((kept < 1).all()) and bool((kept > 0.5).all())
    torch.testing.assert_close(kept, probs[10:].gather(1, idx[10:]).mul(w[10:] > 0).sum(-1))
    for row, policy in enumerate([P.topk(2), P.rank(1), P.topp(0.5)]):
        with ctl.use([policy]):
            torch.testing.assert_close(mixed[row : row + 1], model(x[row : row + 1]), rtol=0, atol=1e-5)
    ctl.remove()
    assert torch.equal(model(x), ref)


@torch.no_grad()
def test_deepseek_dispatch_width_follows_the_policy():
    """The remote block maps slots to tokens by its configured K: every width the hook returns
    (topk(1) padded to K, topk(E) wider than K, topp) must give what a reference gather computes,
    and stock routing must find the block's K restored."""
    model, x = _toy()
    ref = model(x)
    ctl = RoutingController(model)
    blocks = [layer for layer in model.layers if isinstance(layer, ToyDeepseekMoE)]

    def by_gather(policy: P) -> torch.Tensor:
        """The same model with each block computing its routed experts by a gather over all experts."""
        def block_forward(block: ToyDeepseekMoE, h: torch.Tensor) -> torch.Tensor:
            idx, w, _ = block.gate(h)
            flat = h.reshape(-1, h.shape[-1])
            every = torch.stack([torch.tanh(e(flat)) for e in block.experts], dim=1)  # (T, E, H)
            picked = every.gather(1, idx[:, :, None].expand(-1, -1, flat.shape[-1]))  # (T, K', H)
            return ((picked * w[:, :, None]).sum(1) + block.shared_experts(flat)).view_as(h)

        with ctl.use([policy] * 3):
            h = x
            for layer in model.layers:
                h = h + (block_forward(layer, h) if isinstance(layer, ToyDeepseekMoE) else layer(h))
        return h

    for policy in (P.topk(1), P.rank(2), P.topk(8), P.topp(0.5), P.random(2, seed=1)):
        ctl.reset_random()
        expected = by_gather(policy)
        ctl.reset_random()
        with ctl.use([policy] * 3):
            assert {b.num_experts_per_tok for b in blocks} == {ctl._state.width}
            torch.testing.assert_close(model(x), expected, rtol=0, atol=1e-5, msg=str(policy))
        assert {b.num_experts_per_tok for b in blocks} == {3}
        assert torch.equal(model(x), ref)
    ctl.set([P.topk(8)] * 3)
    ctl.remove()
    assert {b.num_experts_per_tok for b in blocks} == {3} and torch.equal(model(x), ref)


@torch.no_grad()
def test_deepseek_moegate_bfloat16_and_norm():
    model, x = _toy(torch.bfloat16, norm=True)
    ref = model(x)
    ctl = RoutingController(model, DeepseekMoeAdapter())
    with ctl.use([P.topk(3)] * 3):
        assert torch.equal(model(x), ref)
    with _capture(ctl.routers[:1]) as seen, ctl.use([P.topk(2)] * 3):
        model(x)
    assert seen[0][1].dtype == torch.bfloat16
    assert seen[0][1].float().sum(-1).sub(1).abs().max() < 1e-2  # norm_topk_prob=True renormalises
    assert math.isclose(ctl.adapter.norm_eps, 1e-20)
