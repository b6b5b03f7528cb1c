"""Batched decode loop: stock/routed decoding and SCMoE (strong vs weak routing of one MoE).

One loop serves every strategy; what differs is the *scorer* that turns the fed tokens into (N, V)
next-token scores:
- `_PlainScorer`: one forward per step, every row under one routing policy (None = stock).
- `_PairedScorer` (SCMoE, batched): prompt i occupies rows (2i, 2i+1) = (strong, weak) of ONE forward
  and ONE KV cache, so the weak prefill runs under weak routing too, as in the paper's code.
- `TwoStreamScorer` (SCMoE two-pass, also contrastive decoding): two forwards per step, each with its own cache.
Batched is the default: on CPU and on an H200 it was faster than, or level with, two-pass at every
size measured (results/bench/). Rows that finish are dropped from the batch and the cache.
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator, Optional, Sequence

import torch
from torch import Tensor
from transformers import DynamicCache

from scmoe_eval.decoding.kernels import few_rows_head, head_suits
from scmoe_eval.decoding.sampler import GREEDY, Sampler, SamplingParams
from scmoe_eval.decoding.scmoe import scmoe_logits
from scmoe_eval.decoding.stopping import StopChecker
from scmoe_eval.models.experts import ROUTED as ROUTED_ROWS

if TYPE_CHECKING:
    from scmoe_eval.decoding.baselines import Baseline
    from scmoe_eval.models.loading import LoadedModel
    from scmoe_eval.models.routing import RoutingController, RoutingPolicy

Policy = Optional["RoutingPolicy"]  # None = the model's stock routing


@dataclass
class Generation:
    """One decoded sample: text cut before the stop (not stripped) plus all generated token ids."""

    text: str
    token_ids: list[int]
    stop_reason: str  # "stop" | "eos" | "length"
    stop: str | None
    num_tokens: int

    def to_record(self) -> dict:
        return {
            "completion": self.text,
            "token_ids": self.token_ids,
            "stop_reason": self.stop_reason,
            "stop": self.stop,
            "num_tokens": self.num_tokens,
        }


@dataclass(frozen=True)
class Contrast:
    """SCMoE settings: strong and weak routing of the same model, plausibility alpha, contrast beta."""

    strong: "RoutingPolicy"
    weak: "RoutingPolicy"
    alpha: float = 0.1
    beta: float = 0.5


Hidden = Optional[list[int]]  # hidden_states indices a forward returns (0 = embeddings, -1 = final normed)


class Stream:
    """One model's KV cache, attention mask and next positions over left-padded rows.

    Rows run under fixed routing policies (one per row; None = stock) set on `controller` before
    each forward; a model without routing hooks (a CD amateur) passes `controller=None`. prefill and
    step return the whole model output (hidden states only for the `hidden` indices asked for);
    `logits(out)` gives the last position's float32 logits on `out_device` (default: the model's).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        controller: "RoutingController | None" = None,
        policies: Sequence["RoutingPolicy"] | None = None,
        out_device: torch.device | None = None,
    ) -> None:
        self.model = model
        self.controller = controller
        self.policies = None if policies is None else tuple(policies)  # one per row; None = stock for all rows
        self.device = model.get_input_embeddings().weight.device
        self.out_device = out_device if out_device is not None else self.device
        self.cache = DynamicCache(config=model.config)
        self.mask: Tensor | None = None  # (R, T) 1 = real token
        self.next_pos: Tensor | None = None  # (R, 1)

    def _route(self) -> None:
        if self.controller is None:
            return
        current = self.controller.policies
        if current is not self.policies:
            if current != self.policies:  # re-set only on change (two-pass alternates, rows get dropped)
                self.controller.set(self.policies)
            self.policies = self.controller.policies  # the controller's equal tuple: later steps test identity only

    def _forward(self, ids: Tensor, pos: Tensor, hidden: Hidden) -> Any:
        self._route()
        return self.model(
            input_ids=ids,
            attention_mask=self.mask,
            position_ids=pos,
            cache=self.cache,
            use_cache=True,
            logits_to_keep=1,
            output_hidden_states=hidden or False,  # a list keeps only those layers (transformers 5.x)
        )

    def prefill(self, ids: Tensor, mask: Tensor, hidden: Hidden = None) -> Any:
        """ids, mask (R, L) left-padded -> model output (last-position logits; hidden states for all L)."""
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

    def logits(self, out: Any) -> Tensor:
        return out.logits[:, -1].float().to(self.out_device)  # (R, V); lm_head may sit on another GPU

    def select(self, rows: Tensor) -> None:
        """Keep only `rows` (indices into the current rows, repeats allowed) in the batch and the cache."""
        rows = rows.to(self.device)
        self.cache.batch_select_indices(rows)
        self.mask = self.mask[rows]
        self.next_pos = self.next_pos[rows]
        if self.policies is not None:
            self.policies = tuple(self.policies[r] for r in rows.tolist())

    def repeat(self, k: int) -> None:
        """Row r becomes rows r*k .. r*k+k-1 (same cache, mask and positions)."""
        self.cache.batch_repeat_interleave(k)
        self.mask = self.mask.repeat_interleave(k, 0)
        self.next_pos = self.next_pos.repeat_interleave(k, 0)
        if self.policies is not None:
            self.policies = tuple(p for p in self.policies for _ in range(k))


