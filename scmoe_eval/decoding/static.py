"""Fixed-shape decode for the compiled step (opt-in: `run.compile=true`, `DecodeEngine(compile=True)`).

`torch.compile` (and CUDA graphs behind it on a GPU) wants every decode step to have the same shapes
and the same tensors at the same addresses. A `StaticStream` is a `Stream` that gives it that:
- the KV cache is transformers' `StaticCache`, sized prompt + max new tokens and rounded up to
  `BUCKET` so batches with different prompt lengths reuse one compiled graph;
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
from transformers.cache_utils import LinearAttentionCacheLayerMixin

from scmoe_eval.decoding.streams import Hidden, Stream

BUCKET = 256  # cache length granularity: prompt lengths within one bucket share a compiled graph


def capacity(prompt_len: int, max_new_tokens: int) -> int:
    """Static cache length: prompt + every new token, rounded up to a multiple of BUCKET."""
    need = prompt_len + max_new_tokens
    return -(-need // BUCKET) * BUCKET


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
        self.cache = StaticCache(config=self.model.config, max_cache_len=size)
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
        self.mask = self.mask[rows]
        self.next_pos = self.next_pos[rows]
        if self.policies is not None:
            self.policies = tuple(self.policies[r] for r in rows.tolist())

    def extend(self, other: Stream) -> None:
        raise NotImplementedError("continuous batching changes the batch shape; it runs the eager decode (run.compile=false)")

    def trim_left(self) -> None:
        raise NotImplementedError("continuous batching changes the batch shape; it runs the eager decode (run.compile=false)")
