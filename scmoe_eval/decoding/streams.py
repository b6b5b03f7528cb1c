"""Streams and scorers: what the decode loop drives, in a module of its own so the import graph is a tree
(engine -> streams <- baselines; strategies -> engine, baselines).

A `Stream` is one model's KV cache, mask and positions over left-padded rows; a *scorer* turns the
fed tokens into (N, V) next-token scores:
- `PlainScorer`: one forward per step, every row under one routing policy (None = stock).
- `PairedScorer` (SCMoE, batched): prompt i occupies rows (2i, 2i+1) = (strong, weak) of ONE forward
  and ONE KV cache, so the weak prefill runs under weak routing too, as in the paper's code.
- `TwoStreamScorer` (SCMoE two-pass, also contrastive decoding): two forwards per step, each with its own cache.
Scorers also `select` rows (drop finished ones, fan a prompt out to samples) and `extend` by another
scorer's rows (continuous batching admits prefilled prompts into the running batch; the joined cache
moves into `RoomyLayer`s, whose decode steps write in place).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Optional, Protocol, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from transformers import DynamicCache
from transformers.cache_utils import Cache, DynamicLayer

from scmoe_eval.decoding.scmoe import scmoe_logits

if TYPE_CHECKING:
    from scmoe_eval.models.routing import RoutingController, RoutingPolicy

Policy = Optional["RoutingPolicy"]  # None = the model's stock routing


@dataclass(frozen=True)
class Contrast:
    """SCMoE settings: strong and weak routing of the same model, plausibility alpha, contrast beta."""

    strong: "RoutingPolicy"
    weak: "RoutingPolicy"
    alpha: float = 0.1
    beta: float = 0.5


Hidden = Optional[list[int]]  # hidden_states indices a forward returns (0 = embeddings, -1 = final normed)


class Stream:
    """One model's KV cache, attention mask and next positions over left-padded rows.

    Rows run under fixed routing policies (one per row; None = stock) set on `controller` before
    each forward; a model without routing hooks (a CD amateur) passes `controller=None`. prefill and
    step return the whole model output (hidden states only for the `hidden` indices asked for);
    `logits(out)` gives the last position's float32 logits on `out_device` (default: the model's).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        controller: "RoutingController | None" = None,
        policies: Sequence["RoutingPolicy"] | None = None,
        out_device: torch.device | None = None,
    ) -> None:
        self.model = model
        self.controller = controller
        self.policies = None if policies is None else tuple(policies)  # one per row; None = stock for all rows
        self.device = model.get_input_embeddings().weight.device
        self.out_device = out_device if out_device is not None else self.device
        self.cache = new_cache(model, controller)
        self.mask: Tensor | None = None  # (R, T) 1 = real token
        self.next_pos: Tensor | None = None  # (R, 1)

    def _route(self) -> None:
        if self.controller is None:
            return
        current = self.controller.policies
        if current is not self.policies:
            if current != self.policies:  # re-set only on change (two-pass alternates, rows get dropped)
                self.controller.set(self.policies)
            self.policies = self.controller.policies  # the controller's equal tuple: later steps test identity only

    def _forward(self, ids: Tensor, pos: Tensor, hidden: Hidden, call: Callable[..., Any] | None = None) -> Any:
        """One model call (`call`: the same model compiled, decoding/static.py)."""
        self._route()
        return (call or self.model)(
            input_ids=ids,
            attention_mask=self.mask,
            position_ids=pos,
            cache=self.cache,
            use_cache=True,
            logits_to_keep=1,
            output_hidden_states=hidden or False,  # a list keeps only those layers (transformers 5.x)
        )

    def prefill(self, ids: Tensor, mask: Tensor, hidden: Hidden = None) -> Any:
        """ids, mask (R, L) left-padded -> model output (last-position logits; hidden states for all L)."""
        self.mask = mask.to(self.device)
        pos = (self.mask.cumsum(-1) - 1).clamp(min=0)  # (R, L): padding does not shift positions
        self.next_pos = pos[:, -1:] + 1
        out = self._forward(ids.to(self.device), pos, hidden)
        if self.cache.get_seq_length() == 0:  # an older transformers swallows `cache=` silently
            raise RuntimeError("the model did not fill the KV cache passed as `cache=`; use transformers >= 5.24")
        return out

    def step(self, tokens: Tensor, hidden: Hidden = None) -> Any:
        """tokens (R,) -> model output for the fed token."""
        self.mask = torch.cat([self.mask, self.mask.new_ones(self.mask.shape[0], 1)], dim=1)
        pos = self.next_pos
        self.next_pos = pos + 1
        return self._forward(tokens[:, None].to(self.device), pos, hidden)

    def logits(self, out: Any) -> Tensor:
        return out.logits[:, -1].float().to(self.out_device)  # (R, V); lm_head may sit on another GPU

    def select(self, rows: Tensor) -> None:
        """Keep only `rows` (indices into the current rows, repeats allowed) in the batch and the cache."""
        rows = rows.to(self.device)
        select_rows(self.cache, rows)
        self.mask = self.mask[rows]
        self.next_pos = self.next_pos[rows]
        if self.policies is not None:
            self.policies = tuple(self.policies[r] for r in rows.tolist())

    def extend(self, other: "Stream", rows: Tensor | None = None) -> None:
        """Append `other`'s rows (all, or those indexed by `rows`; same model; e.g. freshly prefilled
        prompts) to this batch and cache, which moves into RoomyLayers (in-place decode steps).

        The shorter of the two is left-padded (mask 0, zero keys and values) to the longer length;
        positions travel per row, so padding shifts nothing.
        """
        if other.model is not self.model:
            raise ValueError("streams of different models cannot share a batch")
        for cache in (self.cache, other.cache):
            refuse_unjoinable(cache)
        pick: Any = slice(None) if rows is None else rows.to(self.device)
        width = max(self.mask.shape[1], other.mask.shape[1])
        for i, (mine, theirs) in enumerate(zip(self.cache.layers, other.cache.layers)):
            joined = RoomyLayer()
            joined.lazy_initialization(mine.keys, mine.values)
            joined.keys = torch.cat([_pad_left(mine.keys, width, -2), _pad_left(theirs.keys[pick], width, -2)])
            joined.values = torch.cat([_pad_left(mine.values, width, -2), _pad_left(theirs.values[pick], width, -2)])
            self.cache.layers[i] = joined
        self.mask = torch.cat([_pad_left(self.mask, width, -1), _pad_left(other.mask[pick], width, -1)])
        self.next_pos = torch.cat([self.next_pos, other.next_pos[pick]])
        if (self.policies is None) != (other.policies is None):
            raise ValueError("one stream is stock-routed and the other is not")
        if self.policies is not None:
            joining = other.policies if rows is None else tuple(other.policies[r] for r in rows.tolist())
            self.policies = self.policies + joining

    def trim_left(self) -> None:
        """Drop leading positions that are padding in every row (left behind by rows that finished)."""
        refuse_unjoinable(self.cache)
        first = int(self.mask.any(dim=0).int().argmax())  # the one host sync
        if first == 0:
            return
        self.mask = self.mask[:, first:]
        for layer in self.cache.layers:
            layer.keys, layer.values = layer.keys[..., first:, :], layer.values[..., first:, :]

    def repeat(self, k: int) -> None:
        """Row r becomes rows r*k .. r*k+k-1 (same cache, mask and positions)."""
        select_rows(self.cache, torch.arange(self.mask.shape[0], device=self.device).repeat_interleave(k))
        self.mask = self.mask.repeat_interleave(k, 0)
        self.next_pos = self.next_pos.repeat_interleave(k, 0)
        if self.policies is not None:
            self.policies = tuple(p for p in self.policies for _ in range(k))


