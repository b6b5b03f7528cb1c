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
