"""Continuous batching internals: in-place KV growth (RoomyLayer), partial joins, prompts prefilled ahead.

The end-to-end claim (each prompt decodes as alone at batch 1) is also in tests/test_engine.py and
tests/test_pipeline.py; here the pieces are checked against references computed another way.
"""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from scmoe_eval.decoding import engine as engine_module
from scmoe_eval.decoding.engine import Contrast, DecodeEngine
from scmoe_eval.decoding.sampler import SamplingParams
from scmoe_eval.decoding.streams import ROOM, RoomyLayer, Stream
from scmoe_eval.models.routing import RoutingPolicy

PROMPTS = ["Q: Olivia has $23. She bought five bagels for $3 each. How much is left?\nA:", "import math\n",
           "It was the best of times", "2 ** 10 =", "Do hamsters provide food for any animals?"]  # 5 lengths
SCMOE = Contrast(RoutingPolicy.topk(2), RoutingPolicy.rank(2))  # alpha 0.1, beta 0.5


@torch.inference_mode()
def test_roomy_layer_decodes_bitwise_as_dynamic_layer(engine: DecodeEngine) -> None:
    """A Stream's RoomyLayers (the default cache) write into spare columns in place (growing past ROOM,
    after a row selection and a left trim) and give the very logits and keys of transformers' stock
    DynamicCache (torch.cat per step), at every step."""
    ids, mask = engine.encode(PROMPTS[:3])
    plain, roomy = Stream(engine.model), Stream(engine.model)
    plain.cache = DynamicCache(config=engine.model.config)
    first = plain.logits(plain.prefill(ids, mask))
    assert torch.equal(first, roomy.logits(roomy.prefill(ids, mask)))
    tokens = first.argmax(-1)
    for step in range(ROOM + 20):
        if step == 10:  # the longest prompt leaves: its leading columns are padding in every row
            for s in (plain, roomy):
                s.select(torch.tensor([1, 2]))
                s.trim_left()
            tokens = tokens[1:]
        logits = plain.logits(plain.step(tokens))
        assert torch.equal(logits, roomy.logits(roomy.step(tokens))), step
        tokens = logits.argmax(-1)
    for a, b in zip(plain.cache.layers, roomy.cache.layers):
        assert type(a) is DynamicLayer and type(b) is RoomyLayer
        assert torch.equal(a.keys, b.keys) and torch.equal(a.values, b.values)
    assert roomy.cache.get_seq_length() == plain.cache.get_seq_length()


@torch.inference_mode()
def test_extend_with_rows_appends_only_those_rows(engine: DecodeEngine) -> None:
    """`extend(other, rows)` equals extending by `other` after selecting `rows` from it."""
    a, whole = Stream(engine.model), Stream(engine.model)
    picked, other = Stream(engine.model), Stream(engine.model)
    for s in (a, whole):
        s.prefill(*engine.encode(PROMPTS[:2]))
    for s in (picked, other):
        s.prefill(*engine.encode(PROMPTS[2:5]))
    rows = torch.tensor([2, 0])
    a.extend(other, rows)
    picked.select(rows)
    whole.extend(picked)
    assert torch.equal(a.mask, whole.mask) and torch.equal(a.next_pos, whole.next_pos)
    for x, y in zip(a.cache.layers, whole.cache.layers):
        assert type(x) is RoomyLayer and torch.equal(x.keys, y.keys) and torch.equal(x.values, y.values)
    assert other.mask.shape[0] == 3, "the rows joined are copied, the source keeps its rows"


