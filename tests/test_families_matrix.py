"""Full policy matrix on one tiny family per router kind (the census runs the equivalence core on all).

Each routed selection (topk at a k other than the model's, rank, topp, random) is checked against a
float64 reference written here from the kind's declared rule (catalog.RouterKind), not from the
adapter's code; the kinds themselves are pinned to transformers by the census's bit-exact topk check.
"""

from __future__ import annotations

from contextlib import contextmanager

import pytest
import torch

from scmoe_eval.models.catalog import FAMILIES as CATALOG
from scmoe_eval.models.census import load_tiny
from scmoe_eval.models.routing import RoutingPolicy as P

BY_MODULE = {f.module: f for f in CATALOG}
# one family per router kind (and per weight rule / output contract inside a kind)
MATRIX = ("flex_olmo", "jamba", "granitemoe", "cohere2_moe", "flint", "kolibri1", "llama4", "afmoe", "lfm2_moe",
          "deepseek_v4", "glm4_moe", "axk2", "ernie4_5_moe", "longcat_flash", "mistral4", "gemma4", "phimoe")

pytestmark = pytest.mark.usefixtures("one_thread")


def _attr(obj, path):
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


@contextmanager
def _capture(router):
    seen: list = []
    handle = router.register_forward_hook(lambda m, a, out: seen.append((a, out)))
    try:
        yield seen
    finally:
        handle.remove()


def _kind(module, router):
    family = BY_MODULE[module]
    return family.variants[1][getattr(router, family.variants[0])] if family.variants else family.kind


def _reference(module, router, logits, bias, policy):
    """expert -> weight for one token, float64, from the kind's declared rule."""
    kind = _kind(module, router)
    x = logits.double()
    if kind.score == "softmax":
        gates = x.softmax(-1)
    elif kind.score == "sigmoid":
        gates = x.sigmoid()
    elif kind.score == "fn":
        gates = router.score_fn(x)
    else:  # probs
        gates = x
    key = (x if kind.select == "logits" else gates) + (0 if bias is None else bias.double())
    E = len(key)
    allowed = set(range(E))
    if kind.groups and getattr(router, "num_group", None):
        size = E // router.num_group
        groups = [key[g * size:(g + 1) * size] for g in range(router.num_group)]
        score = [float(g.sort(descending=True).values[:2].sum()) if kind.groups == "top2" else float(g.max())
                 for g in groups]
        best = sorted(range(len(groups)), key=lambda g: -score[g])[: router.topk_group]
        allowed = {g * size + i for g in best for i in range(size)}
    order = sorted(range(E), key=lambda e: (e not in allowed, -float(key[e])))
    normalize = getattr(router, kind.normalize) if isinstance(kind.normalize, str) else kind.normalize

    def finish(chosen, w):
        if normalize and not (policy.kind == "topk" and kind.weights == "softmax_chosen"):
            total = w.sum()
            w = w / (max(total, float(_attr(router, kind.clamp))) if kind.clamp else total + kind.eps)
        w = w * (float(_attr(router, kind.scale)) if kind.scale else 1.0)
        if kind.expert_scale:
            w = w * _attr(router, kind.expert_scale).double()[chosen]
        return dict(zip(chosen, w.tolist()))

    if policy.kind == "rank":
        return {order[policy.k - 1]: 1.0}
    if policy.kind == "topk":
        chosen = order[: policy.k]
        if kind.weights == "softmax_chosen":  # top-k on the logits, softmax over the chosen: no renormalisation
            return finish(chosen, x[chosen].softmax(-1))
        return finish(chosen, gates[chosen])
    # topp: smallest best-first prefix whose normalised mass exceeds p
    mass = gates[order] / gates[order].sum()
    before = torch.cat([mass.new_zeros(1), mass.cumsum(0)[:-1]])
    chosen = [e for e, b in zip(order, before.tolist()) if b <= policy.p]
    if kind.weights == "softmax_chosen":  # the mass is the softmax over all experts, renormalised
        normalize = True
    return finish(chosen, gates[chosen])


def _selection(module, kind, adapter, out):
    """(index, weights) the experts block receives; the dense contract's are the nonzero gates."""
    if kind.contract == "dense":
        dense = out[0]  # (T, E)
        return torch.arange(dense.shape[1]).expand_as(dense), dense
    return adapter.stock_selection(out)


