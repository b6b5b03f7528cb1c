"""DecodeEngine against stock transformers and an independent SCMoE reference loop."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from transformers import DynamicCache

from scmoe_eval.config import ModelConfig
from scmoe_eval.decoding.engine import Contrast, DecodeEngine, Generation
from scmoe_eval.decoding.sampler import Sampler, SamplingParams
from scmoe_eval.models.loading import load_model
from scmoe_eval.models.routing import RoutingPolicy

# Different token lengths, so a batch is left-padded.
PROMPTS = [
    "Question: There are 15 trees in the grove. How many trees?\nAnswer:",
    "def f(x):",
    "The quick brown fox",
    "12 + 30 = 42. 7 * 8 =",
]
SCMOE = Contrast(RoutingPolicy.topk(2), RoutingPolicy.rank(2), alpha=0.1, beta=0.5)



def test_prompts_are_left_padded_with_bos(engine: DecodeEngine) -> None:
    ids, mask = engine.encode(PROMPTS)
    lengths = mask.sum(-1).tolist()
    assert len(set(lengths)) == len(PROMPTS)
    bos = engine.tokenizer.bos_token_id
    for row, n in zip(range(len(PROMPTS)), lengths):
        assert mask[row, -n:].all() and not mask[row, :-n].any()
        assert ids[row, -n].item() == bos


def hf_greedy(loaded, prompts: list[str], new_tokens: int) -> list[list[int]]:
    """Stock `model.generate` greedy, trimmed after the first EOS (which it keeps)."""
    enc = loaded.tokenizer(prompts, padding=True, return_tensors="pt", padding_side="left")
    out = loaded.model.generate(
        **enc, do_sample=False, max_new_tokens=new_tokens, pad_token_id=loaded.tokenizer.pad_token_id
    )
    rows = []
    for row in out[:, enc["input_ids"].shape[1] :].tolist():
        eos = loaded.tokenizer.eos_token_id
        rows.append(row[: row.index(eos) + 1] if eos in row else row)
    return rows


def test_stock_greedy_equals_hf_generate(tiny_mixtral, engine: DecodeEngine) -> None:
    ours = engine.generate(PROMPTS, max_new_tokens=40)
    assert [g.token_ids for g in ours] == hf_greedy(tiny_mixtral, PROMPTS, 40)
    for g in ours:
        assert g.num_tokens == len(g.token_ids)
        assert g.stop_reason == ("eos" if g.token_ids[-1] == engine.tokenizer.eos_token_id else "length")


def test_routed_greedy_equals_generate_under_the_same_policy(tiny_mixtral, engine: DecodeEngine) -> None:
    policy = RoutingPolicy.topk(1)
    ours = engine.generate(PROMPTS, max_new_tokens=16, routing=policy)
    with tiny_mixtral.controller.use([policy] * len(PROMPTS)):
        ref = hf_greedy(tiny_mixtral, PROMPTS, 16)
    assert [g.token_ids for g in ours] == ref
    assert ref != hf_greedy(tiny_mixtral, PROMPTS, 16)  # the policy really changed the output
    assert tiny_mixtral.controller.policies is None  # stock routing restored


def reference_scmoe(loaded, prompt: str, steps: int, contrast: Contrast) -> list[int]:
    """Independent SCMoE: one unpadded prompt, a strong and a weak pass with their own caches, EOS banned."""
    model, ctl = loaded.model, loaded.controller
    ids = torch.tensor([loaded.tokenizer(prompt)["input_ids"]])
    caches = {"strong": DynamicCache(config=model.config), "weak": DynamicCache(config=model.config)}
    policy = {"strong": contrast.strong, "weak": contrast.weak}
    eos = loaded.tokenizer.eos_token_id
    out: list[int] = []
    feed = ids
    with torch.no_grad():
        for _ in range(steps):
            logits = {}
            for side in ("strong", "weak"):
                ctl.set([policy[side]])
                logits[side] = model(input_ids=feed, cache=caches[side], use_cache=True).logits[0, -1].float()
            ctl.set(None)
            zs, zw = logits["strong"], logits["weak"]
            plausible = zs >= zs.max() + math.log(contrast.alpha)
            score = torch.where(plausible, (1 + contrast.beta) * zs - contrast.beta * zw, -math.inf)
            score[eos] = -math.inf  # the paper's code bans EOS after the plausibility mask
            token = int(score.argmax())
            out.append(token)
            feed = torch.tensor([[token]])
    return out


@pytest.fixture(scope="module")
def scmoe_reference(tiny_mixtral) -> list[list[int]]:
    return [reference_scmoe(tiny_mixtral, p, 64, SCMOE) for p in PROMPTS]


@pytest.mark.parametrize("two_pass", [False, True], ids=["batched", "two-pass"])
def test_scmoe_equals_independent_two_pass_reference(engine, scmoe_reference, two_pass: bool) -> None:
    ours = engine.generate(PROMPTS, max_new_tokens=64, contrast=SCMOE, ban_eos=True, two_pass=two_pass)
    assert [g.token_ids for g in ours] == scmoe_reference
    assert all(g.stop_reason == "length" and g.num_tokens == 64 for g in ours)


def test_scmoe_differs_from_greedy(engine, scmoe_reference) -> None:
    greedy = engine.generate(PROMPTS, max_new_tokens=64, ban_eos=True)
    assert [g.token_ids for g in greedy] != scmoe_reference


def test_stop_split_across_tokens_is_cut_and_recorded(engine: DecodeEngine) -> None:
    full = engine.generate(PROMPTS[:1], max_new_tokens=30, ban_eos=True)[0]
    texts = [engine.tokenizer.decode(full.token_ids[:n]) for n in range(len(full.token_ids) + 1)]  # after n tokens
    # A two-character stop: last char of the first n-1 tokens + first char of token n, seen nowhere earlier.
    for n in range(2, len(full.token_ids)):
        before, upto = texts[n - 1], texts[n]
        if len(upto) > len(before) > 0:
            stop = before[-1] + upto[len(before)]
            if texts[-1].find(stop) == len(before) - 1:
                break
    else:
        pytest.fail("no token boundary to test a split stop on")
    got = engine.generate(PROMPTS[:1], max_new_tokens=30, ban_eos=True, stops=["@@never@@", stop])[0]
    assert got.stop_reason == "stop" and got.stop == stop
    assert got.text == before[:-1]
    assert got.token_ids == full.token_ids[:n] and got.num_tokens == n


def test_rows_that_stop_early_leave_the_others_unchanged(engine: DecodeEngine) -> None:
    alone = [engine.generate([p], max_new_tokens=24, stops=[" "], contrast=SCMOE, ban_eos=True)[0] for p in PROMPTS]
    together = engine.generate(PROMPTS, max_new_tokens=24, stops=[" "], contrast=SCMOE, ban_eos=True)
    assert [g.token_ids for g in together] == [g.token_ids for g in alone]
    assert len({g.num_tokens for g in together}) > 1  # rows really finished at different steps


@pytest.fixture(scope="module")
def eos_loving(tiny_mixtral_path: Path):
    """A private copy of the tiny model whose output layer always prefers EOS."""
    loaded = load_model(ModelConfig(path=str(tiny_mixtral_path), dtype="float32", device="cpu"))
    old = loaded.model.lm_head
    head = torch.nn.Linear(old.in_features, old.out_features, bias=True)
    with torch.no_grad():
        head.weight.copy_(old.weight)
        head.bias.zero_()
        head.bias[loaded.tokenizer.eos_token_id] = 1e4
    loaded.model.lm_head = head
    return loaded


def test_eos_ends_a_row_unless_banned(eos_loving) -> None:
    engine = DecodeEngine(eos_loving)
    eos = eos_loving.tokenizer.eos_token_id
    ended = engine.generate(PROMPTS[:2], max_new_tokens=8)
    assert [(g.token_ids, g.stop_reason, g.text) for g in ended] == [([eos], "eos", "")] * 2
    banned = engine.generate(PROMPTS[:2], max_new_tokens=8, ban_eos=True)
    for g in banned:
        assert eos not in g.token_ids and g.stop_reason == "length" and g.num_tokens == 8
    scmoe = engine.generate(PROMPTS[:2], max_new_tokens=8, contrast=SCMOE, ban_eos=True)
    # EOS is the only plausible token and the ban comes after the mask (paper code order): every score is
    # -inf and argmax falls back to id 0, exactly what the paper's code emits in this corner.
    assert [(g.token_ids, g.stop_reason) for g in scmoe] == [([0] * 8, "length")] * 2


def test_max_new_tokens_gives_length(engine: DecodeEngine) -> None:
    for g in engine.generate(PROMPTS, max_new_tokens=3, ban_eos=True):
        assert (g.stop_reason, g.num_tokens, g.stop) == ("length", 3, None)
    with pytest.raises(ValueError):
        engine.generate(PROMPTS, max_new_tokens=0)


def test_seeded_sampling_reproducible_and_batch_independent(engine: DecodeEngine) -> None:
    params = SamplingParams(temperature=1.0)
    kw = dict(max_new_tokens=20, sampling=params, ban_eos=True)
    alone = engine.generate([PROMPTS[1]], seeds=[7], **kw)[0]
    again = engine.generate([PROMPTS[1]], seeds=[7], **kw)[0]
    mixed = engine.generate([PROMPTS[0], PROMPTS[1], PROMPTS[2]], seeds=[3, 7, 11], **kw)[1]
    other = engine.generate([PROMPTS[1]], seeds=[8], **kw)[0]
    assert alone.token_ids == again.token_ids == mixed.token_ids
    assert other.token_ids != alone.token_ids
    with pytest.raises(ValueError, match="seed"):
        engine.generate(PROMPTS, max_new_tokens=2, sampling=params)


def test_scmoe_sampling_batched_equals_two_pass(engine: DecodeEngine) -> None:
    kw = dict(max_new_tokens=24, sampling=SamplingParams(temperature=1.0), contrast=SCMOE, ban_eos=True)
    batched = engine.generate(PROMPTS, seeds=[1, 2, 3, 4], two_pass=False, **kw)
    two_pass = engine.generate(PROMPTS, seeds=[1, 2, 3, 4], two_pass=True, **kw)
    assert [g.token_ids for g in batched] == [g.token_ids for g in two_pass]


def test_sampler_draws_follow_softmax() -> None:
    scores = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]])).expand(4000, 4)
    gens = [torch.Generator().manual_seed(i) for i in range(4000)]
    counts = torch.bincount(Sampler()(scores, SamplingParams(temperature=1.0), gens), minlength=4) / 4000
    assert counts.tolist() == pytest.approx([0.5, 0.3, 0.15, 0.05], abs=0.025)


def test_sampler_top_k_top_p_temperature() -> None:
    s = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    assert (Sampler.apply_top_k(s, 2) > -math.inf).tolist() == [[True, True, False, False]]
    # top-p: keep until the mass reaches p (0.5 < 0.7, 0.8 >= 0.7), the top token always stays.
    assert (Sampler.apply_top_p(s, 0.7) > -math.inf).tolist() == [[True, True, False, False]]
    assert (Sampler.apply_top_p(s, 0.81) > -math.inf).tolist() == [[True, True, True, False]]
    assert (Sampler.apply_top_p(s, 0.1) > -math.inf).tolist() == [[True, False, False, False]]
    assert Sampler.apply_temperature(s, 0.5).softmax(-1)[0, 0] > 0.5
    gens = [torch.Generator().manual_seed(i) for i in range(300)]
    picks = Sampler()(s.expand(300, 4), SamplingParams(temperature=1.0, top_p=0.7), gens)
    assert set(picks.tolist()) == {0, 1}


def test_generation_record_keys() -> None:
    g = Generation(text=" 6", token_ids=[5, 6], stop_reason="stop", stop="\n\n", num_tokens=2)
    assert g.to_record() == {
        "completion": " 6",
        "token_ids": [5, 6],
        "stop_reason": "stop",
        "stop": "\n\n",
        "num_tokens": 2,
    }


@pytest.mark.parametrize("two_pass", [False, True], ids=["batched", "two-pass"])
def test_routing_is_set_once_per_policy_change(engine: DecodeEngine, monkeypatch, two_pass: bool) -> None:
    """Batched SCMoE sets the controller once (at prefill), not per step; two-pass alternates every forward."""
    ctl = engine.controller
    calls: list = []
    real_set = ctl.set
    monkeypatch.setattr(ctl, "set", lambda policies: (calls.append(policies), real_set(policies))[1])
    steps = 6
    engine.generate(PROMPTS[:2], max_new_tokens=steps, contrast=SCMOE, ban_eos=True, two_pass=two_pass)
    routed = [c for c in calls if c is not None]  # generate's own use(None) wrapper sets None once
    assert len(routed) == (2 * steps if two_pass else 1), len(routed)
    if not two_pass:
        assert tuple(routed[0]) == (SCMOE.strong, SCMOE.weak) * 2


def test_decode_kernel_rule(tiny_mixtral) -> None:
    """Off CPU, decode switches grouped_mm -> batched_mm only for <= E/2 expert slots per step, and
    restores it afterwards; on CPU grouped_mm -> routed_rows for <= 4E slots; `decode_experts` forces one everywhere."""
    model = tiny_mixtral.model
    before = model.get_experts_implementation()
    assert set(before.values()) == {"grouped_mm"} and tiny_mixtral.controller.num_experts == 8
    gpu = DecodeEngine(tiny_mixtral)
    gpu.device = torch.device("cuda")  # the rule only reads the device type; nothing runs there
    pair = [RoutingPolicy.topk(2), RoutingPolicy.rank(2)]
    cases = [(2, pair, "batched_mm"),  # batch-1 SCMoE: 2 rows x 2 slots = 4 = E/2
             (4, pair, "grouped_mm"),  # batch-2 SCMoE: 8 slots
             (1, [RoutingPolicy.topp(0.5)], "grouped_mm"),  # topp pads to all E
             (2, [None], "batched_mm")]  # greedy, batch 2: 4 slots
    for rows, policies, want in cases:
        with gpu._decode_kernels(rows, policies):
            assert set(model.get_experts_implementation().values()) == {want}, (rows, policies)
        assert model.get_experts_implementation() == before
    cpu = DecodeEngine(tiny_mixtral)
    head = model.get_output_embeddings()
    with cpu._decode_kernels(2, pair, True):  # the tiny fixture's experts (96 KiB) are overhead-bound: no switch
        assert model.get_experts_implementation() == before and "forward" in vars(head)
    cpu._expert_bytes = 1 << 20  # as a model with 1 MiB experts
    for rows, paired, want in [(2, True, "routed_rows"), (16, True, "routed_rows"), (17, True, "grouped_mm"),
                               (16, False, "routed_rows"), (17, False, "grouped_mm")]:  # CPU: routed_rows for <= 4E slots
        with cpu._decode_kernels(rows, [None] if not paired else pair, paired):
            assert set(model.get_experts_implementation().values()) == {want}, rows
            assert ("forward" in vars(head)) == (paired and rows <= 4)  # few-rows LM head for batch <= 2 SCMoE only
        assert model.get_experts_implementation() == before and "forward" not in vars(head)
    with DecodeEngine(tiny_mixtral, decode_experts="eager")._decode_kernels(2, pair):
        assert set(model.get_experts_implementation().values()) == {"eager"}
    assert model.get_experts_implementation() == before


@pytest.mark.parametrize("kwargs", [
    dict(),
    dict(contrast=SCMOE, ban_eos=True),
    dict(contrast=SCMOE, ban_eos=True, two_pass=True),
    dict(sampling=SamplingParams(temperature=1.0), seeds=[5, 6, 7, 8, 9]),
    dict(contrast=SCMOE, sampling=SamplingParams(temperature=1.0), seeds=[5, 6, 7, 8, 9]),
], ids=["greedy", "scmoe", "scmoe-two-pass", "sample", "scmoe-sample"])
def test_continuous_batching_equals_batch_one(engine: DecodeEngine, kwargs) -> None:
    """Prompts admitted into a running batch as rows finish (left-padded into its cache, SCMoE rows in
    pairs, leading padding trimmed) decode exactly as each prompt alone at batch 1 (fp32)."""
    prompts = PROMPTS + ["Numbers: 0 1 2 3"]
    limits = [3, 17, 6, 11, 9]  # rows finish at different steps, so admissions interleave with decoding
    stops = ["\n\n", "ee"]
    seeds = kwargs.pop("seeds", None)
    alone = [engine.generate([p], stops=stops, max_new_tokens=t, seeds=None if seeds is None else [seeds[i]], **kwargs)[0]
             for i, (p, t) in enumerate(zip(prompts, limits))]
    for batch_size in (2, 3):
        seen: list[tuple[int, Generation]] = []
        got = engine.generate_continuous(prompts, batch_size=batch_size, stops=stops, max_new_tokens=limits,
                                         seeds=seeds, on_finish=lambda i, g: seen.append((i, g)), **kwargs)
        assert [g.to_record() for g in got] == [g.to_record() for g in alone], batch_size
        assert sorted(i for i, _ in seen) == list(range(len(prompts))), "each row reported exactly once"
        assert all(g is got[i] for i, g in seen)
    assert {g.stop_reason for g in alone} >= {"length"}


def test_stream_extend_pads_the_shorter_cache_on_the_left(tiny_mixtral) -> None:
    from scmoe_eval.decoding.streams import Stream

    engine = DecodeEngine(tiny_mixtral)
    a, b = Stream(engine.model), Stream(engine.model)
    a.prefill(*engine.encode(PROMPTS[:1]))
    b.prefill(*engine.encode(PROMPTS[1:3]))
    la, lb = a.mask.shape[1], b.mask.shape[1]
    keys_a = a.cache.layers[0].keys.clone()
    a.extend(b)
    assert a.mask.shape == (3, max(la, lb)) and a.next_pos[:, 0].tolist() == [la, *(b.mask.sum(-1)).tolist()]
    assert torch.equal(a.cache.layers[0].keys[:1, :, -la:], keys_a)
    assert not a.mask[1:, : max(la, lb) - lb].any()
    a.select(torch.tensor([1, 2]))  # the longest row leaves: its leading positions are padding everywhere
    a.trim_left()
    assert a.mask.shape[1] == lb and a.cache.layers[0].keys.shape[-2] == lb and a.mask[:, 0].any()
