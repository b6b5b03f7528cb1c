"""`dense_hit`: an experts implementation for decode steps with few tokens, registered with transformers.

A batch-1 SCMoE step has 2 tokens (strong and weak row) and 4 expert slots per MoE layer. transformers'
`batched_mm` copies one expert's weights per slot before its batched matmul (4 copies of 352 MB per
layer on Mixtral-8x7B in bf16, against greedy's 2), `grouped_mm` sorts slots into groups, and `eager`
waits on the host once per expert. Here every expert that any token of the step routes to is read
once, straight from the stacked weights (a view, no copy), and run on all T tokens of the step; each
token weighs its output by its routing weight for that expert, 0 where it did not choose it. For
T <= a few tokens the extra matmul columns are free and the weights read are the cost: at most 3
experts per layer for batch-1 SCMoE, 2 for greedy. Cost: one host sync per layer (which experts).
Prefill keeps the model's own implementation (`DecodeEngine._decode_kernels` switches decode only).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers.integrations.moe import ExpertsInterface, batched_mm_experts_forward

NAME = "dense_hit"


def dense_hit_experts_forward(
    self: torch.nn.Module, hidden_states: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor
) -> torch.Tensor:
    """hidden_states (T, H), top_k_index / top_k_weights (T, K) -> (T, H) in the input dtype."""
    if self.has_bias or self.is_transposed or self.has_post_expert_norm or not self.has_gate or self._is_expert_parallel:
        return batched_mm_experts_forward(self, hidden_states, top_k_index, top_k_weights)  # layouts not covered here
    device = hidden_states.device
    hit = torch.zeros(self.num_experts, dtype=torch.bool, device=device)  # (E,): fixed size, built without a sync
    hit.index_fill_(0, top_k_index.reshape(-1), True)
    out = torch.zeros(hidden_states.shape, dtype=torch.float32, device=device)  # (T, H)
    for expert in [e for e, was_hit in enumerate(hit.tolist()) if was_hit]:  # the one host sync
        weight = (top_k_weights * (top_k_index == expert)).sum(dim=-1, keepdim=True)  # (T, 1), 0 = not routed
        gate_up = F.linear(hidden_states, self.gate_up_proj[expert])  # (T, 2I)
        y = F.linear(self._apply_gate(gate_up), self.down_proj[expert])  # (T, H)
        out.add_(y.float() * weight.float())
    return out.to(hidden_states.dtype)


ExpertsInterface.register(NAME, dense_hit_experts_forward)


ROUTED = "routed_rows"
TALL = 4  # weights with >= TALL times more rows than columns: W @ x.T streams them once for all rows


def _few_rows_linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x @ weight.T; for 2+ rows and a tall weight as weight @ x.T, which MKL (CPU, fp32) runs in one
    pass over the weight where x @ weight.T takes about one pass per row (docs/decode-cost.md)."""
    if x.shape[0] >= 2 and x.device.type == "cpu" and weight.shape[0] >= TALL * weight.shape[1]:
        return torch.mm(weight, x.T).T
    return F.linear(x, weight)


def routed_rows_experts_forward(
    self: torch.nn.Module, hidden_states: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor
) -> torch.Tensor:
    """Each hit expert runs only on the tokens that route to it with a non-zero weight.

    On CPU (fp32, MKL) a small matmul costs about one weight pass per row, so the zero-weight padding
    slots of a single-expert policy (SCMoE's weak rank(2) row: [e, e] with weights [1, 0]) are real
    cost under `grouped_mm` (an extra row in e's group). Here they are skipped. Output per token is
    the same sum of weight * expert(x) (a zero-weight slot adds exactly 0 elsewhere). One host sync
    per layer, free on CPU.
    """
    if self.has_bias or self.is_transposed or self.has_post_expert_norm or not self.has_gate or self._is_expert_parallel:
        return batched_mm_experts_forward(self, hidden_states, top_k_index, top_k_weights)
    by_expert: dict[int, list[tuple[int, int]]] = {}
    for token, (experts, weights) in enumerate(zip(top_k_index.tolist(), top_k_weights.tolist())):  # the host sync
        for slot, (expert, weight) in enumerate(zip(experts, weights)):
            if weight != 0:  # zero-weight (padding) slots never run
                by_expert.setdefault(expert, []).append((token, slot))
    out = torch.zeros(hidden_states.shape, dtype=torch.float32, device=hidden_states.device)  # (T, H)
    for expert, pairs in sorted(by_expert.items()):
        if len(pairs) == 1:  # one token: slices (views), no index tensors
            (token, slot), rows = pairs[0], slice(pairs[0][0], pairs[0][0] + 1)
            x, weight = hidden_states[rows], top_k_weights[rows, slot : slot + 1]  # (1, H), (1, 1)
        else:
            tokens = torch.tensor([t for t, _ in pairs], device=hidden_states.device)
            slots = torch.tensor([s for _, s in pairs], device=hidden_states.device)
            x, weight, rows = hidden_states[tokens], top_k_weights[tokens, slots][:, None], tokens  # (M, H), (M, 1)
        y = F.linear(self._apply_gate(_few_rows_linear(x, self.gate_up_proj[expert])), self.down_proj[expert])  # (M, H)
        y = y.float() * weight.float()
        if isinstance(rows, slice):
            out[rows].add_(y)
        else:
            out.index_add_(0, rows, y)
    return out.to(hidden_states.dtype)


ExpertsInterface.register(ROUTED, routed_rows_experts_forward)