def _as_dict(module, index_row, weight_row):
    out: dict[int, float] = {}
    for e, w in zip(index_row.tolist(), weight_row.tolist()):
        if w != 0:
            out[e] = out.get(e, 0.0) + w
    return out


@pytest.fixture(scope="module", params=MATRIX)
def tiny(request):
    loaded, stock = load_tiny(request.param)
    yield request.param, loaded, stock
    loaded.controller.remove()


@pytest.fixture(scope="module")
def ids():
    return torch.randint(3, 512, (4, 6), generator=torch.Generator().manual_seed(3))


@torch.inference_mode()
def test_selections_follow_the_declared_rule(tiny, ids):
    """topk(3) (not the model's k), rank(2), topp(0.5) per row; weights include normalisation and scaling."""
    module, loaded, _ = tiny
    ctl, adapter = loaded.controller, loaded.adapter
    policies = [P.topk(3), P.rank(2), P.topp(0.5), P.rank(1)]
    if module == "phimoe":  # SparseMixer has no renormalised-softmax top-k; policies rank by the softmax
        policies[3] = P.topk(2)
    router = ctl.routers[-1]
    with _capture(router) as seen, ctl.use(policies):
        loaded.model(input_ids=ids)
    args, out = seen[0]
    logits = adapter.router_logits(router, args, out)
    kind = _kind(module, router)
    index, weights = _selection(module, kind, adapter, out)
    bias = None
    if kind.bias == "arg":
        bias = args[1] if len(args) > 1 else None
    elif kind.bias:
        bias = _attr(router, kind.bias).squeeze()
    S = ids.shape[1]
    for t in range(logits.shape[0]):
        policy = policies[t // S]
        want = _reference(module, router, logits[t], bias, policy)
        got = _as_dict(module, index[t], weights[t])
        assert sorted(got) == sorted(want), (module, policy, t, got, want)
        for e in want:
            assert got[e] == pytest.approx(want[e], rel=1e-5, abs=1e-7), (module, policy, t, e)


@torch.inference_mode()
def test_random_is_seeded_and_draws_k(tiny, ids):
    module, loaded, _ = tiny
    ctl, model = loaded.controller, loaded.model

    def run(seed):
        ctl.reset_random()
        with ctl.use([P.random(2, seed=seed)] * 4):
            return model(input_ids=ids).logits

    first = run(0)
    assert torch.equal(first, run(0))
    assert not torch.allclose(first, run(1), atol=1e-6)
    router = ctl.routers[-1]
    ctl.reset_random()
    with _capture(router) as seen, ctl.use([P.random(1, seed=5)] * 4):
        model(input_ids=ids)
    index, weights = _selection(module, _kind(module, router), loaded.adapter, seen[0][1])
    nonzero = [_as_dict(module, i, w) for i, w in zip(index, weights)]
    assert all(list(d.values()) == [1.0] for d in nonzero)  # random-1: one expert at weight 1
    assert len({next(iter(d)) for d in nonzero}) > 1  # the draw varies across tokens


@torch.inference_mode()
def test_shared_experts_stay_on(tiny, ids):
    """Modules named shared_expert(s)/shared_mlp run under a weak policy on the same input as under stock."""
    module, loaded, _ = tiny
    model, ctl = loaded.model, loaded.controller
    shared = [(n, m) for n, m in model.named_modules()
              if n.split(".")[-1] in ("shared_expert", "shared_experts", "shared_mlp", "shared_experts_mlp")]
    if not shared:
        pytest.skip(f"{module}: no shared experts in this family")
    names = {id(m): n for n, m in model.named_modules()}
    block = names[id(ctl.routers[0])].rsplit(".", 1)[0]  # the first routed MoE block
    in_block = [m for n, m in shared if n.startswith(block + ".")]
    assert in_block, f"{module}: no shared expert next to the first router"
    first = in_block[0]

    def record(policies):
        seen = []
        # clone: Llama 4 adds the routed output into the shared expert's output tensor in place
        handle = first.register_forward_hook(lambda m, a, out: seen.append(torch.as_tensor(out).clone()))
        with ctl.use(policies):
            model(input_ids=ids)
        handle.remove()
        return seen

    stock, weak = record(None), record([P.rank(2)] * 4)
    assert len(weak) == len(stock) >= 1
    # the first MoE layer's shared expert sees the same input under any policy (routing acts after it)
    first_stock, first_weak = stock[0], weak[0]
    assert first_stock.abs().sum() > 0
    assert torch.allclose(first_stock, first_weak, atol=1e-6)
