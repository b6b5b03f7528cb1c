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
from typing import TYPE_CHECKING, Any, Protocol, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import AutoModelForCausalLM, DynamicCache

from scmoe_eval.config import DOLA_BANDS
from scmoe_eval.decoding.scmoe import scmoe_logits

if TYPE_CHECKING:
    from scmoe_eval.config import ModelConfig
    from scmoe_eval.decoding.engine import DecodeEngine
    from scmoe_eval.decoding.strategies import Strategy


class Scorer(Protocol):
    """What the engine's decode loop drives: (N, V) next-token scores for the live rows."""

    def prefill(self, ids: Tensor, mask: Tensor) -> Tensor: ...

    def step(self, tokens: Tensor) -> Tensor: ...

    def select(self, rows: Tensor) -> None: ...


class Baseline(Protocol):
    """A decoding baseline the engine runs in place of its own scorers (`generate(baseline=...)`)."""

    def scorer(self, engine: "DecodeEngine", n: int, ban: Tensor | None) -> Scorer: ...

    def rows_per_prompt(self) -> int:
        """Rows of the main model's decode forward per prompt (picks the GPU decode kernel)."""
        ...


def _ban(scores: Tensor, ids: Tensor | None) -> Tensor:
    return scores if ids is None else scores.index_fill(-1, ids.to(scores.device), float("-inf"))


Hidden = list[int] | None  # hidden_states indices to return (0 = embeddings, -1 = final normed); None: none


class _Cached:
    """One model's KV cache, attention mask and next positions over left-padded rows (stock routing).

    Unlike the engine's `_Stream` it returns the whole model output (hidden states for DoLa and
    contrastive search) and can fan rows out k-fold (contrastive-search candidates). Only the hidden
    states asked for are kept (transformers 5.x `output_hidden_states=[indices]`): at a Mixtral prefill
    all 33 would cost 33 x (R, T, 4096) activations.
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.device = model.get_input_embeddings().weight.device  # an amateur may sit on another GPU
        self.cache = DynamicCache(config=model.config)
        self.mask: Tensor | None = None  # (R, T) 1 = real token
        self.next_pos: Tensor | None = None  # (R, 1)

    def _forward(self, ids: Tensor, pos: Tensor, hidden: Hidden) -> Any:
        return self.model(
            input_ids=ids,
            attention_mask=self.mask,
            position_ids=pos,
            cache=self.cache,
            use_cache=True,
            logits_to_keep=1,
            output_hidden_states=hidden or False,
        )

    def prefill(self, ids: Tensor, mask: Tensor, hidden: Hidden = None) -> Any:
        """ids, mask (R, L) left-padded -> model output for the last position (hidden states: all L)."""
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

    def select(self, rows: Tensor) -> None:
        """Keep only `rows` (indices into the current rows, repeats allowed) in the batch and the cache."""
        rows = rows.to(self.device)
        self.cache.batch_select_indices(rows)
        self.mask = self.mask[rows]
        self.next_pos = self.next_pos[rows]

    def repeat(self, k: int) -> None:
        """Row r becomes rows r*k .. r*k+k-1 (same cache, mask and positions)."""
        self.cache.batch_repeat_interleave(k)
        self.mask = self.mask.repeat_interleave(k, 0)
        self.next_pos = self.next_pos.repeat_interleave(k, 0)


def _last_logits(out: Any, device: torch.device) -> Tensor:
    return out.logits[:, -1].float().to(device)  # (R, V)


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

    def scorer(self, engine: "DecodeEngine", n: int, ban: Tensor | None) -> Scorer:
        if self.amateur is None:
            raise ValueError("strategy.amateur: the cd strategy needs its amateur model attached (attach_amateur)")
        return _CDScorer(engine.model, self.amateur, self, engine.device, ban)

    def rows_per_prompt(self) -> int:
        return 1


class _CDScorer:
    """Expert and amateur each keep their own KV cache; both see the same chosen tokens."""

    def __init__(
        self, expert: nn.Module, amateur: nn.Module, cd: ContrastiveDecoding, device: torch.device, ban: Tensor | None
    ) -> None:
        self.expert, self.amateur = _Cached(expert), _Cached(amateur)
        self.cd, self.device, self.ban = cd, device, ban

    def _score(self, out_e: Any, out_a: Any) -> Tensor:
        z_e, z_a = _last_logits(out_e, self.device), _last_logits(out_a, self.device)  # (R, V) each
        if z_e.shape != z_a.shape:
            raise ValueError(f"strategy.amateur: vocabulary {z_a.shape[-1]} differs from the expert's {z_e.shape[-1]}")
        return _ban(scmoe_logits(z_e, z_a, self.cd.alpha, self.cd.beta), self.ban)

    def prefill(self, ids: Tensor, mask: Tensor) -> Tensor:
        return self._score(self.expert.prefill(ids, mask), self.amateur.prefill(ids, mask))

    def step(self, tokens: Tensor) -> Tensor:
        return self._score(self.expert.step(tokens), self.amateur.step(tokens))

    def select(self, rows: Tensor) -> None:
        self.expert.select(rows)
        self.amateur.select(rows)


def attach_amateur(strategy: "Strategy", amateur: nn.Module) -> "Strategy":
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
    """
    log_m = F.log_softmax(mature.float(), dim=-1)  # (R, V)
    log_p = F.log_softmax(premature.float(), dim=-1)  # (C, R, V)
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

    def scorer(self, engine: "DecodeEngine", n: int, ban: Tensor | None) -> Scorer:
        return _DoLaScorer(engine.model, self, engine.device, ban)

    def rows_per_prompt(self) -> int:
        return 1


