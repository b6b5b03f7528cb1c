"""MoE family adapters: where a family's routers live and how it ranks and weights experts.

Routing policies (`routing.py`) are family-agnostic; they ask an adapter for
  * the router modules to hook,
  * the router logits, the stock (index, weight) selection, and how to repack a new one,
  * `RouterScores`: the family's expert order (best first, group limits applied; sorted only when
    a policy asks for it), the per-expert gate values the family multiplies the chosen experts
    with, and the tensor its own `torch.topk` runs on (so top-k reproduces the family's slot order,
    `sorted=False` included),
  * whether top-k renormalises, the epsilon it adds, and the routed scaling factor,
  * whether the router's own output can stand in for a policy (`topk_exact`, `stock_ranked`), which
    lets the routing hook skip recomputing scores on the SCMoE hot path.
Each adapter mirrors its transformers 5.24 router exactly, so `topk(model's own k)` reproduces
stock routing bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from scmoe_eval.registry import Registry

FAMILIES: Registry[type["FamilyAdapter"]] = Registry("model family")


@dataclass(frozen=True)
class RouterScores:
    """What every policy needs from one router call. The full expert order costs a sort of all E
    experts per token, so it is built only when a policy needs it (`top(k)` for rank(k) does not)."""

    weights: torch.Tensor  # (T, E): gate value per expert before renormalisation / scaling
    topk_key: torch.Tensor  # (T, E): what the family's own torch.topk runs on (groups masked as it does)
    rank_key: torch.Tensor  # (T, E): the family ranks experts by this, highest first
    group_keep: torch.Tensor | None = None  # (T, E) bool: experts of the kept groups rank before all others

    @cached_property
    def order(self) -> torch.Tensor:
        """(T, E) int64: expert ids, best first, under the family's ranking."""
        if self.group_keep is None:
            return self.rank_key.sort(dim=-1, descending=True).indices
        return _order_in_groups(self.rank_key, self.group_keep)

    def top(self, k: int) -> torch.Tensor:
        """(T, k) int64: the k best experts, best first; a sorted top-k instead of a full sort when it can."""
        if self.group_keep is None and "order" not in self.__dict__:
            return self.rank_key.topk(k, dim=-1, sorted=True).indices
        return self.order[:, :k]


class FamilyAdapter:
    """Native transformers 5.x router: forward(hidden) -> (logits (T,E), weights (T,K), index (T,K))."""

    name: ClassVar[str]
    model_types: ClassVar[tuple[str, ...]]
    router_suffixes: ClassVar[tuple[str, ...]] = ("TopKRouter", "TopkRouter")
    norm_eps: ClassVar[float] = 0.0  # added to the top-k sum before dividing, as the family does
    topk_sorted: ClassVar[bool] = True  # the `sorted=` flag of the family's torch.topk call
    # topk(own k) is bit-exact with the router's output (tests/test_routing.py checks every native family),
    # so the hook may keep the router's output for it instead of recomputing.
    topk_exact: ClassVar[bool] = True
    # The router's index columns are its first k experts in the family's order, best first, so rank(r)
    # for r <= own k is column r-1 (a sorted torch.topk on the ranking key, with no expert groups).
    stock_ranked: ClassVar[bool] = True

    def find_routers(self, model: nn.Module) -> list[nn.Module]:
        return [m for m in model.modules() if type(m).__name__.endswith(self.router_suffixes)]

    def num_experts(self, router: nn.Module) -> int:
        return int(router.num_experts)

    def default_k(self, router: nn.Module) -> int:
        return int(router.top_k)

    def router_logits(self, router: nn.Module, args: tuple, output: Any) -> torch.Tensor:
        return output[0]  # (T, E)

    def stock_selection(self, output: Any) -> tuple[torch.Tensor, torch.Tensor]:
        return output[2], output[1]  # index (T, K), weights (T, K)

    def pack(self, output: Any, index: torch.Tensor, weights: torch.Tensor) -> Any:
        return output[0], weights, index

    def scores(self, router: nn.Module, logits: torch.Tensor) -> RouterScores:
        probs = F.softmax(logits, dtype=torch.float32, dim=-1)  # (T, E)
        return RouterScores(weights=probs, topk_key=probs, rank_key=probs)

    def normalize_topk(self, router: nn.Module, k: int) -> bool:
        return bool(getattr(router, "norm_topk_prob", True))

    def scale(self, router: nn.Module) -> float:
        return 1.0

    def dispatch_blocks(self, model: nn.Module, routers: list[nn.Module]) -> list[nn.Module]:
        """MoE blocks that size their expert dispatch from an attribute instead of the router's output
        width; the controller keeps that attribute equal to the width it returns. None natively."""
        return []

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


