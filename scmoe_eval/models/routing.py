"""Per-batch-row routing policies for MoE models, applied by forward hooks on the routers.

transformers passes no kwargs to the MoE block, so policies travel through a side channel: the
`RoutingController` holds one policy per batch row and a forward hook on every router replaces
its (index, weight) selection. Token t of a (B, S) call belongs to row t // S. Every policy is
computed for all tokens and picked per row with `torch.where`: vectorised, no host syncs.
All rows share one width K (the widest policy); narrower selections are padded with a duplicate
valid expert and weight 0, which adds exactly 0 in every experts implementation.

The hook runs once per MoE layer per decode step, and on a GPU at batch 1 each extra small
kernel there shows up in the step time. So the work that depends only on the policy list is done
once in `set()` and once per (device, tokens per row), and the router's own (index, weights)
stand in for a policy wherever the family adapter guarantees they are the same: `topk(own k)` is
stock routing, and rank(r <= own k) is column r-1 of the stock index. SCMoE's strong topk(2) /
weak rank(2) pair on Mixtral then costs two `torch.where` per layer and no score recomputation.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import torch
from torch import nn

from scmoe_eval.models.families import FamilyAdapter, RouterScores, detect_family

if TYPE_CHECKING:
    from scmoe_eval.config import RoutingConfig

KINDS = ("default", "topk", "rank", "topp", "random")


@dataclass(frozen=True)
class RoutingPolicy:
    """One routing rule. `k` is 1-based for `rank` (rank 1 = the top expert, weight 1, paper Eq.4)."""

    kind: str = "default"  # default | topk | rank | topp | random
    k: int = 2  # topk: experts kept; rank: which ranked expert; random: experts drawn
    p: float = 0.6  # topp: smallest prefix of experts whose cumulative mass exceeds p
    seed: int = 0  # random: generator seed

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"routing `kind` {self.kind!r} is unknown; valid: {', '.join(KINDS)}")

    @classmethod
    def from_config(cls, cfg: "RoutingConfig") -> "RoutingPolicy":
        return cls(kind=cfg.kind, k=int(cfg.k), p=float(cfg.p), seed=int(cfg.seed))

    @classmethod
    def default(cls) -> "RoutingPolicy":
        return cls()

    @classmethod
    def topk(cls, k: int) -> "RoutingPolicy":
        return cls(kind="topk", k=k)

    @classmethod
    def rank(cls, k: int) -> "RoutingPolicy":
        return cls(kind="rank", k=k)

    @classmethod
    def topp(cls, p: float) -> "RoutingPolicy":
        return cls(kind="topp", p=p)

    @classmethod
    def random(cls, k: int = 1, seed: int = 0) -> "RoutingPolicy":
        return cls(kind="random", k=k, seed=seed)

    def canonical(self) -> "RoutingPolicy":
        """The same policy with the fields its kind ignores reset, so equal rules compare equal."""
        base = RoutingPolicy()
        return replace(
            self,
            k=self.k if self.kind in ("topk", "rank", "random") else base.k,
            p=self.p if self.kind == "topp" else base.p,
            seed=self.seed if self.kind == "random" else base.seed,
        )

    def __str__(self) -> str:
        return {
            "default": "default",
            "topk": f"topk({self.k})",
            "rank": f"rank({self.k})",
            "topp": f"topp({self.p})",
            "random": f"random({self.k}, seed={self.seed})",
        }[self.kind]


@dataclass
class _State:
    """A per-row policy list as the hook uses it, built once by `set()`; device tensors are cached on it."""

    policies: tuple[RoutingPolicy, ...]  # one per batch row, as given
    unique: tuple[RoutingPolicy, ...]  # distinct effective policies, in order of first appearance
    from_stock: tuple[bool, ...]  # per `unique`: served from the router's own output, no scores needed
    width: int  # K shared by all rows
    row_policy: torch.Tensor  # (B,) int64 on CPU: index into `unique`
    _picks: dict[tuple[torch.device, int], list[torch.Tensor]] = field(default_factory=dict)
    _units: dict[tuple[torch.device, torch.dtype], torch.Tensor] = field(default_factory=dict)

    @property
    def stock(self) -> bool:
        """Every row routes exactly as the stock router: the hook leaves its output untouched."""
        return all(p.kind == "default" for p in self.unique)

    def picks(self, device: torch.device, tokens_per_row: int) -> list[torch.Tensor]:
        """(T, 1) bool per unique policy: the tokens it routes. Built on the first layer, reused by the rest."""
        key = (device, tokens_per_row)
        if key not in self._picks:
            if len(self._picks) >= 8:  # prefill lengths vary between calls; decode always has 1 token per row
                self._picks.clear()
            rows = self.row_policy.to(device, non_blocking=True)  # (B,)
            tokens = rows.repeat_interleave(tokens_per_row)[:, None]  # (T, 1): rows are the outer dim of T
            self._picks[key] = [tokens == j for j in range(len(self.unique))]
        return self._picks[key]

    def unit(self, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """(1, K) weights [1, 0, ..., 0]: a single expert at weight 1, its padding copies at 0."""
        def build() -> torch.Tensor:
            return torch.tensor([[1.0] + [0.0] * (self.width - 1)], dtype=dtype, device=device)

        if torch.compiler.is_compiling():  # a graph constant: a cache lookup here is guarded on, and recompiles
            return build()
        key = (device, dtype)
        if key not in self._units:
            self._units[key] = build()
        return self._units[key]


def _pad(index: torch.Tensor, weights: torch.Tensor, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(T, k) -> (T, width): extra slots repeat the first expert with weight 0 (never the sentinel E)."""
    extra = width - index.shape[1]
    if extra == 0:
        return index, weights
    index = torch.cat([index, index[:, :1].expand(-1, extra)], dim=1)
    weights = torch.cat([weights, weights.new_zeros(weights.shape[0], extra)], dim=1)
    return index, weights


