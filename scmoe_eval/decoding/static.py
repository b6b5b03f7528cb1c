"""Fixed-shape decode for the compiled step (opt-in: `run.compile=true`, `DecodeEngine(compile=True)`).

`torch.compile` (and CUDA graphs behind it on a GPU) wants every decode step to have the same shapes
and the same tensors at the same addresses. A `StaticStream` is a `Stream` that gives it that:
- the KV cache is transformers' `StaticCache`, sized prompt + max new tokens and rounded up to
  `BUCKET` so batches with different prompt lengths reuse one compiled graph. Sliding-window and
  chunked layers are held at full length too (`static_cache`), the window left to the attention mask:
  transformers' StaticSlidingWindowLayer counts its length in a Python int that the compiled graph
  guards on, so every decode step recompiled until torch gave up and ran eager;
- the attention mask is one (R, M) buffer whose next column is set to 1 per step;
- rows that finish stay in the forward (fed their last token, their scores dropped) instead of
  leaving the batch, so the batch size never changes mid-decode. At batch 1 nothing is wasted; at
  larger batches the finished rows' compute is the price of a fixed shape.
Prefill runs eager (its length varies per batch); only the one-token decode forward is compiled.
Routing hooks are traced into the graph: a policy list is one `_State` object, so one graph per list.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torch import Tensor
from transformers import StaticCache
from transformers.cache_utils import (LinearAttentionAndStaticFullAttentionLayer,
                                      LinearAttentionAndStaticSlidingWindowAttentionLayer,
                                      LinearAttentionCacheLayerMixin, StaticLayer, StaticSlidingWindowLayer,
                                      get_layer_types_and_kwargs)

from scmoe_eval.decoding.streams import Hidden, Stream

BUCKET = 256  # cache length granularity: prompt lengths within one bucket share a compiled graph
# graphs per compiled code object before torch falls back to eager without a word (torch's default: 8). Each
# (rows, cache bucket, policy list) is one graph of transformers' shared forward wrapper, and a long run
# meets more than 8 (last batches, several prompt-length buckets, greedy and SCMoE, more than one model).
RECOMPILE_LIMIT = 64
# cache layer kinds a StaticStream holds with the eager path's tokens (scmoe_eval.models.census.check_compiled)
STATIC_KINDS = frozenset({"full_attention", "sliding_attention", "chunked_attention", "linear_attention", "conv",
                          "hybrid", "hybrid_sliding", "dummy"})


def allow_recompiles() -> None:
    """Raise torch's per-code-object graph limit to RECOMPILE_LIMIT (process-wide, never lowered; a
    config patch per step would cost ~0.2 ms)."""
    torch._dynamo.config.recompile_limit = max(RECOMPILE_LIMIT, torch._dynamo.config.recompile_limit)


def refusal(config: Any, cache_class: str = "") -> str | None:
    """Why a model cannot decode on a StaticStream (None: it can). DSA's indexed layers are refused
    because transformers' static indexer cache picks other keys than its dynamic one (its own
    `generate` with cache_implementation="static" gives other tokens on the tiny DeepSeek-V3.2)."""
    if cache_class:
        return f"it decodes on its own {cache_class}, which has no static form"
    kinds = set(get_layer_types_and_kwargs(config.get_text_config(decoder=True))[0])
    if "indexed_attention" in kinds:
        return "its sparse-attention indexer has no static cache with the dynamic one's tokens"
    if kinds - STATIC_KINDS:
        return f"its cache layers ({', '.join(sorted(kinds - STATIC_KINDS))}) have no static form"
    return None


def capacity(prompt_len: int, max_new_tokens: int) -> int:
    """Static cache length: prompt + every new token, rounded up to a multiple of BUCKET."""
    need = prompt_len + max_new_tokens
    return -(-need // BUCKET) * BUCKET


def static_cache(config: Any, size: int) -> StaticCache:
    """transformers' StaticCache of `size` positions, its sliding / chunked layers made full-length ones (the
    mask still applies the window: the same positions are attended, none evicted)."""
    cache = StaticCache(config=config, max_cache_len=size)
    for i, layer in enumerate(cache.layers):
        if type(layer) is StaticSlidingWindowLayer:
            cache.layers[i] = StaticLayer(max_cache_len=size)
        elif type(layer) is LinearAttentionAndStaticSlidingWindowAttentionLayer:
            cache.layers[i] = LinearAttentionAndStaticFullAttentionLayer(size, number_of_states=layer.number_of_states)
    return cache


class StaticStream(Stream):
    """A Stream over a StaticCache whose decode steps all have one shape (see the module docstring)."""

    def __init__(
        self,
        model: torch.nn.Module,
        controller: Any = None,
        policies: Sequence[Any] | None = None,
        *,
        step_fn: Callable[..., Any],
        max_new_tokens: int,
    ) -> None:
        super().__init__(model, controller, policies)
        self.step_fn = step_fn  # the compiled model call (transformers' get_compiled_call)
        self.max_new_tokens = max_new_tokens
        self.width = 0  # columns of the mask buffer filled so far
        self.live: Tensor | None = None  # (N,) rows whose scores are returned; None = all rows
        self.fed: Tensor | None = None  # (R,) the token each row was fed last (finished rows repeat it)

    def prefill(self, ids: Tensor, mask: Tensor, hidden: Hidden = None) -> Any:
        rows, length = ids.shape
        size = capacity(length, self.max_new_tokens)
        self.cache = static_cache(self.model.config, size)
        out = super().prefill(ids, mask, hidden)
        buffer = self.mask.new_zeros(rows, size)  # (R, M)
        buffer[:, :length] = self.mask
        self.mask, self.width = buffer, length
        return out

    def step(self, tokens: Tensor, hidden: Hidden = None) -> Any:
        """tokens (N,) for the live rows -> output for all R rows (finished rows are fed their last token)."""
        tokens = tokens.to(self.device)
        if self.live is not None:
            tokens = self.fed.index_put((self.live,), tokens)
        self.fed = tokens
        self.mask[:, self.width] = 1
        self.width += 1
        pos = self.next_pos
        self.next_pos = pos + 1
        if self.device.type == "cuda":
            torch.compiler.cudagraph_mark_step_begin()  # the previous step's outputs are consumed
        return self._forward(tokens[:, None], pos, hidden, call=self.step_fn)

    def _route(self) -> None:
        """Set this stream's policies, and build their per-row picks outside the compiled graph."""
        super()._route()
        if self.controller is not None:
            self.controller.prepare(self.device)

    def logits(self, out: Any) -> Tensor:
        """(N, V) float32 for the live rows; always a copy (a CUDA graph's next replay overwrites its output)."""
        z = out.logits[:, -1].float()  # (R, V)
        z = z[self.live] if self.live is not None else z.clone()
        return z.to(self.out_device)

    def select(self, rows: Tensor) -> None:
        """Before the first step (fanning prompts out to samples): rebuild the cache rows. After it: only
        the returned rows shrink; the forward keeps every row so its shape stays fixed."""
        if self.fed is None:
            self._reselect(rows.to(self.device))
            return
        live = self.live if self.live is not None else torch.arange(len(self.fed), device=self.device)
        self.live = live[rows.to(self.device)]  # policies stay: every row still runs, under its own routing

    def _reselect(self, rows: Tensor) -> None:
        """Rebuild every layer's rows at new fixed addresses (in-place updates there; CUDA graphs)."""
        for layer in self.cache.layers:  # StaticLayer has no batch_select_indices
            if isinstance(layer, LinearAttentionCacheLayerMixin):  # hybrid families: recurrent / conv states
                LinearAttentionCacheLayerMixin.reorder_cache(layer, rows)
                for state in (*layer.conv_states.values(), *layer.recurrent_states.values()):
                    if state is not None:
                        torch._dynamo.mark_static_address(state)
            if isinstance(getattr(layer, "keys", None), Tensor) and layer.keys.dim() == 4:  # attention KV
                layer.keys, layer.values, layer.batch_size = layer.keys[rows], layer.values[rows], len(rows)
                torch._dynamo.mark_static_address(layer.keys)
                torch._dynamo.mark_static_address(layer.values)
            if isinstance(getattr(layer, "indexer_keys", None), Tensor):  # DSA's indexer keys (B, M, d)
                layer.indexer_keys = layer.indexer_keys[rows]
                torch._dynamo.mark_static_address(layer.indexer_keys)
                if layer.indexer_position_ids is not None:  # (P, B, S)
                    layer.indexer_position_ids = layer.indexer_position_ids[:, rows]
        self.mask = self.mask[rows]
        self.next_pos = self.next_pos[rows]
        if self.policies is not None:
            self.policies = tuple(self.policies[r] for r in rows.tolist())

    def extend(self, other: Stream) -> None:
        raise NotImplementedError("continuous batching changes the batch shape; it runs the eager decode (run.compile=false)")

    def trim_left(self) -> None:
        raise NotImplementedError("continuous batching changes the batch shape; it runs the eager decode (run.compile=false)")
