"""Next-token selection from a (B, V) score matrix, as a chain of tiny float32 steps (vLLM v1 style).

Greedy is argmax (ties -> lowest id). Random sampling draws with one torch.Generator per row, so a
row's sample depends only on its own seed and scores, never on what else is in the batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class SamplingParams:
    """Shared by every row of one call. temperature 0 means greedy; top_k 0 / top_p 1 mean off."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0

    def __post_init__(self) -> None:
        if self.temperature < 0 or self.top_k < 0 or not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"invalid sampling parameters: {self}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


GREEDY = SamplingParams()


class Sampler:
    """Picks one token per row: greedy, or temperature -> top-k -> top-p -> seeded draw."""

    def __call__(self, scores: Tensor, params: SamplingParams, generators: list[torch.Generator] | None) -> Tensor:
        """scores (B, V) -> token ids (B,) int64."""
        scores = scores.float()
        if params.greedy:
            return self.greedy(scores)
        if generators is None or len(generators) != scores.shape[0]:
            raise ValueError("random sampling needs one torch.Generator per row")
        scores = self.apply_temperature(scores, params.temperature)
        scores = self.apply_top_k(scores, params.top_k)
        scores = self.apply_top_p(scores, params.top_p)
        return self.random_sample(scores, generators)

    @staticmethod
    def greedy(scores: Tensor) -> Tensor:
        return scores.argmax(dim=-1)  # torch returns the first maximal index: ties -> lowest id

    @staticmethod
    def apply_temperature(scores: Tensor, temperature: float) -> Tensor:
        return scores if temperature == 1.0 else scores / temperature

    @staticmethod
    def apply_top_k(scores: Tensor, k: int) -> Tensor:
        if k <= 0 or k >= scores.shape[-1]:
            return scores
        kth = scores.topk(k, dim=-1).values[:, -1:]  # (B, 1)
        return scores.masked_fill(scores < kth, float("-inf"))

    @staticmethod
    def apply_top_p(scores: Tensor, p: float) -> Tensor:
        """Keep the smallest high-probability set whose mass reaches p (the top token always stays)."""
        if p >= 1.0:
            return scores
        sorted_scores, order = scores.sort(dim=-1, descending=True)  # (B, V)
        probs = sorted_scores.softmax(dim=-1)
        mass_before = probs.cumsum(dim=-1) - probs  # (B, V) mass of strictly better tokens
        drop_sorted = mass_before >= p
        drop = drop_sorted.scatter(-1, order, drop_sorted)  # back to vocabulary order
        return scores.masked_fill(drop, float("-inf"))

    @staticmethod
    def random_sample(scores: Tensor, generators: list[torch.Generator]) -> Tensor:
        """Exponential race: argmax(p / q), q ~ Exp(1) per row from that row's generator (== multinomial)."""
        probs = scores.softmax(dim=-1)  # (B, V)
        q = torch.empty_like(probs)
        for row, gen in enumerate(generators):
            q[row].exponential_(generator=gen)
        q.clamp_(min=torch.finfo(q.dtype).tiny)  # an exact 0 draw would give inf/nan scores
        return (probs / q).argmax(dim=-1)