def ban_tokens(scores: Tensor, ids: Tensor | None) -> Tensor:
    """scores (R, V) with the `ids` columns set to -inf (the EOS ban); None bans nothing."""
    return scores if ids is None else scores.index_fill(-1, ids.to(scores.device), float("-inf"))


class _PlainScorer:
    def __init__(self, model, controller, n: int, policy: Policy, ban: Tensor | None) -> None:
        stock = policy is None or policy.kind == "default"
        self.stream = Stream(model, controller, None if stock else [policy] * n)
        self.ban = ban

    def prefill(self, ids: Tensor, mask: Tensor) -> Tensor:
        return ban_tokens(self.stream.logits(self.stream.prefill(ids, mask)), self.ban)

    def step(self, tokens: Tensor) -> Tensor:
        return ban_tokens(self.stream.logits(self.stream.step(tokens)), self.ban)

    def select(self, rows: Tensor) -> None:
        self.stream.select(rows)


class _PairedScorer:
    """SCMoE in one forward: rows (2i, 2i+1) = (strong_i, weak_i), the same token fed to both."""

    def __init__(self, model, controller, n: int, contrast: Contrast, ban: Tensor | None) -> None:
        self.stream = Stream(model, controller, [contrast.strong, contrast.weak] * n)
        self.contrast = contrast
        self.ban = ban

    def _score(self, logits: Tensor) -> Tensor:  # (2N, V) -> (N, V)
        c = self.contrast
        return ban_tokens(scmoe_logits(logits[0::2], logits[1::2], c.alpha, c.beta), self.ban)  # ban after the mask, as the paper's code

    def prefill(self, ids: Tensor, mask: Tensor) -> Tensor:
        out = self.stream.prefill(ids.repeat_interleave(2, 0), mask.repeat_interleave(2, 0))
        return self._score(self.stream.logits(out))

    def step(self, tokens: Tensor) -> Tensor:
        return self._score(self.stream.logits(self.stream.step(tokens[:, None].expand(-1, 2).reshape(-1))))  # t0 t0 t1 t1

    def select(self, rows: Tensor) -> None:
        self.stream.select(torch.stack([2 * rows, 2 * rows + 1], dim=1).flatten())


class TwoStreamScorer:
    """Contrast of two streams fed the same tokens, each with its own cache: SCMoE two-pass (strong
    and weak routing of one model, the paper code's layout) and contrastive decoding (expert, amateur).
    Scores are float32 on the strong stream's `out_device`."""

    def __init__(self, strong: Stream, weak: Stream, alpha: float, beta: float, ban: Tensor | None) -> None:
        self.strong, self.weak = strong, weak
        self.alpha, self.beta, self.ban = alpha, beta, ban

    def _score(self, out_s: Any, out_w: Any) -> Tensor:
        z_s, z_w = self.strong.logits(out_s), self.weak.logits(out_w)  # (R, V) each
        return ban_tokens(scmoe_logits(z_s, z_w, self.alpha, self.beta), self.ban)  # ban after the mask

    def prefill(self, ids: Tensor, mask: Tensor) -> Tensor:
        return self._score(self.strong.prefill(ids, mask), self.weak.prefill(ids, mask))

    def step(self, tokens: Tensor) -> Tensor:
        return self._score(self.strong.step(tokens), self.weak.step(tokens))

    def select(self, rows: Tensor) -> None:
        self.strong.select(rows)
        self.weak.select(rows)