class RoutingController:
    """Forward hooks on every router module; per-batch-row policies through a side channel."""

    def __init__(self, model: nn.Module, adapter: FamilyAdapter | None = None, reuse_stock: bool = True) -> None:
        """`reuse_stock=False` recomputes every non-default policy from the router logits (the
        reference the shortcuts are tested against; results are the same, only slower)."""
        self.adapter = adapter if adapter is not None else detect_family(model)
        self.routers = self.adapter.find_routers(model)
        if not self.routers:
            suffixes = "/".join(self.adapter.router_suffixes)
            raise ValueError(f"no {self.adapter.name} router modules ({suffixes}) found in the model")
        self.num_experts = self.adapter.num_experts(self.routers[0])
        self.default_k = self.adapter.default_k(self.routers[0])
        self.reuse_stock = reuse_stock
        self._state: _State | None = None
        self._states: dict[tuple[RoutingPolicy, ...], _State] = {}  # set() repeats lists (two-pass, every step)
        self._generators: dict[tuple[RoutingPolicy, torch.device], torch.Generator] = {}
        self._blocks = self.adapter.dispatch_blocks(model, self.routers)  # [] for native families
        self._handles = [r.register_forward_hook(self._hook) for r in self.routers]
        self._handles.append(model.register_forward_pre_hook(self._check_batch, with_kwargs=True))

    # ------------------------------------------------------------------ public API
    @property
    def policies(self) -> tuple[RoutingPolicy, ...] | None:
        """The per-row policies in force, or None for stock routing."""
        return None if self._state is None else self._state.policies

    def check(self, policy: RoutingPolicy) -> None:
        """Raise ValueError naming `k` or `p` when the policy cannot run on this model."""
        if policy.kind in ("topk", "rank", "random") and not 1 <= policy.k <= self.num_experts:
            raise ValueError(
                f"routing `k`={policy.k} is out of range for {policy.kind}: this model has "
                f"{self.num_experts} experts per layer (valid k: 1..{self.num_experts})"
            )
        if policy.kind == "topp" and not 0.0 < policy.p <= 1.0:
            raise ValueError(f"routing `p`={policy.p} is out of range for topp: valid p is in (0, 1]")

    def set(self, policies: Sequence[RoutingPolicy] | None) -> None:
        """One policy per batch row of the following model calls; None or all-default = stock, bit-exact."""
        if policies is None or all(p.kind == "default" for p in policies):
            self._activate(None)
            return
        policies = tuple(policies)
        state = self._states.get(policies)
        if state is None:
            for policy in policies:
                self.check(policy)
            state = self._build(policies)
            if len(self._states) >= 64:  # rows dropped during decoding leave one list per batch size
                self._states.clear()
            self._states[policies] = state
        self._activate(state)

    def prepare(self, device: torch.device, tokens_per_row: int = 1) -> None:
        """Build the policy in force's per-row picks now, outside any compiled graph: built inside one,
        the dict insert is traced in and the next call recompiles the graph once (decoding/static.py)."""
        if self._state is not None and not self._state.stock:
            self._state.picks(device, tokens_per_row)

    @contextmanager
    def use(self, policies: Sequence[RoutingPolicy] | None) -> Iterator["RoutingController"]:
        """`set(policies)` for the block, then restore whatever was in force before."""
        previous = self._state
        self.set(policies)
        try:
            yield self
        finally:
            self._activate(previous)

    def reset_random(self) -> None:
        """Restart every random policy's stream at its seed (streams otherwise continue across calls)."""
        self._generators = {}

    def remove(self) -> None:
        """Remove all hooks; the model routes exactly as stock transformers again."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._activate(None)
        self._states = {}

    # ------------------------------------------------------------------ internals
    def _activate(self, state: "_State | None") -> None:
        """Put `state` in force; blocks that size their dispatch by attribute follow its width."""
        self._state = state
        width = self.default_k if state is None or state.stock else state.width
        for block in self._blocks:
            block.num_experts_per_tok = width

    def _effective(self, policy: RoutingPolicy) -> RoutingPolicy:
        """Canonical policy; topk(own k) becomes `default` where the adapter guarantees they are equal."""
        policy = policy.canonical()
        if self.reuse_stock and self.adapter.topk_exact and policy.kind == "topk" and policy.k == self.default_k:
            return RoutingPolicy.default()
        return policy

    def _from_stock(self, policy: RoutingPolicy) -> bool:
        """Whether the router's own (index, weights) give this policy without recomputing scores."""
        if policy.kind == "default":
            return True
        ranked = self.reuse_stock and self.adapter.stock_ranked
        return ranked and policy.kind == "rank" and policy.k <= self.default_k

    def _build(self, policies: tuple[RoutingPolicy, ...]) -> _State:
        effective = [self._effective(p) for p in policies]
        unique = tuple(dict.fromkeys(effective))
        row_policy = torch.tensor([unique.index(p) for p in effective], dtype=torch.long)
        if torch.cuda.is_available():  # pinned, so the per-device copy in `_State.picks` is asynchronous
            row_policy = row_policy.pin_memory()
        return _State(
            policies=policies,
            unique=unique,
            from_stock=tuple(self._from_stock(p) for p in unique),
            width=max([self._width(p) for p in unique] + [self.adapter.min_width]),
            row_policy=row_policy,
        )

    def _width(self, policy: RoutingPolicy) -> int:
        return {
            "default": self.default_k,
            "topk": policy.k,
            "rank": 1,
            "topp": self.num_experts,  # data-dependent; fixed at E to avoid a host sync
            "random": policy.k,
        }[policy.kind]

    def _check_batch(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        """Refuse a model call whose batch size differs from the number of policies."""
        if self._state is None:
            return
        candidates = (kwargs.get("input_ids"), kwargs.get("inputs_embeds"), *args[:1])
        inputs = next((x for x in candidates if x is not None), None)
        if isinstance(inputs, torch.Tensor) and inputs.shape[0] != len(self._state.policies):
            raise ValueError(
                f"routing policies were set for {len(self._state.policies)} rows but the model got a batch of "
                f"{inputs.shape[0]}; call controller.set() with one policy per row"
            )

    def _generator(self, policy: RoutingPolicy, device: torch.device) -> torch.Generator:
        key = (policy, device)
        if key not in self._generators:
            self._generators[key] = torch.Generator(device=device).manual_seed(policy.seed)
        return self._generators[key]

    def _select(
        self, router: nn.Module, policy: RoutingPolicy, scores: RouterScores
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One policy for all tokens -> (index (T, k'), weights (T, k')); weights None = one expert at weight 1."""
        adapter, gates = self.adapter, scores.weights  # (T, E)
        if policy.kind == "rank":
            return scores.top(policy.k)[:, policy.k - 1 : policy.k], None  # (T, 1)
        if policy.kind == "topk":  # the family's own top-k call: same experts, same slot order
            index = scores.topk_key.topk(policy.k, dim=-1, sorted=adapter.topk_sorted).indices  # (T, k)
            return index, adapter.rescale(router, adapter.chosen_weights(router, scores, index, policy.k), index)
        if policy.kind == "topp":
            order = scores.order  # (T, E)
            sorted_gates = gates.gather(1, order)  # (T, E), best first
            mass = sorted_gates / sorted_gates.sum(dim=-1, keepdim=True)
            before = torch.cat([torch.zeros_like(mass[:, :1]), mass.cumsum(dim=-1)[:, :-1]], dim=1)  # (T, E)
            keep = before <= policy.p  # prefix up to the first expert that takes the mass past p
            index = torch.where(keep, order, order[:, :1])
            return index, self._finish(router, sorted_gates * keep, adapter.normalize_topk(router, self.num_experts), index)
        # random: k experts uniformly without replacement, per token per layer
        noise = torch.rand(gates.shape, generator=self._generator(policy, gates.device), device=gates.device)
        index = noise.argsort(dim=-1)[:, : policy.k]  # (T, k)
        if policy.k == 1:
            return index, None
        return index, adapter.rescale(router, adapter.chosen_weights(router, scores, index, policy.k), index)

    def _finish(self, router: nn.Module, weights: torch.Tensor, normalize: bool, index: torch.Tensor) -> torch.Tensor:
        """Renormalise (as the family does) and apply the family's routed scaling."""
        if normalize:
            weights = self.adapter.renormalize(router, weights)
        return self.adapter.rescale(router, weights, index)

    def _hook(self, router: nn.Module, args: tuple, output: Any) -> Any:
        state = self._state
        if state is None or state.stock:
            return None  # stock output untouched
        adapter = self.adapter
        stock_index, stock_weights = adapter.stock_selection(output)  # (T, k0)
        tokens, rows, width = stock_index.shape[0], len(state.policies), state.width
        if tokens % rows:
            raise ValueError(f"router saw {tokens} tokens, not a multiple of the {rows} policy rows")
        scores = None
        if not all(state.from_stock):
            scores = adapter.scores(router, adapter.router_logits(router, args, output))
        index = weights = None
        for j, policy in enumerate(state.unique):
            if policy.kind == "default":
                idx_j, w_j = stock_index, stock_weights
            elif state.from_stock[j]:  # rank(r <= own k): column r-1 of the router's own index
                idx_j, w_j = stock_index[:, policy.k - 1 : policy.k], None
            else:
                idx_j, w_j = self._select(router, policy, scores)
                w_j = None if w_j is None else w_j.to(stock_weights.dtype)
            if w_j is None:  # one expert: repeat it into every slot (a view), weights [1, 0, ...]
                idx_j, w_j = idx_j.expand(tokens, width), state.unit(stock_weights.device, stock_weights.dtype)
            else:
                idx_j, w_j = _pad(idx_j, w_j, width)
            if index is None:
                index, weights = idx_j, w_j
                continue
            pick = state.picks(stock_index.device, tokens // rows)[j]  # (T, 1)
            index, weights = torch.where(pick, idx_j, index), torch.where(pick, w_j, weights)
        index = index.expand(tokens, width).contiguous()  # no-ops unless one single-expert policy was alone
        weights = weights.expand(tokens, width).contiguous()
        return adapter.pack(output, index, weights)
