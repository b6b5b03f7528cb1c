"""CPU kernel choices for few-row decode steps (fp32, MKL), measured in docs/decode-cost.md.

MKL runs an M-row `x @ W.T` (what `nn.Linear` calls) with 2 <= M <= 4 at about M times the cost of
one row: it streams the weight once per row. `W @ x.T` (the same product, transposed) streams it
once for all M rows when W has many more rows than columns, as an LM head (32000 x 512: 2 rows in
about half the time of one). Batched SCMoE at batch 1 feeds 2 rows, so its LM head, the largest
single weight of a small model, cost twice greedy's. Rounding differs from `nn.Linear` in the last
bits, so it is used only for SCMoE's paired rows, never for greedy (whose tokens equal HF's).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import Tensor, nn

FEW_ROWS = 4  # up to this many rows per step the transposed product is used (batch <= 2 SCMoE)
TALL = 8  # only for weights with at least TALL times more rows than columns (an LM head)


def _transposed_linear(head: nn.Linear, x: Tensor) -> Tensor:
    flat = x.reshape(-1, x.shape[-1])  # (M, H)
    out = torch.mm(head.weight, flat.T).T  # (M, V): W read once for all M rows
    if head.bias is not None:
        out = out + head.bias
    return out.reshape(*x.shape[:-1], out.shape[-1])


def head_suits(model: nn.Module, rows: int) -> bool:
    """Whether `few_rows_head` applies: CPU, 2..FEW_ROWS rows, a plain tall nn.Linear head."""
    head = model.get_output_embeddings()
    return (
        isinstance(head, nn.Linear)
        and type(head).forward is nn.Linear.forward
        and "forward" not in vars(head)  # an instance-level forward (accelerate's offload hooks) stays untouched
        and head.weight.device.type == "cpu"
        and 2 <= rows <= FEW_ROWS
        and head.weight.shape[0] >= TALL * head.weight.shape[1]
    )


@contextmanager
def few_rows_head(model: nn.Module) -> Iterator[None]:
    """The LM head computes `W @ x.T` for the block (an instance attribute shadows Linear.forward)."""
    head = model.get_output_embeddings()
    head.forward = lambda x: _transposed_linear(head, x)
    try:
        yield
    finally:
        del head.forward