@FAMILIES.register("mixtral")
class MixtralAdapter(FamilyAdapter):
    """softmax over all experts, top-k, always renormalised (weights stay fp32)."""

    name = "mixtral"
    model_types = ("mixtral",)

    def normalize_topk(self, router: nn.Module, k: int) -> bool:
        return True


@FAMILIES.register("qwen2_moe")
class Qwen2MoeAdapter(FamilyAdapter):
    """softmax, top-k, renormalised only with `norm_topk_prob`; the shared expert sits outside the router."""

    name = "qwen2_moe"
    model_types = ("qwen2_moe",)


@FAMILIES.register("qwen3_moe")
class Qwen3MoeAdapter(FamilyAdapter):
    name = "qwen3_moe"
    model_types = ("qwen3_moe",)


@FAMILIES.register("olmoe")
class OlmoeAdapter(FamilyAdapter):
    name = "olmoe"
    model_types = ("olmoe",)


def _order_in_groups(choice: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Experts sorted by `choice`, those in kept groups first (a stable two-key sort, no sentinels)."""
    by_score = choice.sort(dim=-1, descending=True, stable=True).indices  # (T, E)
    kept_first = keep.gather(1, by_score).to(torch.int8).sort(dim=-1, descending=True, stable=True).indices
    return by_score.gather(1, kept_first)  # (T, E)


def _group_keep(group_scores: torch.Tensor, topk_group: int, num_experts: int) -> torch.Tensor:
    """(T, G) group scores -> (T, E) bool mask of experts in the `topk_group` best groups."""
    T, G = group_scores.shape
    chosen = group_scores.topk(topk_group, dim=-1).indices  # (T, topk_group)
    keep = torch.zeros_like(group_scores, dtype=torch.bool).scatter_(1, chosen, True)  # (T, G)
    return keep[:, :, None].expand(T, G, num_experts // G).reshape(T, num_experts)


@FAMILIES.register("deepseek_v2")
class DeepseekV2Adapter(FamilyAdapter):
    """softmax (fp32); optional group-limited greedy; never renormalised; x routed_scaling_factor."""

    name = "deepseek_v2"
    model_types = ("deepseek_v2",)
    topk_sorted = False
    stock_ranked = False  # topk(sorted=False): index columns are not best first

    def scores(self, router: nn.Module, logits: torch.Tensor) -> RouterScores:
        probs = logits.softmax(dim=-1, dtype=torch.float32)  # (T, E)
        if router.topk_method != "group_limited_greedy":
            return RouterScores(weights=probs, topk_key=probs, rank_key=probs)
        T, E = probs.shape
        group_scores = probs.view(T, router.num_group, E // router.num_group).max(dim=-1).values
        keep = _group_keep(group_scores, router.topk_group, E)
        return RouterScores(weights=probs, topk_key=probs.masked_fill(~keep, 0.0), rank_key=probs, group_keep=keep)

    def normalize_topk(self, router: nn.Module, k: int) -> bool:
        return False  # HF DeepseekV2TopkRouter ignores config.norm_topk_prob

    def scale(self, router: nn.Module) -> float:
        return float(router.routed_scaling_factor)


@FAMILIES.register("deepseek_v3")
class DeepseekV3Adapter(FamilyAdapter):
    """sigmoid gates; rank by sigmoid + e_score_correction_bias inside the `topk_group` best groups
    (group score = sum of its top-2); weight by the unbiased sigmoid; x routed_scaling_factor."""

    name = "deepseek_v3"
    model_types = ("deepseek_v3",)
    norm_eps = 1e-20
    topk_sorted = False
    stock_ranked = False  # topk(sorted=False): index columns are not best first

    def scores(self, router: nn.Module, logits: torch.Tensor) -> RouterScores:
        gates = logits.sigmoid()  # (T, E) fp32
        choice = gates + router.e_score_correction_bias  # (T, E)
        T, E = choice.shape
        group_scores = choice.view(T, router.num_group, E // router.num_group).topk(2, dim=-1).values.sum(dim=-1)
        keep = _group_keep(group_scores, router.topk_group, E)
        return RouterScores(
            weights=gates, topk_key=choice.masked_fill(~keep, float("-inf")), rank_key=choice, group_keep=keep
        )

    def scale(self, router: nn.Module) -> float:
        return float(router.routed_scaling_factor)


@FAMILIES.register("deepseek")
class DeepseekMoeAdapter(FamilyAdapter):
    """DeepSeekMoE-16B remote code (model_type "deepseek", written for transformers 4.x).

    Its `MoEGate.forward(hidden (B,S,H))` returns (topk_idx (T,K), topk_weight (T,K), aux_loss):
    softmax in the model dtype over the routed experts, top-k, renormalised only when
    `top_k > 1 and norm_topk_prob` (false for DeepSeekMoE-16B). Shared experts and the dense first
    layer live outside the gate. The gate does not return its logits, so the hook recomputes them
    with the gate's own weight (the same op, hence the same values).
    The enclosing `DeepseekMoE` block maps flattened slot s to token s // `num_experts_per_tok` (its
    config K, not the gate's output width), so that attribute must follow the width the hook returns.
    """

    name = "deepseek"
    model_types = ("deepseek",)
    router_suffixes = ("MoEGate",)
    norm_eps = 1e-20
    topk_sorted = False
    topk_exact = False  # only checked against a stand-in gate, not the real remote code: always recompute
    stock_ranked = False

    def num_experts(self, router: nn.Module) -> int:
        return int(router.n_routed_experts)

    def router_logits(self, router: nn.Module, args: tuple, output: Any) -> torch.Tensor:
        hidden = args[0]  # (B, S, H)
        return F.linear(hidden.reshape(-1, hidden.shape[-1]), router.weight)  # (T, E)

    def stock_selection(self, output: Any) -> tuple[torch.Tensor, torch.Tensor]:
        return output[0], output[1]

    def pack(self, output: Any, index: torch.Tensor, weights: torch.Tensor) -> Any:
        return index, weights, output[2]

    def scores(self, router: nn.Module, logits: torch.Tensor) -> RouterScores:
        if getattr(router, "scoring_func", "softmax") != "softmax":
            raise ValueError(f"MoEGate scoring_func {router.scoring_func!r} is not supported (only softmax)")
        probs = logits.softmax(dim=-1)  # (T, E) in the model dtype, as the remote code does
        return RouterScores(weights=probs, topk_key=probs, rank_key=probs)

    def normalize_topk(self, router: nn.Module, k: int) -> bool:
        return k > 1 and bool(router.norm_topk_prob)

    def dispatch_blocks(self, model: nn.Module, routers: list[nn.Module]) -> list[nn.Module]:
        gates = {id(r) for r in routers}
        return [
            m for m in model.modules()
            if hasattr(m, "num_experts_per_tok") and any(id(c) in gates for c in m.children())
        ]


def supported_families() -> str:
    """Human-readable list for error messages."""
    return ", ".join(f"{n} (model_type {'/'.join(FAMILIES.get(n).model_types)})" for n in FAMILIES)


def detect_family(model_or_config: Any) -> FamilyAdapter:
    """Adapter for a model or config, chosen by `config.model_type`."""
    config = getattr(model_or_config, "config", model_or_config)
    model_type = getattr(config, "model_type", None)
    for name in FAMILIES:
        adapter_cls = FAMILIES.get(name)
        if model_type in adapter_cls.model_types:
            return adapter_cls()
    raise ValueError(
        f"model_type {model_type!r} has no supported MoE layers (routing control needs a known MoE router); "
        f"supported families: {supported_families()}"
    )
