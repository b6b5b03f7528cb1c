"""The compiled decode step (decoding/static.py): a static cache and torch.compile give the same
token ids as the eager DynamicCache path on CPU in fp32, for every scorer the engine compiles.

Each distinct (rows, cache length, routing policy list) compiles once (~20-40 s on 2 cores), so the
cases share shapes where they can.
"""

from __future__ import annotations

import pytest
import torch

from scmoe_eval.decoding.engine import Contrast, DecodeEngine
from scmoe_eval.decoding.sampler import SamplingParams
from scmoe_eval.decoding.static import BUCKET, capacity
from scmoe_eval.models.routing import RoutingPolicy

pytestmark = pytest.mark.slow

PROMPTS = ["Question: Natalia sold clips to 48 of her friends in April. How many?\nAnswer:", "Q: 2+3?\nA:"]
SCMOE = Contrast(RoutingPolicy.topk(2), RoutingPolicy.rank(2))


@pytest.fixture(scope="module")
def engines(tiny_mixtral, one_thread):
    return DecodeEngine(tiny_mixtral), DecodeEngine(tiny_mixtral, compile=True)


def _ids(gens) -> list[list[int]]:
    return [g.token_ids for g in gens]


@pytest.mark.parametrize(
    "kwargs",
    [
        # rows end at different steps: the finished row stays in the compiled forward, its scores dropped
        dict(max_new_tokens=[24, 7], ban_eos=True),
        dict(max_new_tokens=[24, 7], ban_eos=True, contrast=SCMOE),
        dict(max_new_tokens=24, ban_eos=True, contrast=SCMOE, two_pass=True),
        # one prefill fanned out to 3 seeded samples per prompt before the first compiled step
        dict(max_new_tokens=16, sampling=SamplingParams(temperature=0.8, top_p=0.95), seeds=list(range(6)),
             num_samples=3, contrast=SCMOE),
    ],
    ids=["greedy", "scmoe", "scmoe-two-pass", "scmoe-sample-n3"],
)
def test_compiled_decode_gives_the_eager_tokens(engines, kwargs) -> None:
    eager, compiled = engines
    got = compiled.generate(PROMPTS, **kwargs)
    want = eager.generate(PROMPTS, **kwargs)
    assert _ids(got) == _ids(want)
    assert [g.stop_reason for g in got] == [g.stop_reason for g in want]


def test_every_decode_step_runs_the_compiled_call(engines, monkeypatch) -> None:
    """The step call is transformers' torch.compile wrapper (kept on the model), and each of the
    max_new_tokens - 1 decode steps goes through it (the first token comes from the eager prefill)."""
    _, compiled = engines
    compiled.generate(PROMPTS[:1], max_new_tokens=2, ban_eos=True)
    call = compiled.model._compiled_call
    assert hasattr(call, "_torchdynamo_orig_callable")  # what torch.compile returns
    calls = []
    monkeypatch.setattr(compiled.model, "_compiled_call", lambda *a, **k: calls.append(1) or call(*a, **k))
    compiled.generate(PROMPTS[:1], max_new_tokens=5, ban_eos=True)
    assert len(calls) == 4


def test_stops_and_eos_end_rows_as_in_eager(engines) -> None:
    eager, compiled = engines
    kw = dict(max_new_tokens=[24, 7], stops=["\n", "the"])
    assert _ids(compiled.generate(PROMPTS, **kw)) == _ids(eager.generate(PROMPTS, **kw))


def test_cache_length_is_bucketed() -> None:
    assert capacity(1, 1) == BUCKET
    assert capacity(BUCKET - 10, 10) == BUCKET
    assert capacity(BUCKET - 10, 11) == 2 * BUCKET


def test_continuous_batching_refuses_the_compiled_engine(engines) -> None:
    _, compiled = engines
    with pytest.raises(ValueError, match="continuous batching runs eager"):
        compiled.generate_continuous(PROMPTS, batch_size=1, max_new_tokens=4)


def _graphs_built(fn) -> int:
    """How many graphs torch.compile built while `fn` ran (0: it ran eager; one per step: it recompiled)."""
    from scmoe_eval.models.census import compile_counts

    return compile_counts(fn)[0]


@pytest.mark.parametrize("family", ["qwen2_moe", "deepseek_v3"])
def test_compiled_scmoe_on_other_router_kinds(family, one_thread) -> None:
    """Shared experts and a softmax router (Qwen2-MoE); sigmoid + bias with expert groups (DeepSeek-V3),
    whose rank(2) is recomputed from the router's scores inside the graph: one graph for the batch (a
    cached_property there broke it at every router)."""
    from scmoe_eval.config import ModelConfig
    from scmoe_eval.models.fixtures import fixture_path
    from scmoe_eval.models.loading import load_model

    loaded = load_model(ModelConfig(path=str(fixture_path(family)), dtype="float32", device="cpu"))
    contrast = Contrast(RoutingPolicy.topk(loaded.controller.default_k), RoutingPolicy.rank(2))
    kw = dict(max_new_tokens=[12, 5], ban_eos=True, contrast=contrast)
    got: list = []
    graphs = _graphs_built(lambda: got.extend(DecodeEngine(loaded, compile=True).generate(PROMPTS, **kw)))
    assert _ids(got) == _ids(DecodeEngine(loaded).generate(PROMPTS, **kw))
    assert graphs == 1, graphs


@pytest.mark.parametrize("module", ["jamba", "qwen3_next", "gpt_oss"])
def test_compiled_decode_on_hybrid_and_sliding_caches(module, one_thread) -> None:
    """Jamba (Mamba states beside attention KV), Qwen3-Next (gated DeltaNet linear attention) and GPT-OSS
    (sliding-window layers): greedy with a row ending early, and seeded SCMoE samples fanned out from
    one prefill (the cache rows, recurrent states included, rebuilt before the first compiled step),
    give the eager tokens, each batch shape compiled once. On transformers' StaticSlidingWindowLayer
    GPT-OSS recompiled at every step until torch's limit (8) and then ran eager, still giving the
    eager tokens: the graph count is what tells the two apart."""
    from scmoe_eval.models.census import load_tiny

    loaded, _ = load_tiny(module)
    eager, compiled = DecodeEngine(loaded), DecodeEngine(loaded, compile=True)
    contrast = Contrast(RoutingPolicy.default(), RoutingPolicy.rank(2))
    for kw in (dict(max_new_tokens=[12, 4], ban_eos=True),
               dict(max_new_tokens=10, sampling=SamplingParams(temperature=0.8), seeds=list(range(4)), num_samples=2,
                    contrast=contrast)):
        got: list = []
        graphs = _graphs_built(lambda: got.extend(compiled.generate(PROMPTS, **kw)))  # noqa: B023
        assert _ids(got) == _ids(eager.generate(PROMPTS, **kw)), kw
        assert graphs == 1, (graphs, kw)


@pytest.mark.parametrize("module", ["deepseek_v32", "llama4"])
def test_compile_is_refused_where_it_would_not_give_a_compiled_eager_equal_step(module) -> None:
    """DeepSeek-V3.2's sparse-attention indexer (transformers' own generate gives other tokens on a
    static cache), and Llama 4, which transformers' get_compiled_call hands back uncompiled (a run
    asking for compile would silently decode eager): refused before any decode step, naming
    run.compile (MiniMax: tests/test_continuous.py)."""
    from scmoe_eval.models.census import load_tiny

    loaded, _ = load_tiny(module)
    with pytest.raises(ValueError, match=r"run\.compile=false"):
        DecodeEngine(loaded, compile=True).generate(PROMPTS, max_new_tokens=2)
