"""One teacher-forced forward of several routings of the same MoE, with every router's choice recorded.

Item i under routing j is batch row i*R + j (R routings, j=0 the strong one), so the strong pass
runs once per item and the weak routings are extra rows of one batched forward, as SCMoE decoding
batches its strong and weak rows; routings of different expert widths go to separate forwards
(`width_groups`: for top-2 + rank-1..8 + random-1 that is the strong forward and one 9-row weak forward). Each row has its own hidden states all the way up, so a weak row's
router at layer l sees the weak row's own states (and attends over its own earlier positions: what the
weak stream's KV cache holds during SCMoE decoding).

`RouterRecorder` hooks the routers *after* the RoutingController's hooks, so it sees the (index,
weights) the experts actually got, plus the family's expert ranking of the router scores.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import torch
from torch import Tensor, nn

from scmoe_eval.analysis.data import TextItem
from scmoe_eval.analysis.tokens import classify

if TYPE_CHECKING:
    from scmoe_eval.models.loading import LoadedModel
    from scmoe_eval.models.routing import RoutingPolicy


@dataclass
class Encoded:
    """Left-padded token ids of N texts and, per item, what each scored target token is."""

    ids: Tensor  # (N, W)
    mask: Tensor  # (N, W) 1 = real token
    scored: Tensor  # (N, W) bool: position p is scored when it predicts a target token of the span
    labels: list[list[str]]  # per item: the scored target tokens as text, in order
    expression: list[list[bool]]  # per item, per scored target
    stopword: list[list[bool]]


def encode(tokenizer: Any, items: Sequence[TextItem], span: str = "all") -> Encoded:
    """Tokenize (with BOS, as the runs do) and mark the scored positions and token classes."""
    rows, spans, texts, starts = [], [], [], []
    for item in items:
        enc = tokenizer(item.text, add_special_tokens=True, return_offsets_mapping=True)
        rows.append(list(enc["input_ids"]))
        spans.append([tuple(o) for o in enc["offset_mapping"]])
        texts.append(item.text)
        starts.append(len(item.prefix) if span == "answer" else 0)
    width = max(len(r) for r in rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    scored = torch.zeros((len(rows), width), dtype=torch.bool)
    labels, expression, stopword = [], [], []
    for i, (row, offs, text, start) in enumerate(zip(rows, spans, texts, starts)):
        left = width - len(row)
        ids[i, left:] = torch.tensor(row)
        mask[i, left:] = 1
        # target t (t >= 1) is predicted at position left + t - 1; BOS and offset-less tokens are never targets
        targets = [t for t in range(1, len(row)) if offs[t][1] > offs[t][0] and offs[t][1] > start]
        for t in targets:
            scored[i, left + t - 1] = True
        target_spans = [offs[t] for t in targets]
        is_expr, is_stop = classify(text, target_spans)
        labels.append([text[s:e] for s, e in target_spans])
        expression.append(is_expr)
        stopword.append(is_stop)
    return Encoded(ids, mask, scored, labels, expression, stopword)


@dataclass
class LayerRoute:
    """One MoE layer's routing in a (N, R, W) forward."""

    index: Tensor  # (N, R, W, K) experts each row's tokens went to
    active: Tensor  # (N, R, W, K) bool: the slot carries weight (padding slots repeat an expert at weight 0)
    order: Tensor  # (N, W, E) the strong row's expert ranking of its own router scores, best first


class RouterRecorder:
    """Records every router call of a forward; install after the routing controller (load_model does that)."""

    def __init__(self, loaded: "LoadedModel") -> None:
        self.adapter = loaded.adapter
        self.routers = loaded.controller.routers
        self.calls: list[tuple[Tensor, Tensor, Tensor]] = []
        self._handles: list[Any] = []

    def _hook(self, router: nn.Module, args: tuple, output: Any) -> None:
        index, weights = self.adapter.stock_selection(output)  # after the controller's repacking
        scores = self.adapter.scores(router, self.adapter.router_logits(router, args, output))
        self.calls.append((index.detach(), (weights != 0).detach(), scores.order.detach()))

    @contextmanager
    def recording(self) -> Iterator[list[tuple[Tensor, Tensor, Tensor]]]:
        self.calls = []
        self._handles = [r.register_forward_hook(self._hook) for r in self.routers]
        try:
            yield self.calls
        finally:
            for handle in self._handles:
                handle.remove()
            self._handles = []


def _positions(mask: Tensor) -> Tensor:
    return (mask.cumsum(-1) - 1).clamp(min=0)  # padding does not shift positions


def slot_width(policy: "RoutingPolicy", default_k: int, num_experts: int) -> int:
    """Expert slots per token the routing controller gives a row under `policy` (rows share the widest)."""
    return {"default": default_k, "topk": policy.k, "rank": 1, "topp": num_experts, "random": policy.k}[policy.kind]


