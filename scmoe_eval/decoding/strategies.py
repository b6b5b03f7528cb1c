"""Decoding strategies by name: each maps a StrategyConfig onto DecodeEngine arguments.

Adding a strategy means registering one builder here; the runner only calls `build_strategy`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Callable, Sequence

from scmoe_eval.config import RoutingConfig, StrategyConfig
from scmoe_eval.decoding.baselines import ContrastiveDecoding, ContrastiveSearch, DoLa
from scmoe_eval.decoding.engine import DecodeEngine, Generation
from scmoe_eval.decoding.streams import Baseline, Contrast, Policy
from scmoe_eval.decoding.sampler import GREEDY, SamplingParams
from scmoe_eval.registry import Registry

if TYPE_CHECKING:
    from scmoe_eval.models.routing import RoutingPolicy


def sample_seed(seed: int, sample: int) -> int:
    """Seed of sample j of an item: j=0 keeps the item seed, later ones are hashed from (seed, j).

    Deterministic and independent of batching, and nested: the first k of n samples are the k-sample run.
    """
    if sample == 0:
        return seed
    digest = hashlib.sha256(f"{seed}:{sample}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1  # non-negative int63, valid for manual_seed


@dataclass(frozen=True)
class Strategy:
    """Engine arguments plus how many samples to draw per prompt."""

    sampling: SamplingParams = GREEDY
    routing: Policy = None
    contrast: Contrast | None = None
    ban_eos: bool = False
    two_pass: bool | None = None
    num_samples: int = 1
    baseline: Baseline | None = None  # cd / dola / contrastive-search: the engine runs its scorer
    share_prefill: bool = True  # samples of a prompt share one prefill (False: one engine call per sample)

    def __post_init__(self) -> None:
        if self.num_samples < 1:
            raise ValueError("num_samples must be >= 1")
        if self.sampling.greedy and self.num_samples > 1:
            raise ValueError("a greedy strategy gives identical samples; use a sampling strategy for num_samples > 1")

    def sample_seeds(self, seed: int) -> list[int]:
        """Seeds of this item's samples, in sample order (what the generation records carry)."""
        return [sample_seed(seed, j) for j in range(self.num_samples)]

    def generate(
        self,
        engine: DecodeEngine,
        prompts: Sequence[str],
        *,
        stops: Sequence[str],
        max_new_tokens: int,
        seeds: Sequence[int],
    ) -> list[list[Generation]]:
        """[prompt][sample] generations. Several samples: one engine call that prefills each prompt once
        and shares its KV cache across the samples (`share_prefill`), else one call per sample index."""
        out: list[list[Generation]] = [[] for _ in prompts]
        n = self.num_samples
        if n > 1 and self.share_prefill:
            gens = engine.generate(
                prompts, stops=stops, max_new_tokens=max_new_tokens,
                seeds=[sample_seed(s, j) for s in seeds for j in range(n)], baseline=self.baseline, num_samples=n,
                **self._decode_args(),
            )
            return [gens[i * n : (i + 1) * n] for i in range(len(prompts))]
        for j in range(n):
            gens = engine.generate(
                prompts, stops=stops, max_new_tokens=max_new_tokens, seeds=[sample_seed(s, j) for s in seeds],
                baseline=self.baseline, **self._decode_args(),
            )
            for row, gen in zip(out, gens):
                row.append(gen)
        return out

    def generate_continuous(
        self,
        engine: DecodeEngine,
        prompts: Sequence[str],
        *,
        batch_size: int,
        stops: Sequence[str],
        max_new_tokens: int,
        seeds: Sequence[int],
        on_finish: Callable[[int, Generation], None],
    ) -> None:
        """The same generations as `generate` (one sample per prompt) under continuous batching
        (engine.generate_continuous); `on_finish(i, generation)` gets prompt i's as soon as its row ends.
        Baselines and several samples are refused (the config preflight refuses them first)."""
        if self.baseline is not None or self.num_samples > 1:
            raise ValueError("continuous batching runs one sample per prompt and no baseline")
        engine.generate_continuous(
            prompts, batch_size=batch_size, stops=stops, max_new_tokens=max_new_tokens,
            seeds=[sample_seed(s, 0) for s in seeds], on_finish=on_finish, **self._decode_args(),
        )

    def _decode_args(self) -> dict[str, Any]:
        """The engine arguments this strategy fixes (both schedules pass the same ones)."""
        return {"sampling": self.sampling, "routing": self.routing, "contrast": self.contrast,
                "ban_eos": self.ban_eos, "two_pass": self.two_pass}