@pytest.mark.parametrize("kwargs", [
    dict(),
    dict(contrast=SCMOE, ban_eos=True),
    dict(contrast=SCMOE, ban_eos=True, two_pass=True),
    dict(sampling=SamplingParams(temperature=1.0), seeds=[5, 6, 7, 8, 9]),
], ids=["greedy", "scmoe", "scmoe-two-pass", "sample"])
def test_prompts_prefilled_ahead_decode_as_alone(engine: DecodeEngine, monkeypatch: pytest.MonkeyPatch,
                                                 kwargs) -> None:
    """With a prefill group as large as the batch, prompts wait prefilled for a slot and join one by
    one (a partial join); every prompt still decodes as alone at batch 1, with fewer prefills."""
    limits = [3, 17, 6, 11, 9]
    seeds = kwargs.pop("seeds", None)
    alone = [engine.generate([p], max_new_tokens=t, seeds=None if seeds is None else [seeds[i]], **kwargs)[0]
             for i, (p, t) in enumerate(zip(PROMPTS, limits))]
    prefills: list[int] = []
    hook = engine.model.register_forward_pre_hook(
        lambda _m, _a, kw: prefills.append(kw["input_ids"].shape[0]) if kw["input_ids"].shape[1] > 1 else None,
        with_kwargs=True)
    monkeypatch.setattr(engine_module, "PREFILL_AHEAD", 1)
    try:
        got = engine.generate_continuous(PROMPTS, batch_size=2, max_new_tokens=limits, seeds=seeds, **kwargs)
    finally:
        hook.remove()
    assert [g.to_record() for g in got] == [g.to_record() for g in alone]
    per_prompt = 2 if "contrast" in kwargs and not kwargs.get("two_pass") else 1  # paired rows
    streams = 2 if kwargs.get("two_pass") else 1
    assert sum(prefills) == len(PROMPTS) * per_prompt * streams, "every prompt prefilled once"
    assert len(prefills) < 4 * streams, "one prefill per admission would take 4 (2, then 1, 1, 1)"


def test_roomy_cache_keeps_the_family_layers_it_does_not_know() -> None:
    """Only full-attention DynamicLayers become RoomyLayers: a sliding-window layer (which drops old
    columns itself) stays transformers' own."""
    from transformers import MixtralConfig
    from transformers.cache_utils import DynamicSlidingWindowLayer

    from scmoe_eval.decoding.streams import roomy_cache

    full = roomy_cache(MixtralConfig(num_hidden_layers=3))
    assert [type(layer) for layer in full.layers] == [RoomyLayer] * 3
    sliding = roomy_cache(MixtralConfig(num_hidden_layers=2, sliding_window=16))
    assert [type(layer) for layer in sliding.layers] == [DynamicSlidingWindowLayer] * 2


def test_continuous_batching_refuses_a_hybrid_cache_before_any_prefill(monkeypatch) -> None:
    """A recurrent (Mamba) or linear-attention state cannot be left-padded and joined: the engine says
    so, naming run.schedule, before it prefills anything."""
    from scmoe_eval.models.census import load_tiny

    loaded, _ = load_tiny("jamba")
    engine = DecodeEngine(loaded)
    prefills = []
    monkeypatch.setattr(Stream, "prefill", lambda *a, **k: prefills.append(1))
    with pytest.raises(NotImplementedError, match="run.schedule=static"):
        engine.generate_continuous(PROMPTS[:3], batch_size=2, max_new_tokens=4)
    assert prefills == []


def test_minimax_cache_is_its_own_and_refused_where_it_cannot_go() -> None:
    """MiniMax decodes on the MiniMaxCache its catalog entry declares (its model refuses DynamicCache);
    continuous batching and the compiled decode refuse it with the config key to change."""
    from scmoe_eval.models.census import load_tiny

    loaded, _ = load_tiny("minimax")
    stream = Stream(loaded.model, loaded.controller)
    assert type(stream.cache).__name__ == "MiniMaxCache" and stream.cache.layer_class_to_replicate is RoomyLayer
    with pytest.raises(NotImplementedError, match="MiniMaxCache.*run.schedule=static"):
        DecodeEngine(loaded).generate_continuous(PROMPTS[:2], batch_size=2, max_new_tokens=2)
    with pytest.raises(ValueError, match="run.compile=false"):
        DecodeEngine(loaded, compile=True).generate(PROMPTS[:1], max_new_tokens=2)