class _DoLaScorer:
    """One forward per step with all hidden states; premature logits = lm_head(h_l) without the final norm.

    The repetition penalty covers every real token of the row so far, prompt included (HF's
    RepetitionPenaltyLogitsProcessor on input_ids, which the paper's code used), padding excluded.
    """

    def __init__(self, model: nn.Module, dola: DoLa, device: torch.device, ban: Tensor | None) -> None:
        self.stream = _Cached(model)
        self.lm_head = model.get_output_embeddings()
        self.candidates = dola_candidates(dola.layers, model.config.get_text_config().num_hidden_layers)
        self.dola, self.device, self.ban = dola, device, ban
        self.seen: Tensor | None = None  # (R, V) bool: token occurs in the row's prompt or output

    def _score(self, out: Any) -> Tensor:
        mature = _last_logits(out, self.device)  # (R, V)
        head = self.lm_head.weight.device
        hidden = torch.stack([out.hidden_states[layer][:, -1].to(head) for layer in self.candidates])  # (C, R, H)
        premature = self.lm_head(hidden).float().to(self.device)  # (C, R, V)
        scores, _ = dola_scores(mature, premature, self.dola.relative_top)
        return _ban(repetition_penalty(scores, self.seen, self.dola.penalty), self.ban)

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

    def scorer(self, engine: "DecodeEngine", n: int, ban: Tensor | None) -> Scorer:
        return _ContrastiveSearchScorer(engine.model, self, engine.device, ban)

    def rows_per_prompt(self) -> int:
        return self.top_k


class _ContrastiveSearchScorer:
    """Scores come from a candidates' forward over R*k rows (the cache fanned out k-fold); the chosen
    candidate's cache row, hidden state and next logits are kept, so the fed token needs no forward.
    The returned scores are 0 at the chosen token and -inf elsewhere (the loop's argmax takes it).
    """

    def __init__(self, model: nn.Module, cs: ContrastiveSearch, device: torch.device, ban: Tensor | None) -> None:
        self.stream = _Cached(model)
        self.cs, self.device, self.ban = cs, device, ban
        self.logits: Tensor | None = None  # (R, V) next-token logits of the current sequence
        self.context: Tensor | None = None  # (R, T, H) last-layer hidden state of every position so far
        self.pending: Tensor | None = None  # (R,) the token the scores chose

    def _choose(self) -> Tensor:
        k = self.cs.top_k
        probs = _ban(self.logits, self.ban).softmax(dim=-1)  # (R, V)
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
        self.logits = _last_logits(out, self.device)[keep]
        self.context = torch.cat([self.context, cand_hidden[torch.arange(rows, device=self.device), best][:, None]], 1)
        self.pending = top_ids.gather(1, best[:, None]).squeeze(1)  # (R,)
        return torch.full_like(self.logits, float("-inf")).scatter_(1, self.pending[:, None], 0.0)

    def prefill(self, ids: Tensor, mask: Tensor) -> Tensor:
        out = self.stream.prefill(ids, mask, hidden=[-1])
        self.logits = _last_logits(out, self.device)
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
