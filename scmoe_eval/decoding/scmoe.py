"""The SCMoE scoring rule (paper Eq. 5-6), kept apart so a reader finds it at once."""

from __future__ import annotations

import math

from torch import Tensor


def scmoe_logits(z_strong: Tensor, z_weak: Tensor, alpha: float, beta: float) -> Tensor:
    """Contrast strong and weak logits of the same MoE: (1+beta)*zs - beta*zw on plausible tokens.

    Works on RAW logits, as the paper's code does; a token is plausible when
    zs >= log(alpha) + max(zs) (a token exactly at the cutoff survives), all others get -inf.
    z_strong, z_weak: (B, V) -> (B, V) float32.
    """
    if not 0.0 < alpha <= 1.0:
        raise ValueError(f"alpha must be in (0, 1], got {alpha}")
    zs = z_strong.float()  # (B, V)
    zw = z_weak.float()  # (B, V)
    cutoff = zs.max(dim=-1, keepdim=True).values + math.log(alpha)  # (B, 1)
    scores = (1.0 + beta) * zs - beta * zw  # (B, V)
    return scores.masked_fill(zs < cutoff, float("-inf"))
