"""Per-token log-probabilities of given continuation tokens: plain, and SCMoE for multiple choice.

SCMoE-MC is an extension beyond the paper (which only decodes). At each continuation position, with
strong logits z_s and weak logits z_w of the same MoE, plausible set P = {t : z_s[t] >= max z_s + log α}:

    t in P:      log P_s(P) + log_softmax_P((1+β)·z_s − β·z_w)[t]
    t not in P:  log p_s(t)                         (the strong model's own log-prob)

Inside P the ranking and ratios are exactly SCMoE's decoding distribution; the log P_s(P) offset and
the strong log-prob outside P make the whole a proper distribution over the vocabulary that equals the
strong model's at β = 0. −inf outside P was rejected: a multi-token answer nearly always has some
token outside P, so most options would tie at −inf and lm-eval's argmax would pick the first one.
"""

from __future__ import annotations

import torch
from torch import Tensor

from scmoe_eval.decoding.scmoe import scmoe_logits


def token_logprobs(logits: Tensor, tokens: Tensor) -> tuple[Tensor, Tensor]:
    """logits (T, V), tokens (T,) -> (log p of each token (T,), whether each is the argmax (T,)), float32."""
    logp = logits.float().log_softmax(-1)
    return logp.gather(-1, tokens[:, None])[:, 0], logp.argmax(-1) == tokens


def scmoe_mc_logprobs(z_strong: Tensor, z_weak: Tensor, alpha: float, beta: float) -> Tensor:
    """(T, V) strong and weak raw logits -> (T, V) SCMoE-MC log-probs (module docstring), float32."""
    log_ps = z_strong.float().log_softmax(-1)
    contrast = scmoe_logits(z_strong, z_weak, alpha, beta)  # -inf outside the plausible set
    plausible = contrast > float("-inf")
    log_mass = log_ps.masked_fill(~plausible, float("-inf")).logsumexp(-1, keepdim=True)  # log P_s(P)
    return torch.where(plausible, contrast.log_softmax(-1) + log_mass, log_ps)


def scmoe_token_logprobs(
    z_strong: Tensor, z_weak: Tensor, tokens: Tensor, alpha: float, beta: float
) -> tuple[Tensor, Tensor]:
    """SCMoE-MC log-prob of each token (T,) and whether it is SCMoE's greedy pick (argmax of the contrast)."""
    logp = scmoe_mc_logprobs(z_strong, z_weak, alpha, beta)
    picks = scmoe_logits(z_strong, z_weak, alpha, beta).argmax(-1)
    return logp.gather(-1, tokens[:, None])[:, 0], picks == tokens
