"""TrafficCounter: the experts each routing touches per decode step, against hand-made selections and
against what the routing rules imply on the tiny Mixtral; the bytes it reports against the parameters."""

from __future__ import annotations

import pytest
import torch

from scmoe_eval.decoding.engine import Contrast, DecodeEngine
from scmoe_eval.decoding.traffic import TrafficCounter, expert_bytes, experts_modules, floor_ratio, shared_bytes
from scmoe_eval.models.routing import RoutingPolicy

pytestmark = pytest.mark.usefixtures("one_thread")


def test_counts_a_hand_made_step(tiny_mixtral) -> None:
    counter = TrafficCounter(tiny_mixtral.model, ("strong", "weak"))
    counter._on_model(None, (), dict(input_ids=torch.zeros(4, 1, dtype=torch.long), attention_mask=torch.ones(4, 7)))
    index = torch.tensor([[0, 1], [1, 1], [2, 3], [5, 5]])  # rows: strong, weak (padded), strong, weak (padded)
    weights = torch.tensor([[0.6, 0.4], [1.0, 0.0], [0.5, 0.5], [1.0, 0.0]])
    counter._on_experts(None, (torch.zeros(4, 8), index, weights))
    step = counter.steps[0]
    assert (step.strong, step.weak, step.union, step.union_padded) == (4, 2, 5, 5)
    assert (step.slots, step.routed_slots, step.rows, step.kv_positions) == (8, 6, 4, 28)
    counter._on_model(None, (), dict(input_ids=torch.zeros(4, 3, dtype=torch.long)))  # a prefill is not counted
    counter._on_experts(None, (torch.zeros(12, 8), index.repeat(3, 1), weights.repeat(3, 1)))
    assert len(counter.steps) == 1 and counter.steps[0].strong == 4


def test_counts_greedy_and_scmoe_decoding(tiny_mixtral) -> None:
    engine, model = DecodeEngine(tiny_mixtral), tiny_mixtral.model
    layers = len(experts_modules(model))
    kw = dict(max_new_tokens=6, ban_eos=True)
    with TrafficCounter(model) as greedy:
        engine.generate(["def f(x):"], **kw)
    with TrafficCounter(model, ("strong", "weak")) as scmoe:
        engine.generate(["def f(x):"], contrast=Contrast(RoutingPolicy.topk(2), RoutingPolicy.rank(2)), **kw)
    g, s = greedy.summary(), scmoe.summary()
    assert len(greedy.steps) == len(scmoe.steps) == 5  # decode forwards: tokens 2..6
    assert g["strong"] == g["union"] == 2 * layers and g["weak"] == 0  # top-2: two distinct experts per layer
    assert s["strong"] == 2 * layers and s["weak"] == layers  # the weak row routes to one expert per layer
    assert 2 * layers <= s["union"] <= 3 * layers and s["union_padded"] == s["union"]  # padding reads nothing new
    assert (s["slots"], s["routed_slots"]) == (4 * layers, 3 * layers)
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    experts = sum(p.numel() * p.element_size() for m in experts_modules(model) for p in m.parameters(recurse=False))
    embed = model.get_input_embeddings().weight
    assert shared_bytes(model) == params - experts - embed.numel() * embed.element_size()
    assert expert_bytes(experts_modules(model)[0]) * 8 * layers == experts
    assert floor_ratio(s, g) == pytest.approx(s["floor_bytes"] / g["floor_bytes"]) and floor_ratio(s, g) > 1
