"""`dense_hit` experts implementation: against a per-slot reference loop and against transformers'
own implementations on every fixture family, inside the decode engine."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

import scmoe_eval.models.experts as experts
from scmoe_eval.config import ModelConfig
from scmoe_eval.decoding.engine import Contrast, DecodeEngine
from scmoe_eval.models.fixtures import FIXTURE_FAMILIES, fixture_path
from scmoe_eval.models.loading import load_model
from scmoe_eval.models.routing import RoutingPolicy as P

pytestmark = pytest.mark.usefixtures("one_thread")
PROMPTS = ["Question: There are 15 trees in the grove. How many trees?\nAnswer:", "def f(x):", "7 * 8 ="]


def _toy_experts(E: int = 6, H: int = 8, I: int = 5, dtype=torch.float32) -> SimpleNamespace:
    g = torch.Generator().manual_seed(0)
    gate_up, down = torch.randn(E, 2 * I, H, generator=g), torch.randn(E, H, I, generator=g)
    module = SimpleNamespace(gate_up_proj=gate_up.to(dtype), down_proj=down.to(dtype), num_experts=E, act_fn=F.silu,
                             has_bias=False, is_transposed=False, has_post_expert_norm=False, has_gate=True,
                             _is_expert_parallel=False)
    module._apply_gate = lambda x: module.act_fn(x.chunk(2, dim=-1)[0]) * x.chunk(2, dim=-1)[1]
    return module


def _per_slot(module, hidden, index, weights) -> torch.Tensor:
    """Reference: every (token, slot) computed on its own, in float64."""
    out = torch.zeros(hidden.shape, dtype=torch.float64)
    for t in range(index.shape[0]):
        for s in range(index.shape[1]):
            e = int(index[t, s])
            gate, up = (module.gate_up_proj[e].double() @ hidden[t].double()).chunk(2)
            out[t] += float(weights[t, s]) * (module.down_proj[e].double() @ (F.silu(gate) * up))
    return out


def test_matches_a_per_slot_reference_with_padding_and_repeats():
    module = _toy_experts()
    hidden = torch.randn(4, 8, generator=torch.Generator().manual_seed(1))
    index = torch.tensor([[2, 5], [5, 5], [0, 2], [2, 2]])  # row 1: one expert padded; row 3: a repeat
    weights = torch.tensor([[0.7, 0.3], [1.0, 0.0], [0.4, 0.6], [0.5, 0.5]])
    got = experts.dense_hit_experts_forward(module, hidden, index, weights)
    assert got.dtype == hidden.dtype
    torch.testing.assert_close(got.double(), _per_slot(module, hidden, index, weights), rtol=1e-5, atol=1e-5)


def test_unsupported_layouts_fall_back_to_batched_mm(monkeypatch):
    seen = []
    monkeypatch.setattr(experts, "batched_mm_experts_forward", lambda *a: seen.append(a) or "batched")
    for flag in ("has_bias", "is_transposed", "has_post_expert_norm", "_is_expert_parallel"):
        module = _toy_experts()
        setattr(module, flag, True)
        assert experts.dense_hit_experts_forward(module, torch.zeros(1, 8), torch.zeros(1, 2, dtype=torch.long),
                                                 torch.ones(1, 2)) == "batched"
    assert len(seen) == 4


@pytest.mark.parametrize("family", FIXTURE_FAMILIES)
@torch.no_grad()
def test_decoding_with_dense_hit_equals_the_model_default(family):
    """dense_hit and routed_rows forced, and the engine's own CPU choice (routed_rows for small steps plus
    the few-rows LM head for paired SCMoE rows), give grouped_mm's tokens on every family."""
    lm = load_model(ModelConfig(path=str(fixture_path(family)), dtype="float32", device="cpu"))
    scmoe = Contrast(P.topk(2), P.rank(2))
    stock = DecodeEngine(lm, decode_experts="grouped_mm")
    others = {name: DecodeEngine(lm, decode_experts=name) for name in (experts.NAME, experts.ROUTED)}
    others["engine default"] = DecodeEngine(lm)
    others["engine default"]._expert_bytes = 1 << 30  # as a model whose experts are big enough for routed_rows
    used: list[str] = []  # the implementation each experts call ran under
    blocks = [m for m in lm.model.modules() if type(m).__name__.endswith("Experts")]
    handles = [b.register_forward_pre_hook(lambda m, a: used.append(m.config._experts_implementation)) for b in blocks]
    for kwargs in (dict(contrast=scmoe), dict(routing=P.topp(0.7)), dict()):
        for prompts in (PROMPTS, PROMPTS[:1]):
            want = [g.token_ids for g in stock.generate(prompts, max_new_tokens=24, ban_eos=True, **kwargs)]
            for name, engine in others.items():
                used.clear()
                got = [g.token_ids for g in engine.generate(prompts, max_new_tokens=24, ban_eos=True, **kwargs)]
                assert got == want, (family, kwargs, name, len(prompts))
                if name != "engine default":
                    assert used.count(name) >= 23 * len(blocks), (family, kwargs)  # every decode step ran it
    for handle in handles:
        handle.remove()
    assert not {experts.NAME, experts.ROUTED} & set(lm.model.get_experts_implementation().values())  # restored


def test_routed_rows_matches_a_per_slot_reference_and_skips_padding():
    module = _toy_experts(E=6, H=8, I=20)  # gate_up (40, 8) is tall: the W @ x.T path runs for shared experts
    hidden = torch.randn(5, 8, generator=torch.Generator().manual_seed(2))
    index = torch.tensor([[2, 5], [5, 5], [0, 2], [2, 2], [4, 1]])  # row 1: one expert padded; row 3: a repeat
    weights = torch.tensor([[0.7, 0.3], [1.0, 0.0], [0.4, 0.6], [0.5, 0.5], [0.0, 0.0]])  # row 4: nothing routed
    calls: list[int] = []
    gate = module._apply_gate
    module._apply_gate = lambda x: calls.append(x.shape[0]) or gate(x)
    got = experts.routed_rows_experts_forward(module, hidden, index, weights)
    assert got.dtype == hidden.dtype
    torch.testing.assert_close(got.double(), _per_slot(module, hidden, index, weights), rtol=1e-5, atol=1e-5)
    assert sorted(calls) == [1, 2, 4]  # experts 0 / 5 (padding skipped) / 2 (row 3 twice); 1 and 4 at weight 0 never run
    assert torch.equal(got[4], torch.zeros(8))


def test_few_rows_linear_is_the_same_product():
    g = torch.Generator().manual_seed(3)
    x, tall = torch.randn(3, 16, generator=g), torch.randn(80, 16, generator=g)
    torch.testing.assert_close(experts._few_rows_linear(x, tall), F.linear(x, tall))
    assert torch.equal(experts._few_rows_linear(x[:1], tall), F.linear(x[:1], tall))  # one row: nn.Linear's own call
    wide, xw = torch.randn(16, 80, generator=g), torch.randn(3, 80, generator=g)
    assert torch.equal(experts._few_rows_linear(xw, wide), F.linear(xw, wide))  # not tall: nn.Linear's own call
