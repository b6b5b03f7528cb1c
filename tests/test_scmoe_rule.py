"""The SCMoE scoring rule against hand-computed values (paper Eq. 5-6 on raw logits)."""

from __future__ import annotations

import math

import pytest
import torch

from scmoe_eval.decoding.sampler import Sampler
from scmoe_eval.decoding.scmoe import scmoe_logits

LOG_ALPHA = torch.tensor(math.log(0.1), dtype=torch.float32)  # cutoff offset as float32
JUST_BELOW = torch.nextafter(LOG_ALPHA, torch.tensor(-math.inf))


def test_hand_computed_scores_and_mask_edge() -> None:
    # max z_strong is 0, so the cutoff is exactly log(0.1): token 1 sits on it, token 2 one ulp below.
    zs = torch.stack([torch.tensor(0.0), LOG_ALPHA, JUST_BELOW, torch.tensor(-5.0)])[None]
    zw = torch.tensor([[1.0, -2.0, 0.0, 0.0]])
    out = scmoe_logits(zs, zw, alpha=0.1, beta=0.5)
    assert out.dtype == torch.float32 and out.shape == (1, 4)
    assert out[0, 0].item() == pytest.approx(1.5 * 0.0 - 0.5 * 1.0)
    assert out[0, 1].item() == pytest.approx(1.5 * math.log(0.1) + 1.0, abs=1e-6)  # at the cutoff: survives
    assert out[0, 2].item() == -math.inf  # just below: masked
    assert out[0, 3].item() == -math.inf


def test_contrast_changes_the_pick_and_mask_is_per_row() -> None:
    # Row 0: the weak model also likes token 0, so the contrast moves to token 1:
    #   token 0: 1.5*2.0 - 0.5*3.0 = 1.5 ; token 1: 1.5*1.9 - 0.5*0.0 = 2.85 ; token 2 implausible.
    # Row 1: same logits shifted by +100 (raw logits: the mask uses that row's own max).
    zs = torch.tensor([[2.0, 1.9, -10.0], [102.0, 101.9, 90.0]])
    zw = torch.tensor([[3.0, 0.0, 50.0], [3.0, 0.0, 50.0]])
    out = scmoe_logits(zs, zw, alpha=0.1, beta=0.5)
    assert out[0].tolist() == pytest.approx([1.5, 2.85, -math.inf])
    assert out[1].tolist() == pytest.approx([151.5, 152.85, -math.inf])
    assert Sampler.greedy(out).tolist() == [1, 1]
    assert Sampler.greedy(zs).tolist() == [0, 0]


def test_beta_zero_is_plain_greedy() -> None:
    gen = torch.Generator().manual_seed(0)
    zs, zw = torch.randn(64, 50, generator=gen), torch.randn(64, 50, generator=gen)
    out = scmoe_logits(zs, zw, alpha=0.1, beta=0.0)
    assert torch.equal(Sampler.greedy(out), zs.argmax(-1))
    kept = out > -math.inf
    assert torch.equal(out[kept], zs[kept])


def test_ties_go_to_the_lowest_id() -> None:
    zs = torch.tensor([[1.0, 3.0, 3.0, 0.0]])
    zw = torch.zeros(1, 4)
    out = scmoe_logits(zs, zw, alpha=0.1, beta=0.5)
    assert out[0, 1] == out[0, 2]
    assert Sampler.greedy(out).item() == 1


def test_alpha_one_keeps_only_the_strong_argmax_and_bad_alpha_fails() -> None:
    zs = torch.tensor([[0.5, 2.0, 1.99]])
    out = scmoe_logits(zs, torch.zeros(1, 3), alpha=1.0, beta=0.9)
    assert (out > -math.inf).tolist() == [[False, True, False]]
    for alpha in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="alpha"):
            scmoe_logits(zs, zs, alpha=alpha, beta=0.5)


def test_half_precision_inputs_give_float32() -> None:
    zs = torch.tensor([[1.0, 0.5]], dtype=torch.bfloat16)
    assert scmoe_logits(zs, zs, 0.1, 0.5).dtype == torch.float32
