"""Strategy registry: config -> engine arguments, paper defaults, sample seeds, end-to-end shapes."""

from __future__ import annotations

from dataclasses import replace

import pytest

from scmoe_eval.config import RoutingConfig, StrategyConfig
from scmoe_eval.decoding.engine import Contrast, DecodeEngine
from scmoe_eval.decoding.sampler import GREEDY, SamplingParams
from scmoe_eval.decoding.strategies import STRATEGIES, Strategy, build_strategy, sample_seed
from scmoe_eval.models.routing import RoutingPolicy

PROMPTS = ["Question: Olivia has $23. How much money does she have left?\nAnswer:", "def f(x):"]


def test_registry_names_and_unknown_name() -> None:
    assert STRATEGIES.names() == [
        "cd", "contrastive-search", "dola", "greedy", "sample", "scmoe", "scmoe-sample", "self-consistency"
    ]
    with pytest.raises(KeyError, match="valid: cd"):
        build_strategy(StrategyConfig(name="beam"))


def test_greedy_and_sample_use_the_routing_policy() -> None:
    routing = RoutingConfig(kind="topp", p=0.5)
    greedy = build_strategy(StrategyConfig(name="greedy", routing=routing))
    assert greedy == Strategy(routing=RoutingPolicy.topp(0.5), ban_eos=False)
    sample = build_strategy(StrategyConfig(name="sample", temperature=0.7, top_p=0.95, top_k=40, num_samples=4))
    assert sample.sampling == SamplingParams(temperature=0.7, top_k=40, top_p=0.95)
    assert sample.routing == RoutingPolicy.default() and sample.contrast is None and sample.num_samples == 4


def test_scmoe_paper_defaults() -> None:
    s = build_strategy(StrategyConfig(name="scmoe"))
    assert s.contrast == Contrast(RoutingPolicy.topk(2), RoutingPolicy.rank(2), alpha=0.1, beta=0.5)
    assert s.sampling == GREEDY and s.ban_eos is True and s.two_pass is None
    tuned = build_strategy(
        StrategyConfig(name="scmoe", weak=RoutingConfig(kind="rank", k=3), beta=0.9, ban_eos=False, two_pass=True)
    )
    assert tuned.contrast.weak == RoutingPolicy.rank(3) and tuned.contrast.beta == 0.9
    assert tuned.ban_eos is False and tuned.two_pass is True


def test_scmoe_sample_has_no_extra_temperature_by_default() -> None:
    s = build_strategy(StrategyConfig(name="scmoe-sample", num_samples=5))
    assert s.sampling == SamplingParams(temperature=1.0) and s.ban_eos is True and s.num_samples == 5
    hot = build_strategy(StrategyConfig(name="scmoe-sample", temperature=0.7, top_p=0.9))
    assert hot.sampling == SamplingParams(temperature=0.7, top_p=0.9)


def test_self_consistency_wraps_the_inner_strategy() -> None:
    sc = build_strategy(StrategyConfig(name="self-consistency", inner="sample", temperature=0.7, num_samples=20))
    assert sc.sampling == SamplingParams(temperature=0.7) and sc.num_samples == 20 and sc.contrast is None
    sc_scmoe = build_strategy(
        StrategyConfig(name="self-consistency", inner="scmoe-sample", weak=RoutingConfig(kind="rank", k=3), num_samples=3)
    )
    assert sc_scmoe.contrast.weak == RoutingPolicy.rank(3) and sc_scmoe.ban_eos is True
    with pytest.raises(ValueError, match="greedy"):
        build_strategy(StrategyConfig(name="self-consistency", inner="greedy", num_samples=5))
    with pytest.raises(ValueError, match="inner"):
        build_strategy(StrategyConfig(name="self-consistency", inner="self-consistency", num_samples=5))


