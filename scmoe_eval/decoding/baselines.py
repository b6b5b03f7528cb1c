"""The paper's decoding baselines that transformers 5.x no longer ships: CD, DoLa, contrastive search.

Each baseline is a small settings object whose `scorer(engine, n, ban)` builds a scorer for the
engine's one decode loop (prefill / step / select, returning (N, V) next-token scores), so stopping,
max_new_tokens, dropping finished rows and the Generation records are shared with every strategy.
All three decode greedily under the model's stock routing.

- `ContrastiveDecoding` (Li et al.): expert vs a separate amateur model, the SCMoE rule on raw logits.
- `DoLa` (Chuang et al.): mature vs the max-JS premature layer, as the paper's code (no final norm
  on premature layers, relative_top mask, repetition penalty).
- `ContrastiveSearch` (Su et al.): top-k candidates re-ranked by the degeneration penalty; the
  candidates' forward fills the KV cache, so the chosen candidate's slice is kept, not recomputed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import AutoModelForCausalLM

from scmoe_eval.config import DOLA_BANDS
from scmoe_eval.decoding.streams import Scorer, ScorerHost, Stream, TwoStreamScorer, ban_tokens

if TYPE_CHECKING:
    from scmoe_eval.config import ModelConfig

S = TypeVar("S")  # a Strategy (decoding/strategies.py imports this module, not the other way round)


# --- contrastive decoding --------------------------------------------------------------------


@dataclass(frozen=True)
class ContrastiveDecoding:
    """Expert vs amateur (same vocabulary): (1+beta) z_e - beta z_a over z_e >= log(alpha) + max z_e.

    `amateur` is the loaded amateur model; the pipeline attaches it (`attach_amateur`) once the
    expert is loaded, so building the strategy stays cheap.
    """

    alpha: float = 0.1
    beta: float = 0.5
    amateur: nn.Module | None = None

    def scorer(self, engine: ScorerHost, n: int, ban: Tensor | None) -> Scorer:
        if self.amateur is None:
            raise ValueError("strategy.amateur: the cd strategy needs its amateur model attached (attach_amateur)")
        expert_vocab, amateur_vocab = engine.model.config.vocab_size, self.amateur.config.vocab_size
        if expert_vocab != amateur_vocab:
            raise ValueError(f"strategy.amateur: vocabulary {amateur_vocab} differs from the expert's {expert_vocab}")
        expert = Stream(engine.model, engine.controller)  # stock routing (the controller is reset for the call)
        amateur = Stream(self.amateur, out_device=engine.device)  # a dense model: no routing hooks
        return TwoStreamScorer(expert, amateur, self.alpha, self.beta, ban)

    def rows_per_prompt(self) -> int:
        return 1


def attach_amateur(strategy: S, amateur: nn.Module) -> S:
    """The cd strategy with its loaded amateur model."""
    if not isinstance(strategy.baseline, ContrastiveDecoding):
        raise ValueError("only the cd strategy takes an amateur model")
    return replace(strategy, baseline=replace(strategy.baseline, amateur=amateur))


def load_amateur(path: str, like: "ModelConfig") -> nn.Module:
    """The amateur checkpoint in eval mode, placed and typed exactly like the expert (`like`).

    It needs no routing control (Mistral-7B, the paper's amateur, is dense), so it skips the MoE loader.
    """
    from scmoe_eval.models.loading import DTYPES, _placement

    local = Path(path).expanduser()
    placement, _ = _placement(like)
    extra = {"attn_implementation": like.attn_implementation} if like.attn_implementation else {}
    model = AutoModelForCausalLM.from_pretrained(
        str(local) if local.exists() else path,
        dtype=DTYPES[like.dtype],
        trust_remote_code=like.trust_remote_code,
        local_files_only=like.local_files_only,
        **placement,
        **extra,
    )
    return model.eval()


def vocab_size(config: Any) -> int | None:
    """The vocabulary size a config.json declares (top level or its text_config)."""
    for c in (config, getattr(config, "text_config", None)):
        size = getattr(c, "vocab_size", None) if c is not None else None
        if isinstance(size, int):
            return size
    return None


# --- DoLa --------------------------------------------------------------------------------------


def dola_candidates(layers: str | Sequence[int], num_layers: int) -> list[int]:
    """Candidate premature layers as hidden_states indices (0 = embeddings output, L = mature).

    "low" = even layers of [0, L/2), "high" = even layers of [L/2, L) (paper: 0,2,..,14 / 16,..,30
    for 32 layers); a list is taken as given. The paper code also lists the mature layer among the
    candidates; its JS divergence to itself is 0, the minimum, and it comes last, so the argmax never
    picks it and leaving it out changes nothing.
    """
    half = num_layers // 2
    if isinstance(layers, str):
        bands = {"low": range(0, half, 2), "high": range(half + half % 2, num_layers, 2)}
        if layers not in bands:
            raise ValueError(f"strategy.dola_layers: must be one of {DOLA_BANDS} or a list of layers, got {layers!r}")
        if not bands[layers]:
            raise ValueError(f"strategy.dola_layers: a {num_layers}-layer model has no even layer in the {layers!r} half")
        return list(bands[layers])
    out = [int(layer) for layer in layers]
    bad = [layer for layer in out if not 0 <= layer < num_layers]
    if not out or bad:
        raise ValueError(f"strategy.dola_layers: layers must lie in [0, {num_layers}) and not be empty, got {out}")
    return out


def js_divergence(log_p: Tensor, log_q: Tensor) -> Tensor:
    """The DoLa layer-selection divergence as the paper's code computes it: (..., V) -> (...).

    0.5 * (KL(M || p) + KL(M || q)) with M = (p + q) / 2, each KL averaged over the vocabulary
    (`F.kl_div(log p, M).mean(-1)`). Textbook JS is KL(p || M) + KL(q || M); the paper's DoLa baseline
    uses this reversed form, and it can pick a different premature layer, so we follow the code.
    """
    p, q = log_p.exp(), log_q.exp()
    m = 0.5 * (p + q)
    log_m = m.log()

    def kl_from_m(log_prob: Tensor) -> Tensor:  # KL(M || prob) per token, averaged over V; 0 * log 0 = 0
        return torch.where(m > 0, m * (log_m - log_prob), 0.0).mean(-1)

    return 0.5 * (kl_from_m(log_p) + kl_from_m(log_q))


def dola_scores(mature: Tensor, premature: Tensor, relative_top: float) -> tuple[Tensor, Tensor]:
    """mature (R, V), premature (C, R, V) logits -> DoLa scores (R, V) and the chosen candidate (R,).

    Per row, the premature candidate with the largest JS divergence from the mature distribution
    (first on ties); score = log p_mature - log p_premature where p_mature >= relative_top * max, else -inf.
    Computed in the logits' dtype, as the paper's code (bf16 for its runs: coarse values, more ties).
    """
    log_m = F.log_softmax(mature, dim=-1)  # (R, V)
    log_p = F.log_softmax(premature, dim=-1)  # (C, R, V)
    chosen = js_divergence(log_m.expand_as(log_p), log_p).argmax(dim=0)  # (R,)
    log_pre = log_p[chosen, torch.arange(mature.shape[0], device=mature.device)]  # (R, V)
    cutoff = log_m.max(dim=-1, keepdim=True).values + math.log(relative_top)  # (R, 1)
    return (log_m - log_pre).masked_fill(log_m < cutoff, float("-inf")), chosen


def repetition_penalty(scores: Tensor, seen: Tensor, penalty: float) -> Tensor:
    """HF-style: a seen token's positive score is divided by `penalty`, a negative one multiplied."""
    penalised = torch.where(scores > 0, scores / penalty, scores * penalty)
    return torch.where(seen, penalised, scores)


@dataclass(frozen=True)
class DoLa:
    """DoLa as the paper's code runs it: premature layers `layers`, relative_top 0.1, penalty 1.2."""

    layers: str | tuple[int, ...] = "low"
    relative_top: float = 0.1
    penalty: float = 1.2

    def scorer(self, engine: ScorerHost, n: int, ban: Tensor | None) -> Scorer:
        return _DoLaScorer(Stream(engine.model, engine.controller), self, engine.device, ban)

    def rows_per_prompt(self) -> int:
        return 1


class _DoLaScorer:
    """One forward per step with all hidden states; premature logits = lm_head(h_l) without the final norm.

    The repetition penalty covers every real token of the row so far, prompt included (HF's
    RepetitionPenaltyLogitsProcessor on input_ids, which the paper's code used), padding excluded.
    """

    def __init__(self, stream: Stream, dola: DoLa, device: torch.device, ban: Tensor | None) -> None:
        self.stream = stream
        model = stream.model
        self.lm_head = model.get_output_embeddings()
        self.candidates = dola_candidates(dola.layers, model.config.get_text_config().num_hidden_layers)
        self.dola, self.device, self.ban = dola, device, ban
        self.seen: Tensor | None = None  # (R, V) bool: token occurs in the row's prompt or output

    def _score(self, out: Any) -> Tensor:
        head = self.lm_head.weight.device
        hidden = torch.stack([out.hidden_states[layer][:, -1].to(head) for layer in self.candidates])  # (C, R, H)
        premature = self.lm_head(hidden).to(self.device)  # (C, R, V) in the model dtype, as the paper's lm_head call
        mature = self.stream.logits(out).to(premature.dtype)  # (R, V): the same lm_head values, exactly
        scores, _ = dola_scores(mature, premature, self.dola.relative_top)
        return ban_tokens(repetition_penalty(scores, self.seen, self.dola.penalty), self.ban)

    def prefill(self, ids: Tensor, mask: Tensor) -> Tensor:
        out = self.stream.prefill(ids, mask, hidden=self.candidates)
        ids, real = ids.to(self.device), mask.to(self.device).bool()  # (R, L)
        self.seen = torch.zeros(ids.shape[0], out.logits.shape[-1], dtype=torch.bool, device=self.device)
        self.seen[real.nonzero(as_tuple=True)[0], ids[real]] = True  # padding never counts as seen
        return self._score(out)

    def step(self, tokens: Tensor) -> Tensor:
        self.seen[torch.arange(tokens.shape[0], device=self.device), tokens.to(self.device)] = True
        return self._score(self.stream.step(tokens, hidden=self.candidates))

    def select(self, rows: Tensor) -> None:
        self.stream.select(rows)
        self.seen = self.seen[rows.to(self.device)]


# --- contrastive search ---------------------------------------------------------------------


def degeneration_penalty(context: Tensor, context_mask: Tensor, candidates: Tensor) -> Tensor:
    """Max cosine similarity of each candidate to the row's earlier hidden states, padding excluded.

    context (R, T, H), context_mask (R, T), candidates (R, K, H) -> (R, K).
    """
    sims = F.normalize(candidates.float(), dim=-1) @ F.normalize(context.float(), dim=-1).transpose(1, 2)  # (R, K, T)
    sims = sims.masked_fill(~context_mask.bool()[:, None, :], float("-inf"))
    return sims.max(dim=-1).values


@dataclass(frozen=True)
class ContrastiveSearch:
    """Pick argmax over the top_k tokens of (1-alpha) p(v) - alpha * max cos(h_v, h_<t)."""

    penalty_alpha: float = 0.6
    top_k: int = 5

    def scorer(self, engine: ScorerHost, n: int, ban: Tensor | None) -> Scorer:
        return _ContrastiveSearchScorer(Stream(engine.model, engine.controller), self, engine.device, ban)

    def rows_per_prompt(self) -> int:
        return self.top_k


class _ContrastiveSearchScorer:
    """Scores come from a candidates' forward over R*k rows (the cache fanned out k-fold); the chosen
    candidate's cache row, hidden state and next logits are kept, so the fed token needs no forward.
    The returned scores are 0 at the chosen token and -inf elsewhere (the loop's argmax takes it).
    """

    def __init__(self, stream: Stream, cs: ContrastiveSearch, device: torch.device, ban: Tensor | None) -> None:
        self.stream = stream
        self.cs, self.device, self.ban = cs, device, ban
        self.logits: Tensor | None = None  # (R, V) next-token logits of the current sequence
        self.context: Tensor | None = None  # (R, T, H) last-layer hidden state of every position so far
        self.pending: Tensor | None = None  # (R,) the token the scores chose

    def _choose(self) -> Tensor:
        k = self.cs.top_k
        probs = ban_tokens(self.logits, self.ban).softmax(dim=-1)  # (R, V)
        top_p, top_ids = probs.topk(k, dim=-1)  # (R, K)
        rows = top_ids.shape[0]
        self.stream.repeat(k)
        out = self.stream.step(top_ids.flatten(), hidden=[-1])
        cand_hidden = out.hidden_states[-1][:, -1].to(self.device).view(rows, k, -1)  # (R, K, H)
        context_mask = self.stream.mask[::k, :-1].to(self.device)  # (R, T) without the candidate column
        penalty = degeneration_penalty(self.context, context_mask, cand_hidden)  # (R, K)
        alpha = self.cs.penalty_alpha
        best = ((1.0 - alpha) * top_p - alpha * penalty).argmax(dim=-1)  # (R,)
        keep = torch.arange(rows, device=self.device) * k + best  # (R,) rows of the fanned-out batch
        self.stream.select(keep)
        self.logits = self.stream.logits(out)[keep]
        self.context = torch.cat([self.context, cand_hidden[torch.arange(rows, device=self.device), best][:, None]], 1)
        self.pending = top_ids.gather(1, best[:, None]).squeeze(1)  # (R,)
        return torch.full_like(self.logits, float("-inf")).scatter_(1, self.pending[:, None], 0.0)

    def prefill(self, ids: Tensor, mask: Tensor) -> Tensor:
        out = self.stream.prefill(ids, mask, hidden=[-1])
        self.logits = self.stream.logits(out)
        self.context = out.hidden_states[-1].to(self.device)  # (R, L, H), normed like HF's contrastive search
        return self._choose()

    def step(self, tokens: Tensor) -> Tensor:
        if not torch.equal(tokens.to(self.device), self.pending):
            raise RuntimeError("contrastive search was fed a token it did not choose (a sampling strategy?)")
        return self._choose()

    def select(self, rows: Tensor) -> None:
        rows = rows.to(self.device)
        self.stream.select(rows)
        self.logits, self.context, self.pending = self.logits[rows], self.context[rows], self.pending[rows]