def width_groups(policies: Sequence["RoutingPolicy"], default_k: int, num_experts: int) -> list[list[int]]:
    """Policy indices grouped by slot width, in order of first appearance.

    One forward per group: the controller pads every row of a call to the widest policy, so putting the
    single-expert weak rows (rank-k, random-1) beside top-2 would make each of them compute 2 expert slots
    (scripts/bench_analysis.py measures it). For the paper's set that is 2 forwards: strong, and all 9 weak."""
    groups: dict[int, list[int]] = {}
    for j, policy in enumerate(policies):
        groups.setdefault(slot_width(policy, default_k, num_experts), []).append(j)
    return list(groups.values())


@torch.inference_mode()
def _forward(
    loaded: "LoadedModel", enc: Encoded, policies: Sequence["RoutingPolicy"], record: bool
) -> tuple[Tensor, list[tuple[Tensor, Tensor, Tensor]]]:
    """Logits (N*R, W, V) of one call with rows i*R + j, and the recorder's per-layer calls."""
    r = len(policies)
    ids = enc.ids.repeat_interleave(r, 0).to(loaded.device)  # row i*R + j
    mask = enc.mask.repeat_interleave(r, 0).to(loaded.device)
    kwargs = dict(input_ids=ids, attention_mask=mask, position_ids=_positions(mask), use_cache=False)
    with loaded.controller.use(list(policies) * enc.ids.shape[0]):
        if not record:
            return loaded.model(**kwargs).logits, []
        recorder = RouterRecorder(loaded)
        with recorder.recording() as calls:
            logits = loaded.model(**kwargs).logits
        return logits, calls


@torch.inference_mode()
def multi_routing_forward(
    loaded: "LoadedModel", enc: Encoded, policies: Sequence["RoutingPolicy"], record: bool = False,
    by_width: bool = True,
) -> tuple[Tensor, list[LayerRoute]]:
    """Logits (N, R, W, V) float32 of every item under every policy (policies[0] = strong).

    One forward per group of equally wide policies (`width_groups`; `by_width=False`: one forward for
    all). With `record`, also each MoE layer's routing (LayerRoute, in layer order)."""
    n, width = enc.ids.shape
    r = len(policies)
    ctl = loaded.controller
    groups = width_groups(policies, ctl.default_k, ctl.num_experts) if by_width else [list(range(r))]
    logits: Tensor | None = None
    layers: list[list[tuple[list[int], Tensor, Tensor, Tensor]]] = []
    for group in groups:
        out, calls = _forward(loaded, enc, [policies[j] for j in group], record)
        out = out.float().view(n, len(group), width, -1)
        if logits is None:
            logits = out.new_empty(n, r, width, out.shape[-1])
        logits[:, group] = out
        for layer, (index, active, order) in enumerate(calls):
            if layer == len(layers):
                layers.append([])
            layers[layer].append((group, index.view(n, len(group), width, -1), active.view(n, len(group), width, -1),
                                  order.view(n, len(group), width, -1)[:, 0]))
    assert logits is not None
    routes = []
    for parts in layers:
        k = max(index.shape[-1] for _, index, _, _ in parts)
        index_all = parts[0][1].new_zeros(n, r, width, k)
        active_all = parts[0][2].new_zeros(n, r, width, k)
        for group, index, active, _ in parts:
            index_all[:, group, :, : index.shape[-1]] = index
            active_all[:, group, :, : active.shape[-1]] = active
        routes.append(LayerRoute(index_all, active_all, parts[0][3]))  # the first group starts with row 0, strong
    return logits, routes


@torch.inference_mode()
def separate_forwards(
    loaded: "LoadedModel", enc: Encoded, policies: Sequence["RoutingPolicy"]
) -> Tensor:
    """The naive reference: one forward per routing (same result as multi_routing_forward, R times the calls)."""
    outs = []
    for policy in policies:
        logits, _ = _forward(loaded, enc, [policy], record=False)
        outs.append(logits.float())
    return torch.stack(outs, dim=1)  # (N, R, W, V)


@torch.inference_mode()
def plain_forward(model: nn.Module, enc: Encoded) -> Tensor:
    """Logits (N, W, V) float32 of a model without routing control (the kld amateur)."""
    device = model.get_input_embeddings().weight.device
    mask = enc.mask.to(device)
    out = model(input_ids=enc.ids.to(device), attention_mask=mask, position_ids=_positions(mask), use_cache=False)
    return out.logits.float()


def kl_divergence(p_logits: Tensor, q_logits: Tensor) -> Tensor:
    """KL(p || q) = sum_v p_v (log p_v - log q_v) in nats, over the last dim, float32.

    p is the strong (top-2) distribution: "KLD against p_top-2" (paper Tab. 5), the direction
    torch's kl_div(log q, p) computes. Identical logits give exactly 0."""
    log_p = torch.log_softmax(p_logits.float(), dim=-1)
    log_q = torch.log_softmax(q_logits.float(), dim=-1)
    return (log_p.exp() * (log_p - log_q)).sum(dim=-1)