class DecodeEngine:
    """Generates completions for a batch of prompts with one loaded MoE model."""

    def __init__(self, loaded: "LoadedModel", decode_experts: str | None = None) -> None:
        """`decode_experts`: experts implementation for decode steps (None: pick per call, see below)."""
        self.decode_experts = decode_experts
        self.model = loaded.model
        self.tokenizer = loaded.tokenizer
        self.controller = loaded.controller
        self.device = torch.device(loaded.device)
        self.sampler = Sampler()
        self.eos_ids = self._eos_ids()

    def _eos_ids(self) -> list[int]:
        ids: set[int] = set()
        for source in (self.tokenizer.eos_token_id, getattr(self.model.generation_config, "eos_token_id", None)):
            if source is not None:
                ids.update([source] if isinstance(source, int) else source)
        return sorted(ids)

    def _slots(self, policy: Policy) -> int:
        """Experts one token asks for under `policy` (the controller pads every row to the widest)."""
        if policy is None or policy.kind == "default":
            return self.controller.default_k
        return {"rank": 1, "topp": self.controller.num_experts}.get(policy.kind, policy.k)

    @contextmanager
    def _decode_kernels(self, rows: int, policies: Sequence[Policy], paired: bool = False) -> Iterator[None]:
        """Pick the experts implementation for the single-token decode steps (prefill keeps its own).

        Off CPU, batched_mm gathers one weight copy per (token, expert slot): fastest while there are
        few slots, ruinous with many (H200, Mixtral-8x7B shape: 27 vs 36 ms/token at B=1, 126 vs 40 at
        B=8, results/bench/h200_decode_*.json). So grouped_mm becomes batched_mm only for <= E/2 slots per step.
        On CPU, grouped_mm becomes routed_rows (models/experts.py: zero-weight padding slots skipped)
        for <= E slots per step, and `paired` (batched SCMoE) rows get the few-rows LM head
        (decoding/kernels.py); docs/decode-cost.md has the measurements.
        """
        before = self.model.get_experts_implementation()
        target = self.decode_experts
        if target is None and "grouped_mm" in before.values():
            slots = rows * max(self._slots(p) for p in policies)
            if self.device.type != "cpu":
                target = "batched_mm" if slots <= self.controller.num_experts // 2 else None
            elif slots <= self.controller.num_experts:
                target = ROUTED_ROWS
        switch = target is not None and target not in before.values()
        head = paired and self.decode_experts is None and head_suits(self.model, rows)
        if switch:
            self.model.set_experts_implementation(target)
        try:
            with few_rows_head(self.model) if head else nullcontext():
                yield
        finally:
            if switch:
                self.model.set_experts_implementation(before)

    def encode(self, prompts: Sequence[str]) -> tuple[Tensor, Tensor]:
        """Tokenize with BOS (add_special_tokens=True, as the paper's code) and LEFT-pad: ids, mask (N, L)."""
        rows = [self.tokenizer(p, add_special_tokens=True)["input_ids"] for p in prompts]
        width = max(len(r) for r in rows)
        pad = self.tokenizer.pad_token_id
        pad = pad if pad is not None else (self.eos_ids[0] if self.eos_ids else 0)
        ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows], device=self.device)
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=self.device)
        return ids, mask

    def _generators(self, seeds: Sequence[int] | None, n: int, sampling: SamplingParams) -> list[torch.Generator] | None:
        if sampling.greedy:
            return None
        if seeds is None or len(seeds) != n:
            raise ValueError("sampling needs one seed per prompt")
        return [torch.Generator(device=self.device).manual_seed(int(s)) for s in seeds]

    @torch.inference_mode()
    def generate(
        self,
        prompts: Sequence[str],
        *,
        stops: Sequence[str] = (),
        max_new_tokens: int,
        seeds: Sequence[int] | None = None,
        sampling: SamplingParams = GREEDY,
        routing: Policy = None,
        contrast: Contrast | None = None,
        ban_eos: bool = False,
        two_pass: bool | None = None,
        baseline: "Baseline | None" = None,
        num_samples: int = 1,
    ) -> list[Generation]:
        """Decode every prompt until EOS (unless banned), a stop string, or max_new_tokens.

        `routing` applies to plain decoding; `contrast` switches to SCMoE (its own strong/weak policies),
        batched, or with `two_pass=True` two forwards per step (None: batched, the faster mode). One seed per prompt drives a
        per-row generator, so a sample never depends on the rest of the batch. `baseline` (CD, DoLa,
        contrastive search; decoding/baselines.py) supplies its own scorer under stock routing.
        `num_samples` > 1 prefills each prompt once and fans its KV cache out to that many rows; `seeds`
        then holds one seed per (prompt, sample), prompt-major, and so does the returned list.
        """
        if num_samples < 1:
            raise ValueError("num_samples must be >= 1")
        n = len(prompts)
        if n == 0:
            return []
        if max_new_tokens < 1:
            raise ValueError("max_new_tokens must be >= 1")
        generators = self._generators(seeds, n * num_samples, sampling)
        ban = torch.tensor(self.eos_ids, device=self.device) if ban_eos and self.eos_ids else None
        two_pass = bool(two_pass)  # None: batched, measured faster or equal on CPU and H200 (docs/decoding.md)
        if baseline is not None:
            scorer = baseline.scorer(self, n, ban)
        elif contrast is None:
            scorer = _PlainScorer(self.model, self.controller, n, routing, ban)
        elif two_pass:
            strong = Stream(self.model, self.controller, [contrast.strong] * n)
            weak = Stream(self.model, self.controller, [contrast.weak] * n)
            scorer = TwoStreamScorer(strong, weak, contrast.alpha, contrast.beta, ban)
        else:
            scorer = _PairedScorer(self.model, self.controller, n, contrast, ban)
        checker = StopChecker(self.tokenizer, stops)
        eos = set() if ban_eos else set(self.eos_ids)

        tokens: list[list[int]] = [[] for _ in range(n * num_samples)]
        reasons: list[str | None] = [None] * (n * num_samples)
        m = n * num_samples  # decode rows per routing stream
        if baseline is not None:  # rows and routing policies of one decode forward
            rows, policies = m * baseline.rows_per_prompt(), [None]
        elif contrast is None:
            rows, policies = m, [routing]
        else:
            rows, policies = (m if two_pass else 2 * m), [contrast.strong, contrast.weak]
        with self.controller.use(None):  # whatever routing was in force comes back afterwards
            scores = scorer.prefill(*self.encode(prompts))  # (n, V)
            if num_samples > 1:  # one prefill per prompt, its cache shared by the samples
                fan = torch.arange(n, device=self.device).repeat_interleave(num_samples)
                scorer.select(fan)
                scores = scores[fan.to(scores.device)]
            paired = contrast is not None and not two_pass and baseline is None
            with self._decode_kernels(rows, policies, paired):
                self._decode(scorer, scores, sampling, generators, checker, eos, max_new_tokens, tokens, reasons)
        return [self._finish(checker, ids, reason) for ids, reason in zip(tokens, reasons)]

    def _decode(
        self,
        scorer: "_PlainScorer | _PairedScorer | TwoStreamScorer",
        scores: Tensor,
        sampling: SamplingParams,
        generators: list[torch.Generator] | None,
        checker: StopChecker,
        eos: set[int],
        max_new_tokens: int,
        tokens: list[list[int]],
        reasons: list[str | None],
    ) -> None:
        """Pick, record and feed tokens until every row has finished; fills `tokens` and `reasons`."""
        live = list(range(len(tokens)))  # prompt index of every row still in the batch
        while True:
            rows_gen = None if generators is None else [generators[i] for i in live]
            chosen = self.sampler(scores, sampling, rows_gen)  # (R,)
            keep: list[int] = []
            for row, (i, tok) in enumerate(zip(live, chosen.tolist())):
                tokens[i].append(tok)
                if tok in eos:
                    reasons[i] = "eos"
                elif checker.hit(tokens[i]):
                    reasons[i] = "stop"
                elif len(tokens[i]) >= max_new_tokens:
                    reasons[i] = "length"
                else:
                    keep.append(row)
            if not keep:
                break
            if len(keep) < len(live):
                rows = torch.tensor(keep, device=self.device)
                scorer.select(rows)
                chosen = chosen[rows]
                live = [live[r] for r in keep]
            scores = scorer.step(chosen)

    @staticmethod
    def _finish(checker: StopChecker, ids: list[int], reason: str | None) -> Generation:
        decoded = checker.finish(ids)
        return Generation(decoded.text, ids, reason or "length", decoded.stop, len(ids))
