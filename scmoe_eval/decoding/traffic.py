"""Weight traffic of decode steps: which experts each routing touches, and the bytes that implies.

A decode step at small batch is bound by the weights it reads. Greedy reads the shared weights
(attention, norms, routers, LM head) plus the experts its rows route to; batched SCMoE's weak rows
add only the experts the strong rows did not already read, and their own KV cache. `TrafficCounter`
records, per decode step and MoE layer, the distinct experts of the strong rows, the weak rows and
their union (routed = non-zero weight; `padded` also counts zero-weight padding slots), and the
(token, slot) pairs an implementation that computes every slot runs. `floor_ratio` turns two
counted runs into the bytes ratio the SCMoE/greedy time ratio is measured against.

It counts with forward pre-hooks on the experts modules (`(hidden, top_k_index, top_k_weights)`,
transformers 5.x) and on the model (rows and KV length); it changes nothing the model computes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from torch import nn


def experts_modules(model: nn.Module) -> list[nn.Module]:
    """The stacked-experts modules (3-d `gate_up_proj` and `down_proj`), in layer order."""
    out = []
    for module in model.modules():
        gate_up, down = getattr(module, "gate_up_proj", None), getattr(module, "down_proj", None)
        if isinstance(gate_up, torch.Tensor) and isinstance(down, torch.Tensor) and gate_up.dim() == 3:
            out.append(module)
    return out


def expert_bytes(module: nn.Module) -> int:
    """Bytes of one expert's weights (gate/up + down, biases included)."""
    total = 0
    for name in ("gate_up_proj", "up_proj", "down_proj", "gate_up_proj_bias", "up_proj_bias", "down_proj_bias"):
        t = getattr(module, name, None)
        if isinstance(t, torch.Tensor):
            total += t[0].numel() * t.element_size()
    return total


def shared_bytes(model: nn.Module) -> int:
    """Bytes of the weights every decode step reads in full: all but the stacked experts and the input
    embedding table (a lookup reads only the fed rows; a tied LM head is counted once, as the head)."""
    experts = {id(p) for m in experts_modules(model) for p in m.parameters(recurse=False)}
    embed = model.get_input_embeddings().weight
    head = model.get_output_embeddings()
    tied = head is not None and head.weight is embed
    total = 0
    for p in model.parameters():  # parameters() yields a tied tensor once
        if id(p) in experts or (p is embed and not tied):
            continue
        total += p.numel() * p.element_size()
    return total


def kv_bytes_per_position(config: Any, dtype_bytes: int) -> int:
    """Keys + values of one position over all layers (full attention)."""
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    return 2 * config.num_hidden_layers * kv_heads * head_dim * dtype_bytes


@dataclass
class StepCounts:
    """Sums over the MoE layers of one decode step."""

    rows: int
    kv_positions: int  # cached positions read by all rows (incl. the fed one)
    strong: int = 0  # distinct experts with a non-zero weight in the strong (or only) rows
    weak: int = 0
    union: int = 0
    union_padded: int = 0  # distinct experts named by any slot, zero-weight padding included
    slots: int = 0  # (token, slot) pairs: rows of expert matmuls when every slot is computed
    routed_slots: int = 0  # (token, slot) pairs with a non-zero weight


@dataclass
class TrafficCounter:
    """Counts decode steps of `model` while installed (`with TrafficCounter(model, roles) as t:`).

    `roles[r]` is "strong" or "weak" for row r of the forward, repeated over the batch (greedy:
    ["strong"]; batched SCMoE: ["strong", "weak"]). Prefill forwards (more than one token per row) are skipped.
    """

    model: nn.Module
    roles: Sequence[str] = ("strong",)
    steps: list[StepCounts] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._experts = experts_modules(self.model)
        if not self._experts:
            raise ValueError("no stacked experts modules (gate_up_proj / down_proj) in the model")
        self._handles: list[Any] = []
        self._current: StepCounts | None = None

    def __enter__(self) -> "TrafficCounter":
        self._handles.append(self.model.register_forward_pre_hook(self._on_model, with_kwargs=True))
        self._handles += [m.register_forward_pre_hook(self._on_experts) for m in self._experts]
        return self

    def __exit__(self, *exc: Any) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def _on_model(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        self._current = None
        if ids is None or ids.shape[1] != 1:
            return  # prefill
        mask = kwargs.get("attention_mask")
        positions = int(mask.shape[1]) if mask is not None else 0
        self._current = StepCounts(rows=int(ids.shape[0]), kv_positions=positions * int(ids.shape[0]))
        self.steps.append(self._current)

    def _on_experts(self, module: nn.Module, args: tuple) -> None:
        step = self._current
        if step is None or len(args) < 3:
            return
        index, weights = args[1].tolist(), args[2].tolist()  # (T, K) each
        period = len(self.roles)
        routed: dict[str, set[int]] = {"strong": set(), "weak": set()}
        padded: set[int] = set()
        for token, (experts, ws) in enumerate(zip(index, weights)):
            role = self.roles[token % period]
            padded.update(experts)
            step.slots += len(experts)
            for e, w in zip(experts, ws):
                if w != 0:
                    routed[role].add(e)
                    step.routed_slots += 1
        step.strong += len(routed["strong"])
        step.weak += len(routed["weak"])
        step.union += len(routed["strong"] | routed["weak"])
        step.union_padded += len(padded)

    def summary(self) -> dict[str, float]:
        """Means per decode step, and the bytes read per step at the floor (each weight read once)."""
        n = len(self.steps)
        if n == 0:
            raise ValueError("no decode step was counted")
        mean = {k: sum(getattr(s, k) for s in self.steps) / n
                for k in ("rows", "kv_positions", "strong", "weak", "union", "union_padded", "slots", "routed_slots")}
        param = next(self.model.parameters())
        e_bytes = expert_bytes(self._experts[0])
        shared = shared_bytes(self.model)
        kv = kv_bytes_per_position(self.model.config, param.element_size())
        layers = len(self._experts)
        mean.update(
            layers=layers,
            expert_bytes=e_bytes,
            shared_bytes=shared,
            kv_bytes=mean["kv_positions"] * kv,
            floor_bytes=shared + mean["union"] * e_bytes + mean["kv_positions"] * kv,
            all_slots_bytes=shared + mean["slots"] * e_bytes + mean["kv_positions"] * kv,
            weak_extra_per_layer=(mean["union"] - mean["strong"]) / layers,  # experts only the weak rows read
        )
        return mean


def floor_ratio(scmoe: dict[str, float], greedy: dict[str, float]) -> float:
    """Bytes per step of batched SCMoE over greedy's, each weight read once: the time ratio's floor."""
    return scmoe["floor_bytes"] / greedy["floor_bytes"]
