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
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from scmoe_eval.models.catalog import FAMILIES as CATALOG
from scmoe_eval.models.catalog import Family, RouterKind
from scmoe_eval.registry import Registry

FAMILIES: Registry[type["FamilyAdapter"]] = Registry("model family")


@dataclass(frozen=True)
class RouterScores:
    """What every policy needs from one router call. The full expert order costs a sort of all E
    experts per token, so it is built only when a policy needs it (`top(k)` for rank(k) does not).
    Not a functools.cached_property: its lock breaks a torch.compile graph at every router."""

    weights: torch.Tensor  # (T, E): gate value per expert before renormalisation / scaling
    topk_key: torch.Tensor  # (T, E): what the family's own torch.topk runs on (groups masked as it does)
    rank_key: torch.Tensor  # (T, E): the family ranks experts by this, highest first
    group_keep: torch.Tensor | None = None  # (T, E) bool: experts of the kept groups rank before all others
    logits: torch.Tensor | None = None  # (T, E): the router logits, for kinds that weight by a softmax over the chosen

    @property
    def order(self) -> torch.Tensor:
        """(T, E) int64: expert ids, best first, under the family's ranking."""
        if self.group_keep is None:
            return self.rank_key.sort(dim=-1, descending=True).indices
        return _order_in_groups(self.rank_key, self.group_keep)

    def top(self, k: int) -> torch.Tensor:
        """(T, k) int64: the k best experts, best first; a sorted top-k instead of a full sort when it can."""
        if self.group_keep is None:
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
    min_width: ClassVar[int] = 1  # fewest expert slots the family's MoE block accepts per token
    cache_class: ClassVar[str] = ""  # the family's own Cache class in its modeling module ("" = DynamicCache)

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

    def chosen_weights(self, router: nn.Module, scores: RouterScores, index: torch.Tensor, k: int) -> torch.Tensor:
        """(T, k) weights of the chosen experts before scaling: their gates, renormalised as the family does."""
        weights = scores.weights.gather(1, index)
        return self.renormalize(router, weights) if self.normalize_topk(router, k) else weights

    def renormalize(self, router: nn.Module, weights: torch.Tensor) -> torch.Tensor:
        return weights / (weights.sum(dim=-1, keepdim=True) + self.norm_eps)

    def rescale(self, router: nn.Module, weights: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """Routed weights times the family's scaling factor (scalar here; per expert for some kinds)."""
        scale = self.scale(router)
        return weights * scale if scale != 1.0 else weights

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


def _attr(obj: Any, path: str) -> Any:
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


class KindAdapter(FamilyAdapter):
    """A family declared in `catalog.py` by its router kind: the routing rule is data, not code.

    Every method mirrors the kind's router forward in transformers 5.24 op for op, so the default
    and topk(own k) checks of the census are bit-exact. Kinds whose selection bias is a forward
    argument (`bias="arg"`) read it from the call the hook sees (`router_logits` runs first).
    """

    family: ClassVar[Family]

    def __init__(self) -> None:
        self._bias_arg: torch.Tensor | None = None

    @property
    def router_suffixes(self) -> tuple[str, ...]:  # type: ignore[override]
        return self.family.router

    @property
    def topk_exact(self) -> bool:  # type: ignore[override]
        return self.family.topk_exact

    @property
    def min_width(self) -> int:  # type: ignore[override]
        return self.family.min_width

    @property
    def cache_class(self) -> str:  # type: ignore[override]
        return self.family.cache_class

    @property
    def stock_ranked(self) -> bool:  # type: ignore[override]
        kind = self._kinds()[0] if self.family.variants else self.family.kind
        return bool(self.family.topk_exact and kind.sorted and kind.groups is None)

    @property
    def topk_sorted(self) -> bool:  # type: ignore[override]
        return self._kinds()[0].sorted if self.family.variants else self.family.kind.sorted

    def _kinds(self) -> list[RouterKind]:
        return list(self.family.variants[1].values()) if self.family.variants else [self.family.kind]

    def kind(self, router: nn.Module) -> RouterKind:
        if self.family.variants:
            attr, kinds = self.family.variants
            return kinds[getattr(router, attr)]
        return self.family.kind

    def num_experts(self, router: nn.Module) -> int:
        return int(_attr(router, self.family.experts))

    def default_k(self, router: nn.Module) -> int:
        return int(_attr(router, self.family.top_k))

    def router_logits(self, router: nn.Module, args: tuple, output: Any) -> torch.Tensor:
        self._bias_arg = args[1] if len(args) > 1 else None
        return output[1] if self.kind(router).contract == "dense" else output[0]

    def stock_selection(self, output: Any) -> tuple[torch.Tensor, torch.Tensor]:
        if self.family.kind is not None and self.family.kind.contract == "dense":
            dense = output[0]  # (T, E): gate of the chosen experts, 0 elsewhere
            index = output[1].topk(self._dense_k, dim=-1).indices  # the router's own sorted top-k on logits
            return index, dense.gather(1, index)
        return output[2], output[1]

    def pack(self, output: Any, index: torch.Tensor, weights: torch.Tensor) -> Any:
        if self.family.kind is not None and self.family.kind.contract == "dense":
            dense = torch.zeros_like(output[0]).scatter_add_(1, index, weights.to(output[0].dtype))
            return dense, output[1]
        return output[0], weights, index

    def find_routers(self, model: nn.Module) -> list[nn.Module]:
        routers = super().find_routers(model)
        if routers and self.family.kind is not None and self.family.kind.contract == "dense":
            self._dense_k = self.default_k(routers[0])
        return routers

    def scores(self, router: nn.Module, logits: torch.Tensor) -> RouterScores:
        kind = self.kind(router)
        if kind.score == "softmax":
            gates = logits.softmax(dim=-1, dtype=torch.float32) if kind.fp32 else logits.softmax(dim=-1)
        elif kind.score == "sigmoid":
            gates = logits.float().sigmoid()
        elif kind.score == "fn":
            gates = router.score_fn(logits)
        else:  # "probs": the router's output 0 already is the softmax
            gates = logits
        key = logits if kind.select == "logits" else gates
        bias = self._bias(router, kind)
        if bias is not None:
            key = key + bias
        keep = None
        if kind.groups is not None and getattr(router, "num_group", None):
            T, E = key.shape
            grouped = key.view(T, router.num_group, E // router.num_group)
            if kind.groups == "top2":
                group_scores = grouped.topk(2, dim=-1).values.sum(dim=-1)
            else:
                group_scores = grouped.max(dim=-1).values
            keep = _group_keep(group_scores, router.topk_group, E)
        topk_key = key if keep is None else key.masked_fill(~keep, kind.group_fill)
        return RouterScores(weights=gates, topk_key=topk_key, rank_key=key, group_keep=keep, logits=logits)

    def _bias(self, router: nn.Module, kind: RouterKind) -> torch.Tensor | None:
        if kind.bias is None:
            return None
        if kind.bias == "arg":
            return self._bias_arg
        return _attr(router, kind.bias).squeeze()

    def chosen_weights(self, router: nn.Module, scores: RouterScores, index: torch.Tensor, k: int) -> torch.Tensor:
        kind = self.kind(router)
        if kind.weights == "softmax_chosen":  # top-k on the logits, then softmax over those k
            return scores.logits.gather(1, index).float().softmax(dim=-1)
        if kind.weights == "score_chosen":  # the score function on the gathered logits, as the router does
            weights = scores.logits.gather(1, index).float().sigmoid()
            return self.renormalize(router, weights) if self.normalize_topk(router, k) else weights
        return super().chosen_weights(router, scores, index, k)

    def normalize_topk(self, router: nn.Module, k: int) -> bool:
        normalize = self.kind(router).normalize
        return bool(getattr(router, normalize)) if isinstance(normalize, str) else normalize

    def renormalize(self, router: nn.Module, weights: torch.Tensor) -> torch.Tensor:
        kind = self.kind(router)
        total = weights.sum(dim=-1, keepdim=True)
        if kind.clamp is not None:
            return weights / total.clamp(min=_attr(router, kind.clamp))
        return weights / (total + kind.eps) if kind.eps else weights / total

    def scale(self, router: nn.Module) -> float:
        kind = self.kind(router)
        return float(_attr(router, kind.scale)) if kind.scale else 1.0

    def rescale(self, router: nn.Module, weights: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        kind = self.kind(router)
        weights = super().rescale(router, weights, index)
        if kind.expert_scale is not None:
            weights = weights * _attr(router, kind.expert_scale)[index]
        return weights


def _register_declared() -> None:
    """One `KindAdapter` subclass per supported catalog family that has no hand-written adapter."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES, model_type_to_module_name

    for family in CATALOG:
        if not family.supported or family.module in FAMILIES:
            continue
        types = tuple(t for t in CONFIG_MAPPING_NAMES if model_type_to_module_name(t) == family.module)
        cls = type(
            f"{family.module.title().replace('_', '')}Adapter",
            (KindAdapter,),
            {"name": family.module, "model_types": types or (family.module,), "family": family,
             "__doc__": f"{family.module}: router kind declared in catalog.py"},
        )
        FAMILIES.register(family.module)(cls)


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


_register_declared()