def test_sample_seeds_are_deterministic_nested_and_distinct() -> None:
    assert sample_seed(1234, 0) == 1234
    seeds = [sample_seed(1234, j) for j in range(20)]
    assert seeds == [sample_seed(1234, j) for j in range(20)]
    assert len(set(seeds)) == 20 and all(0 <= s < 2**63 for s in seeds)
    assert sample_seed(1235, 1) != sample_seed(1234, 1)
    strat = build_strategy(StrategyConfig(name="sample", num_samples=3))
    assert strat.sample_seeds(1234) == seeds[:3]


def test_self_consistency_end_to_end(tiny_mixtral) -> None:
    engine = DecodeEngine(tiny_mixtral)
    sc = build_strategy(StrategyConfig(name="self-consistency", inner="scmoe-sample", num_samples=3))
    out = sc.generate(engine, PROMPTS, stops=["\n\n"], max_new_tokens=6, seeds=[10, 20])
    assert [len(row) for row in out] == [3, 3]
    assert len({tuple(g.token_ids) for g in out[0]}) > 1  # samples differ
    # Sample j of prompt 1 is exactly a lone run with that sample's seed (batch-independent, nested seeds).
    kw = dict(stops=["\n\n"], max_new_tokens=6, sampling=sc.sampling, contrast=sc.contrast, ban_eos=True)
    for j, seed in enumerate(sc.sample_seeds(20)):
        alone = engine.generate(PROMPTS[1:], seeds=[seed], **kw)[0]
        assert alone.token_ids == out[1][j].token_ids


def test_scmoe_strategy_matches_engine_call(tiny_mixtral) -> None:
    engine = DecodeEngine(tiny_mixtral)
    out = build_strategy(StrategyConfig(name="scmoe")).generate(
        engine, PROMPTS, stops=[], max_new_tokens=8, seeds=[0, 0]
    )
    contrast = Contrast(RoutingPolicy.topk(2), RoutingPolicy.rank(2), 0.1, 0.5)
    direct = engine.generate(PROMPTS, max_new_tokens=8, contrast=contrast, ban_eos=True)
    assert [[g.token_ids for g in row] for row in out] == [[g.token_ids] for g in direct]


@pytest.mark.parametrize("inner, two_pass", [("sample", None), ("scmoe-sample", False), ("scmoe-sample", True)])
def test_shared_prefill_gives_todays_samples(tiny_mixtral, inner, two_pass) -> None:
    """n samples from one prefill per prompt (the KV cache fanned out) equal n separate engine calls,
    one per sample index (the path before prefill sharing), token for token and record for record;
    and the prompts are prefilled once, not n times."""
    engine = DecodeEngine(tiny_mixtral)
    cfg = StrategyConfig(name="self-consistency", inner=inner, num_samples=5, temperature=0.9, two_pass=two_pass)
    shared = build_strategy(cfg)
    prompts = ["Question: There are 15 trees in the grove. How many trees?\nAnswer:", "12 + 30 = 42. 7 * 8 ="]
    kw = dict(stops=["\n\n", "e"], max_new_tokens=20, seeds=[10, 20])
    prefills: list[int] = []
    hook = tiny_mixtral.model.register_forward_pre_hook(
        lambda m, a, k: prefills.append(k["input_ids"].shape[0]) if k["input_ids"].shape[1] > 1 else None,
        with_kwargs=True)
    try:
        got = shared.generate(engine, prompts, **kw)
    finally:
        hook.remove()
    want = replace(shared, share_prefill=False).generate(engine, prompts, **kw)
    assert [[g.to_record() for g in row] for row in got] == [[g.to_record() for g in row] for row in want]
    assert len({tuple(g.token_ids) for g in got[0]}) > 1
    assert {g.stop_reason for row in got for g in row} - {"length"}  # rows leave the fanned-out batch early
    rows_per_prompt = 1 if inner == "sample" or two_pass else 2
    assert sum(prefills) == len(prompts) * rows_per_prompt * (2 if two_pass else 1)  # once, not 5 times
