"""Routing policies on the tiny Mixtral: stock equivalence, per-row batches, and selections checked
against a plain-Python reference computed from the router logits."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest
import torch
from transformers import AutoModelForCausalLM

from scmoe_eval.config import RoutingConfig
from scmoe_eval.models.routing import RoutingController, RoutingPolicy as P

IMPLS = ("eager", "grouped_mm", "batched_mm")


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def ids() -> torch.Tensor:
    return torch.randint(3, 512, (4, 10), generator=torch.Generator().manual_seed(0))  # (B, S)


def _load(path: Path, impl: str = "grouped_mm"):
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, experts_implementation=impl).eval()


@pytest.fixture(scope="module", params=IMPLS)
def stock_and_hooked(request, tiny_mixtral_path):
    """(stock model without hooks, same checkpoint with a controller) for one experts implementation."""
    stock, hooked = _load(tiny_mixtral_path, request.param), _load(tiny_mixtral_path, request.param)
    ctl = RoutingController(hooked)
    yield stock, hooked, ctl
    ctl.remove()


@torch.no_grad()
def _logits(model, ids: torch.Tensor) -> torch.Tensor:
    return model(ids).logits  # (B, S, V)


@torch.no_grad()
def test_default_and_own_topk_are_bit_exact_with_stock(stock_and_hooked, ids):
    stock, hooked, ctl = stock_and_hooked
    ref = _logits(stock, ids)
    assert ctl.default_k == 2 and ctl.num_experts == 8
    for policies in (None, [P.default()] * 4, [P.topk(2)] * 4, [P.topk(2), P.default()] * 2):
        with ctl.use(policies):
            assert torch.equal(_logits(hooked, ids), ref), policies


@torch.no_grad()
def test_mixed_rows_equal_separate_runs(stock_and_hooked, ids):
    """One batch, one policy per row, equals each row run alone (fp32 GEMM shapes differ: ~1e-7)."""
    _, hooked, ctl = stock_and_hooked
    batch = torch.cat([ids, ids[:2]])  # (6, S)
    policies = [P.topk(2), P.rank(2), P.topp(0.6), P.default(), P.topk(1), P.topk(8)]
    with ctl.use(policies):
        mixed = _logits(hooked, batch)
    for row, policy in enumerate(policies):
        with ctl.use([policy]):
            alone = _logits(hooked, batch[row : row + 1])
        torch.testing.assert_close(mixed[row : row + 1], alone, rtol=0, atol=1e-5)
    assert not torch.allclose(mixed[0], mixed[4], atol=1e-3)  # rows 0 and 4 share ids, not policies


@torch.no_grad()
def test_policy_identities(stock_and_hooked, ids):
    _, hooked, ctl = stock_and_hooked

    def run(policy: P) -> torch.Tensor:
        with ctl.use([policy] * ids.shape[0]):
            return _logits(hooked, ids)

    assert torch.equal(run(P.rank(1)), run(P.topk(1)))  # Mixtral renormalises top-1 to weight 1
    assert torch.equal(run(P.topp(0.999999)), run(P.topk(8)))
    assert not torch.allclose(run(P.rank(2)), run(P.topk(2)), atol=1e-3)
    assert not torch.allclose(run(P.rank(2)), run(P.rank(3)), atol=1e-3)


@torch.no_grad()
def test_random_is_seeded(tiny_mixtral, ids):
    model, ctl = tiny_mixtral.model, tiny_mixtral.controller

    def run(seed: int) -> torch.Tensor:
        ctl.reset_random()
        with ctl.use([P.random(1, seed=seed)] * ids.shape[0]):
            return _logits(model, ids)

    first = run(0)
    assert torch.equal(first, run(0))
    assert not torch.allclose(first, run(1), atol=1e-3)
    with ctl.use([P.random(2, seed=0)] * ids.shape[0]):  # the stream continues across calls
        assert not torch.equal(_logits(model, ids), _logits(model, ids))


@contextmanager
def _capture(ctl) -> Iterator[list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]]:
    """Hooks registered after the controller's: record each router's final (logits, weights, index)."""
    seen: list = []
    handles = [r.register_forward_hook(lambda m, a, out: seen.append(out)) for r in ctl.routers]
    try:
        yield seen
    finally:
        for handle in handles:
            handle.remove()


def _reference(policy: P, logits_row: list[float]) -> dict[int, float]:
    """Expert -> weight for one token, from first principles (paper Eq.3-4, dynamic routing)."""
    probs = torch.tensor(logits_row, dtype=torch.float64).softmax(-1).tolist()
    ranked = sorted(range(len(probs)), key=lambda e: -probs[e])
    if policy.kind == "rank":
        return {ranked[policy.k - 1]: 1.0}
    if policy.kind == "topk":
        chosen = ranked[: policy.k]
    else:  # topp: smallest prefix whose cumulative mass exceeds p
        chosen, mass = [], 0.0
        for e in ranked:
            chosen.append(e)
            mass += probs[e]
            if mass > policy.p:
                break
    total = sum(probs[e] for e in chosen)
    return {e: probs[e] / total for e in chosen}


@torch.no_grad()
def test_selection_matches_reference(tiny_mixtral, ids):
    """Weights per expert (padding merged) equal an independent float64 reference, token by token."""
    model, ctl = tiny_mixtral.model, tiny_mixtral.controller
    policies = [P.rank(2), P.topk(3), P.topp(0.5), P.rank(8)]
    with _capture(ctl) as seen, ctl.use(policies):
        model(ids)
    S = ids.shape[1]
    assert len(seen) == len(ctl.routers)
    for logits, weights, index in seen:
        assert index.shape[1] == ctl.num_experts  # topp widens every row to E
        assert int(index.max()) < ctl.num_experts  # padding never uses the sentinel E
        assert weights.dtype == torch.float32
        for t in range(logits.shape[0]):
            got: dict[int, float] = {}
            for e, w in zip(index[t].tolist(), weights[t].tolist()):
                got[e] = got.get(e, 0.0) + w
            got = {e: w for e, w in got.items() if w != 0.0}
            want = _reference(policies[t // S], logits[t].tolist())
            assert got.keys() == want.keys(), (t, policies[t // S])
            for e in want:
                assert got[e] == pytest.approx(want[e], abs=1e-6)


@torch.no_grad()
def test_random_selection_shape(tiny_mixtral, ids):
    model, ctl = tiny_mixtral.model, tiny_mixtral.controller
    with _capture(ctl) as seen, ctl.use([P.random(1, seed=3), P.random(3, seed=3)] * 2):
        model(ids)
    S = ids.shape[1]
    hits = torch.zeros(ctl.num_experts)
    for logits, weights, index in seen:
        probs = logits.float().softmax(-1)
        one, three = slice(0, S), slice(S, 2 * S)  # rows 0 and 1
        assert torch.equal(weights[one, 0], torch.ones(S)) and torch.equal(weights[one, 1:], torch.zeros(S, 2))
        assert all(len(set(row)) == 3 for row in index[three].tolist())  # without replacement
        want = probs[three].gather(1, index[three])
        torch.testing.assert_close(weights[three], want / want.sum(-1, keepdim=True))
        hits += torch.bincount(index[one, 0], minlength=ctl.num_experts)
    assert (hits > 0).sum() >= 6  # spread over the experts, not the router's favourites


def test_check_names_the_key(tiny_mixtral):
    ctl = tiny_mixtral.controller
    for bad in (P.topk(9), P.rank(0), P.random(9), P.rank(9)):
        with pytest.raises(ValueError, match="`k`"):
            ctl.check(bad)
    for p in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="`p`"):
            ctl.check(P.topp(p))
    ctl.check(P.topp(1.0))
    ctl.check(P.rank(8))
    with pytest.raises(ValueError, match="`k`"):
        ctl.set([P.topk(2), P.topk(12)])
    assert ctl.policies is None
    with pytest.raises(ValueError, match="kind"):
        P(kind="top2")


def test_config_and_constructors():
    assert P.from_config(RoutingConfig(kind="rank", k=2)) == P.rank(2)
    assert P.from_config(RoutingConfig(kind="topp", p=0.5)) == P.topp(0.5)
    assert P.from_config(RoutingConfig(kind="random", k=1, seed=7)) == P.random(1, seed=7)
    assert P.default() == P.from_config(RoutingConfig())
    assert P(kind="topk", k=2, p=0.3).canonical() == P.topk(2)
    assert [str(p) for p in (P.topk(2), P.rank(2), P.topp(0.6), P.random(1))] == [
        "topk(2)",
        "rank(2)",
        "topp(0.6)",
        "random(1, seed=0)",
    ]


@torch.no_grad()
def test_batch_mismatch_and_use_restores(tiny_mixtral, ids):
    model, ctl = tiny_mixtral.model, tiny_mixtral.controller
    with ctl.use([P.rank(2)] * 3):
        with pytest.raises(ValueError, match="3 rows"):
            model(ids)
        with ctl.use([P.topk(1)] * 4):
            assert ctl.policies == (P.topk(1),) * 4
        assert ctl.policies == (P.rank(2),) * 3
    assert ctl.policies is None


@torch.no_grad()
def test_remove_restores_stock(tiny_mixtral_path, ids):
    stock, hooked = _load(tiny_mixtral_path), _load(tiny_mixtral_path)
    ctl = RoutingController(hooked)
    ctl.set([P.rank(2)] * 4)
    assert not torch.equal(_logits(hooked, ids), _logits(stock, ids))
    ctl.remove()
    assert torch.equal(_logits(hooked, ids), _logits(stock, ids))


@torch.no_grad()
def test_generate_with_per_row_policies(tiny_mixtral):
    """Policies hold across prefill and cached decode steps inside generate()."""
    model, tok, ctl = tiny_mixtral.model, tiny_mixtral.tokenizer, tiny_mixtral.controller
    enc = tok(["Question: 2 + 3 =", "Question: 2 + 3 ="], return_tensors="pt")
    kw = dict(max_new_tokens=6, do_sample=False, pad_token_id=tok.pad_token_id)
    with ctl.use([P.topk(2), P.rank(2)]):
        both = model.generate(**enc, **kw)
    with ctl.use([P.rank(2)]):
        weak = model.generate(**{k: v[1:] for k, v in enc.items()}, **kw)
    stock = model.generate(**{k: v[:1] for k, v in enc.items()}, **kw)
    assert torch.equal(both[0], stock[0]) and torch.equal(both[1], weak[0])


# ---------------------------------------------------------------- hot-path shortcuts (reuse_stock)
def _run_capture(model, ctl: RoutingController, policies, ids: torch.Tensor):
    """(logits, [(index, weights) per router]) of one call under `policies`."""
    with _capture(ctl) as seen, ctl.use(policies):
        logits = _logits(model, ids)
    return logits, [(out[2], out[1]) for out in seen]


@pytest.mark.parametrize("family", ["mixtral", "qwen2_moe", "qwen3_moe", "olmoe", "deepseek_v2", "deepseek_v3"])
@torch.no_grad()
def test_stock_shortcuts_change_nothing(family, ids):
    """The hook's shortcuts (topk(own k) -> the router's output; rank(r <= own k) -> a column of the
    router's index) give bit-identical selections and logits to recomputing every policy from the
    router logits, and the recomputed topk(own k) is itself bit-exact with the stock router."""
    from scmoe_eval.models.fixtures import fixture_path

    model = _load(fixture_path(family))
    stock = _logits(model, ids)
    k0 = model.config.num_experts_per_tok
    mixes = ([P.topk(k0)] * 4, [P.topk(k0), P.rank(2)] * 2, [P.rank(1), P.topk(k0), P.rank(2), P.topk(1)],
             [P.rank(2), P.rank(3), P.default(), P.topp(0.5)])
    results = {}
    for reuse in (True, False):
        ctl = RoutingController(model, reuse_stock=reuse)
        results[reuse] = [_run_capture(model, ctl, policies, ids) for policies in mixes]
        ctl.remove()
    assert torch.equal(results[False][0][0], stock)  # recomputed topk(own k) == stock, every family
    for policies, (fast, fast_sel), (slow, slow_sel) in zip(mixes, results[True], results[False]):
        assert torch.equal(fast, slow), (family, policies)
        for (fi, fw), (si, sw) in zip(fast_sel, slow_sel, strict=True):
            assert torch.equal(fi, si) and torch.equal(fw, sw) and fw.dtype == sw.dtype, (family, policies)


@pytest.mark.parametrize("family", ["mixtral", "deepseek_v2", "deepseek_v3"])
@torch.no_grad()
def test_recomputed_topk_exact_at_larger_own_k(family, ids):
    """topk(own k) is exact for another own k too (the routers read `top_k` at call time)."""
    from scmoe_eval.models.fixtures import fixture_path

    model = _load(fixture_path(family))
    ctl = RoutingController(model, reuse_stock=False)
    for router in ctl.routers:
        router.top_k = 4
    stock = _logits(model, ids)
    with ctl.use([P.topk(4)] * ids.shape[0]):
        assert torch.equal(_logits(model, ids), stock)
    with ctl.use([P.topk(2)] * ids.shape[0]):
        assert not torch.equal(_logits(model, ids), stock)


def test_router_scores_top_matches_full_order():
    """`top(k)` (a sorted topk) and the lazily sorted full order agree, with and without expert groups."""
    from scmoe_eval.models.families import RouterScores

    key = torch.rand(50, 8, generator=torch.Generator().manual_seed(0))  # (T, E), no ties
    keep = torch.zeros(50, 8, dtype=torch.bool)
    keep[:, 4:] = True  # group 2 of 2 kept: its experts rank first
    for groups in (None, keep):
        scores = RouterScores(weights=key, topk_key=key, rank_key=key, group_keep=groups)
        tops = [scores.top(k) for k in (1, 3, 8)]  # before `order` exists
        order = scores.order
        for k, top in zip((1, 3, 8), tops):
            assert torch.equal(top, order[:, :k])
        want = key.sort(-1, descending=True).indices
        if groups is not None:
            want = torch.cat([(key[:, 4:]).sort(-1, descending=True).indices + 4,
                              key[:, :4].sort(-1, descending=True).indices], dim=1)
        assert torch.equal(order, want)


@torch.no_grad()
def test_shortcut_hook_output_layout(tiny_mixtral, ids):
    """SCMoE rows on Mixtral: strong = the router's own output, weak rank(2) = its 2nd column, padded [e, e], [1, 0]."""
    model, ctl = tiny_mixtral.model, tiny_mixtral.controller
    stock_seen: list = []
    handle = ctl.routers[0].register_forward_pre_hook(lambda m, a: stock_seen.append(m.forward(*a)))
    try:
        with _capture(ctl) as seen, ctl.use([P.topk(2), P.rank(2)] * 2):
            model(ids)
    finally:
        handle.remove()
    _, w0, i0 = stock_seen[0]
    _, w, i = seen[0]
    S = ids.shape[1]
    strong = torch.cat([torch.arange(0, S), torch.arange(2 * S, 3 * S)])
    weak = strong + S
    assert torch.equal(i[strong], i0[strong]) and torch.equal(w[strong], w0[strong])
    assert torch.equal(i[weak], i0[weak][:, 1:2].expand(-1, 2))
    assert torch.equal(w[weak], torch.tensor([[1.0, 0.0]]).expand(2 * S, 2))
    assert i.is_contiguous() and w.is_contiguous()


def test_set_reuses_built_states(tiny_mixtral):
    """Setting an equal list again reuses its state (and the device masks cached on it)."""
    ctl = tiny_mixtral.controller
    with ctl.use([P.topk(2), P.rank(2)]):
        first = ctl._state
    with ctl.use([P.topk(2), P.rank(2)]):
        assert ctl._state is first
        assert ctl._state.unique == (P.default(), P.rank(2)) and ctl._state.from_stock == (True, True)
    with ctl.use([P.topk(2)] * 3):
        assert ctl._state.stock and ctl.policies == (P.topk(2),) * 3