ROOM = 64  # spare columns a RoomyLayer adds when it grows: one whole-layer copy per 64 tokens, <= 64 columns idle


class _Roomy:
    """A layer's keys (or values): a view of the first columns of a buffer that may have spare columns on the
    right. Assigning a tensor (row selection, trimming, extend) makes it the buffer, with no room yet."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.slot = "_" + name

    def __get__(self, layer: Any, owner: type | None = None) -> Any:
        return self if layer is None else getattr(layer, self.slot)[0]

    def __set__(self, layer: Any, tensor: Tensor | None) -> None:
        setattr(layer, self.slot, (tensor, tensor))  # (view, buffer)


class RoomyLayer(DynamicLayer):
    """A DynamicLayer whose decode steps write the new token into spare columns in place, where
    DynamicLayer copies the whole layer (torch.cat: rows x length per step, the most in the full, wide
    batches of continuous batching). The values equal DynamicLayer's; only where they are stored differs."""

    keys = _Roomy()
    values = _Roomy()

    def update(self, key_states: Tensor, value_states: Tensor, *args: Any, **kwargs: Any) -> tuple[Tensor, Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        return self._append("_keys", key_states), self._append("_values", value_states)

    def _append(self, slot: str, new: Tensor) -> Tensor:
        """Write `new` (R, H, q, D) after the view's columns, moving into a buffer with ROOM spare columns
        when there is none. A fixed room, not a fraction of the length: a proportional one would hold a
        quarter of a long cache idle (GiBs at maj@20 on Mixtral), and one copy per 64 tokens is already
        64x fewer than DynamicLayer's copy per token."""
        view, buffer = getattr(self, slot)
        length, q = (view.shape[-2] if view.dim() == 4 else 0), new.shape[-2]
        if buffer.dim() != 4 or buffer.shape[-2] < length + q:
            buffer = new.new_empty(*new.shape[:-2], length + q + ROOM, new.shape[-1])
            if length:
                buffer[..., :length, :] = view
        buffer[..., length : length + q, :] = new
        view = buffer[..., : length + q, :]
        setattr(self, slot, (view, buffer))
        return view


def new_cache(model: torch.nn.Module, controller: "RoutingController | None" = None) -> DynamicCache:
    """The decode cache for `model`: transformers' DynamicCache, or the family's own class where its model
    refuses DynamicCache (`FamilyAdapter.cache_class`, e.g. MiniMaxCache; built without arguments, as the
    model itself builds it). Full-attention layers become RoomyLayers either way."""
    name = getattr(getattr(controller, "adapter", None), "cache_class", "")
    if not name:
        return roomy_cache(model.config)
    return _roomy(getattr(importlib.import_module(type(model).__module__), name)())


def roomy_cache(config: Any) -> DynamicCache:
    """transformers' DynamicCache for `config`, its full-attention layers RoomyLayers (in-place decode
    steps); sliding-window, linear-attention and SSM layers stay the family's own."""
    return _roomy(DynamicCache(config=config))


def _roomy(cache: DynamicCache) -> DynamicCache:
    cache.layers = [RoomyLayer() if type(layer) is DynamicLayer else layer for layer in cache.layers]
    if getattr(cache, "layer_class_to_replicate", None) is DynamicLayer:  # layers created lazily
        cache.layer_class_to_replicate = RoomyLayer
    return cache


def select_rows(cache: Cache, rows: Tensor) -> None:
    """Keep `rows` (repeats allowed) of every layer: KV and the linear-attention / SSM states, which
    `batch_select_indices` misses on transformers' layers (AttributeError, or only the KV half of a hybrid
    layer), so `reorder_cache`; a family cache class that selects its own extra state keeps its method."""
    if type(cache).batch_select_indices is not Cache.batch_select_indices:
        cache.batch_select_indices(rows)  # e.g. MiniMaxCache: its linear_cache lives outside the layers
    else:
        cache.reorder_cache(rows)


def refuse_unjoinable(cache: DynamicCache) -> None:
    """Continuous batching left-pads and joins caches position by position, which only full-attention KV
    layers allow (a sliding window or a recurrent state has no per-position layout to pad)."""
    other = next((type(layer).__name__ for layer in cache.layers if type(layer) not in (DynamicLayer, RoomyLayer)), None)
    if type(cache) is not DynamicCache:
        other = type(cache).__name__
    if other is not None:
        raise NotImplementedError(f"continuous batching needs full-attention KV caches; this model's cache holds "
                                  f"{other}, which cannot be left-padded and joined: use run.schedule=static")


def _pad_left(x: Tensor, width: int, dim: int) -> Tensor:
    """Zero-pad `x` on the left of `dim` to `width` (a 0 in a mask is padding)."""
    extra = width - x.shape[dim]
    if extra == 0:
        return x
    pad = [0, 0] * (-dim - 1) + [extra, 0]  # F.pad lists the last dim first
    return F.pad(x, pad)


def ban_tokens(scores: Tensor, ids: Tensor | None) -> Tensor:
    """scores (R, V) with the `ids` columns set to -inf (the EOS ban); None bans nothing."""
    return scores if ids is None else scores.index_fill(-1, ids.to(scores.device), float("-inf"))


StreamFactory = Callable[..., Stream]  # (model, controller, policies) -> Stream: `Stream`, or a static one


class PlainScorer:
    def __init__(self, model, controller, n: int, policy: Policy, ban: Tensor | None,
                 stream: StreamFactory = Stream) -> None:
        stock = policy is None or policy.kind == "default"
        self.stream = stream(model, controller, None if stock else [policy] * n)
        self.ban = ban

    def prefill(self, ids: Tensor, mask: Tensor) -> Tensor:
        return ban_tokens(self.stream.logits(self.stream.prefill(ids, mask)), self.ban)

    def step(self, tokens: Tensor) -> Tensor:
        return ban_tokens(self.stream.logits(self.stream.step(tokens)), self.ban)

    def select(self, rows: Tensor) -> None:
        self.stream.select(rows)

    def extend(self, other: "PlainScorer", rows: Tensor | None = None) -> None:
        self.stream.extend(other.stream, rows)

    def trim_left(self) -> None:
        self.stream.trim_left()


class PairedScorer:
    """SCMoE in one forward: rows (2i, 2i+1) = (strong_i, weak_i), the same token fed to both."""

    def __init__(self, model, controller, n: int, contrast: Contrast, ban: Tensor | None,
                 stream: StreamFactory = Stream) -> None:
        self.stream = stream(model, controller, [contrast.strong, contrast.weak] * n)
        self.contrast = contrast
        self.ban = ban

    def _score(self, logits: Tensor) -> Tensor:  # (2N, V) -> (N, V)
        c = self.contrast
        return ban_tokens(scmoe_logits(logits[0::2], logits[1::2], c.alpha, c.beta), self.ban)  # ban after the mask, as the paper's code

    def prefill(self, ids: Tensor, mask: Tensor) -> Tensor:
        out = self.stream.prefill(ids.repeat_interleave(2, 0), mask.repeat_interleave(2, 0))
        return self._score(self.stream.logits(out))

    def step(self, tokens: Tensor) -> Tensor:
        return self._score(self.stream.logits(self.stream.step(tokens[:, None].expand(-1, 2).reshape(-1))))  # t0 t0 t1 t1

    def select(self, rows: Tensor) -> None:
        self.stream.select(_pairs(rows))

    def extend(self, other: "PairedScorer", rows: Tensor | None = None) -> None:
        self.stream.extend(other.stream, None if rows is None else _pairs(rows))  # pairs stay (2i, 2i+1)

    def trim_left(self) -> None:
        self.stream.trim_left()


def _pairs(rows: Tensor) -> Tensor:
    """Prompt rows -> their (strong, weak) stream rows (2i, 2i+1)."""
    return torch.stack([2 * rows, 2 * rows + 1], dim=1).flatten()


class TwoStreamScorer:
    """Contrast of two streams fed the same tokens, each with its own cache: SCMoE two-pass (strong
    and weak routing of one model, the paper code's layout) and contrastive decoding (expert, amateur).
    Scores are float32 on the strong stream's `out_device`."""

    def __init__(self, strong: Stream, weak: Stream, alpha: float, beta: float, ban: Tensor | None) -> None:
        self.strong, self.weak = strong, weak
        self.alpha, self.beta, self.ban = alpha, beta, ban

    def _score(self, out_s: Any, out_w: Any) -> Tensor:
        z_s, z_w = self.strong.logits(out_s), self.weak.logits(out_w)  # (R, V) each
        return ban_tokens(scmoe_logits(z_s, z_w, self.alpha, self.beta), self.ban)  # ban after the mask

    def prefill(self, ids: Tensor, mask: Tensor) -> Tensor:
        return self._score(self.strong.prefill(ids, mask), self.weak.prefill(ids, mask))

    def step(self, tokens: Tensor) -> Tensor:
        return self._score(self.strong.step(tokens), self.weak.step(tokens))

    def select(self, rows: Tensor) -> None:
        self.strong.select(rows)
        self.weak.select(rows)

    def extend(self, other: "TwoStreamScorer", rows: Tensor | None = None) -> None:
        self.strong.extend(other.strong, rows)
        self.weak.extend(other.weak, rows)

    def trim_left(self) -> None:
        self.strong.trim_left()
        self.weak.trim_left()


class Scorer(Protocol):
    """What the engine's decode loop drives: (N, V) next-token scores for the live rows."""

    def prefill(self, ids: Tensor, mask: Tensor) -> Tensor: ...

    def step(self, tokens: Tensor) -> Tensor: ...

    def select(self, rows: Tensor) -> None: ...


class ScorerHost(Protocol):
    """What a baseline needs from the engine to build its scorer."""

    model: torch.nn.Module
    controller: "RoutingController"
    device: torch.device


class Baseline(Protocol):
    """A decoding baseline the engine runs in place of its own scorers (`generate(baseline=...)`)."""

    def scorer(self, engine: ScorerHost, n: int, ban: Tensor | None) -> Scorer: ...

    def rows_per_prompt(self) -> int:
        """Rows of the main model's decode forward per prompt (picks the GPU decode kernel)."""
        ...