STRATEGIES: Registry[Callable[[StrategyConfig], Strategy]] = Registry("strategy")


def build_strategy(cfg: StrategyConfig) -> Strategy:
    return STRATEGIES.get(cfg.name)(cfg)


def _policy(cfg: RoutingConfig) -> "RoutingPolicy":
    from scmoe_eval.models.routing import RoutingPolicy  # torch-heavy; only needed once a strategy is built

    return RoutingPolicy.from_config(cfg)


def _sampling(cfg: StrategyConfig) -> SamplingParams:
    return SamplingParams(temperature=cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p)


def _contrast(cfg: StrategyConfig) -> Contrast:
    return Contrast(strong=_policy(cfg.strong), weak=_policy(cfg.weak), alpha=cfg.alpha, beta=cfg.beta)


@STRATEGIES.register("greedy")
def _greedy(cfg: StrategyConfig) -> Strategy:
    """Argmax under cfg.routing (default, top-k/ensemble, rank-k, dynamic = topp, random)."""
    return Strategy(routing=_policy(cfg.routing), ban_eos=bool(cfg.ban_eos), num_samples=cfg.num_samples)


@STRATEGIES.register("sample")
def _sample(cfg: StrategyConfig) -> Strategy:
    """Temperature / top-k / top-p sampling under cfg.routing."""
    return Strategy(
        sampling=_sampling(cfg), routing=_policy(cfg.routing), ban_eos=bool(cfg.ban_eos), num_samples=cfg.num_samples
    )


def _ban_eos_scmoe(cfg: StrategyConfig) -> bool:
    return True if cfg.ban_eos is None else cfg.ban_eos  # paper code: early_stop=False bans EOS


@STRATEGIES.register("scmoe")
def _scmoe(cfg: StrategyConfig) -> Strategy:
    """Greedy SCMoE: argmax of (1+beta) z_strong - beta z_weak over the alpha-plausible tokens."""
    return Strategy(
        contrast=_contrast(cfg), ban_eos=_ban_eos_scmoe(cfg), two_pass=cfg.two_pass, num_samples=cfg.num_samples
    )


@STRATEGIES.register("scmoe-sample")
def _scmoe_sample(cfg: StrategyConfig) -> Strategy:
    """Sampling from softmax(z_sc) (paper section 4.3); temperature/top-p act only if set off 1.0."""
    return Strategy(
        sampling=_sampling(cfg),
        contrast=_contrast(cfg),
        ban_eos=_ban_eos_scmoe(cfg),
        two_pass=cfg.two_pass,
        num_samples=cfg.num_samples,
    )


@STRATEGIES.register("self-consistency")
def _self_consistency(cfg: StrategyConfig) -> Strategy:
    """num_samples draws of the inner sampling strategy; the majority vote happens at scoring."""
    if cfg.inner == "self-consistency":
        raise ValueError("self-consistency cannot be its own inner strategy")
    return build_strategy(replace(cfg, name=cfg.inner))


@STRATEGIES.register("cd")
def _cd(cfg: StrategyConfig) -> Strategy:
    """Contrastive decoding vs the amateur `strategy.amateur` (attached by the runner); EOS allowed
    (paper code: early_stop=True)."""
    return Strategy(baseline=ContrastiveDecoding(alpha=cfg.alpha, beta=cfg.beta), ban_eos=bool(cfg.ban_eos))


@STRATEGIES.register("dola")
def _dola(cfg: StrategyConfig) -> Strategy:
    """DoLa as the paper's code: max-JS premature layer, relative_top, repetition penalty; EOS banned
    by default (paper code: early_stop=False)."""
    layers = cfg.dola_layers if isinstance(cfg.dola_layers, str) else tuple(cfg.dola_layers)
    dola = DoLa(layers=layers, relative_top=cfg.relative_top, penalty=cfg.repetition_penalty)
    return Strategy(baseline=dola, ban_eos=_ban_eos_scmoe(cfg))


@STRATEGIES.register("contrastive-search")
def _contrastive_search(cfg: StrategyConfig) -> Strategy:
    """Contrastive search over the top_k candidates with penalty_alpha; EOS allowed (HF generate default)."""
    return Strategy(
        baseline=ContrastiveSearch(penalty_alpha=cfg.penalty_alpha, top_k=cfg.top_k), ban_eos=bool(cfg.ban_eos)
    )
