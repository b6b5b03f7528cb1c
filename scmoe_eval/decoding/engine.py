"""Batched decode loop: stock/routed decoding and SCMoE (strong vs weak routing of one MoE).

One loop serves every strategy; what differs is the *scorer* (decoding/streams.py) that turns the fed
tokens into (N, V) next-token scores. Batched SCMoE is the default: on CPU and on an H200 it was faster
than, or level with, two-pass at every size measured (results/bench/). Rows that finish are dropped from
the batch and the cache; `generate_continuous` also admits waiting prompts into their place.
"""

from __future__ import annotations

from collections import deque
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Callable, Iterator, Sequence

import torch
from torch import Tensor
from transformers import CompileConfig

from scmoe_eval.decoding.kernels import few_rows_head, head_suits
from scmoe_eval.decoding.sampler import GREEDY, Sampler, SamplingParams
from scmoe_eval.decoding.stopping import StopChecker
from scmoe_eval.decoding.streams import (
    Baseline,
    Contrast,
    PairedScorer,
    PlainScorer,
    Policy,
    Scorer,
    Stream,
    StreamFactory,
    TwoStreamScorer,
    new_cache,
    refuse_unjoinable,
)
from scmoe_eval.decoding.static import StaticStream, allow_recompiles, refusal
from scmoe_eval.decoding.traffic import expert_bytes, experts_modules
from scmoe_eval.models.experts import ROUTED as ROUTED_ROWS

ROUTED_MIN_BYTES = 1 << 20  # CPU: routed_rows only for experts of >= 1 MiB (smaller ones are overhead-bound)
ROUTED_SLOTS_PER_EXPERT = 4  # CPU: ... and for <= 4E expert slots per step (beyond, grouped_mm was level or faster)
PREFILL_AHEAD = 2  # continuous batching prefills at least ceil(batch_size / PREFILL_AHEAD) waiting prompts at once

if TYPE_CHECKING:
    from scmoe_eval.models.loading import LoadedModel

__all__ = ["Contrast", "DecodeEngine", "Generation", "Policy", "Stream"]  # Contrast, Policy, Stream: from streams


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


@dataclass
class _Prefilled:
    """Prompts prefilled ahead of free slots (continuous batching): their scorer, first scores and indices."""

    scorer: Scorer
    scores: Tensor
    ids: list[int]


class DecodeEngine:
    """Generates completions for a batch of prompts with one loaded MoE model."""

    def __init__(self, loaded: "LoadedModel", decode_experts: str | None = None, compile: bool = False) -> None:
        """`decode_experts`: experts implementation for decode steps (None: pick per call, see below).
        `compile`: decode steps on a static cache through `torch.compile` (CUDA graphs on a GPU);
        decoding/static.py. Off by default: it pays a compile per batch shape and is not yet measured
        faster on a GPU. Baselines and continuous batching always run eager."""
        self.decode_experts = decode_experts
        self.compile = compile
        self.model = loaded.model
        self.tokenizer = loaded.tokenizer
        self.controller = loaded.controller
        self.device = torch.device(loaded.device)
        self.sampler = Sampler()
        self.eos_ids = self._eos_ids()
        blocks = experts_modules(self.model)
        self._expert_bytes = expert_bytes(blocks[0]) if blocks else 0

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
        for <= 4E slots per step (batch-8 SCMoE, batch-16 greedy on Mixtral's E=8: mid32k B8 SCMoE 152
        vs 193 ms/token; at 64 slots grouped_mm was 7% faster) when an expert is big enough for its
        weights, not Python overhead, to set the cost (>= ROUTED_MIN_BYTES; the tiny test fixture's
        96 KiB experts stay on grouped_mm), and `paired` (batched SCMoE) rows get the few-rows LM head
        (decoding/kernels.py); docs/decode-cost.md has the measurements.
        """
        before = self.model.get_experts_implementation()
        target = self.decode_experts
        if target is None and "grouped_mm" in before.values():
            slots = rows * max(self._slots(p) for p in policies)
            if self.device.type != "cpu":
                target = "batched_mm" if slots <= self.controller.num_experts // 2 else None
            elif (slots <= ROUTED_SLOTS_PER_EXPERT * self.controller.num_experts
                  and self._expert_bytes >= ROUTED_MIN_BYTES and not self.compile):
                target = ROUTED_ROWS  # not under compile: its per-layer host sync would split the graph
        switch = target is not None and target not in before.values()
        head = paired and self.decode_experts is None and not self.compile and head_suits(self.model, rows)
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

    def _scorer(self, n: int, routing: Policy, contrast: Contrast | None, two_pass: bool,
                baseline: "Baseline | None", ban: Tensor | None, static_tokens: int | None = None) -> Scorer:
        """The scorer for n prompts (not yet prefilled); compiled streams need `static_tokens` (the most new tokens)."""
        if baseline is not None:
            return baseline.scorer(self, n, ban)
        stream = self._stream_factory(static_tokens)
        if contrast is None:
            return PlainScorer(self.model, self.controller, n, routing, ban, stream)
        if two_pass:
            strong = stream(self.model, self.controller, [contrast.strong] * n)
            weak = stream(self.model, self.controller, [contrast.weak] * n)
            return TwoStreamScorer(strong, weak, contrast.alpha, contrast.beta, ban)
        return PairedScorer(self.model, self.controller, n, contrast, ban, stream)

    def _stream_factory(self, static_tokens: int | None) -> StreamFactory:
        """`Stream`, or under `compile` a StaticStream sized for `static_tokens` new tokens."""
        if not self.compile:
            return Stream
        why = refusal(self.model.config, getattr(self.controller.adapter, "cache_class", ""))
        if why:
            raise ValueError(f"run.compile: {self.controller.adapter.name} cannot decode compiled: {why}; "
                             "use run.compile=false")
        if static_tokens is None:
            raise ValueError("compiled decoding needs a fixed batch shape: continuous batching runs eager (compile=False)")
        mode = "reduce-overhead" if self.device.type == "cuda" else "default"  # reduce-overhead = CUDA graphs
        allow_recompiles()
        step_fn = self.model.get_compiled_call(CompileConfig(dynamic=False, mode=mode))  # compiled once, kept on the model
        if step_fn == self.model.__call__:  # transformers hands some families back uncompiled (Llama 4)
            raise ValueError(f"run.compile: transformers does not compile {self.controller.adapter.name} "
                             "(get_compiled_call returns its eager call); use run.compile=false")
        return partial(StaticStream, step_fn=step_fn, max_new_tokens=static_tokens)

    @staticmethod
    def _limits(max_new_tokens: int | Sequence[int], n: int) -> list[int]:
        limits = [max_new_tokens] * n if isinstance(max_new_tokens, int) else [int(t) for t in max_new_tokens]
        if len(limits) != n:
            raise ValueError(f"max_new_tokens: one limit per prompt expected ({n}), got {len(limits)}")
        if min(limits) < 1:
            raise ValueError("max_new_tokens must be >= 1")
        return limits

    @staticmethod
    def _forward_rows(m: int, routing: Policy, contrast: Contrast | None, two_pass: bool,
                      baseline: "Baseline | None") -> tuple[int, list[Policy]]:
        """Rows and routing policies of one decode forward for m live prompts (picks the decode kernels)."""
        if baseline is not None:
            return m * baseline.rows_per_prompt(), [None]
        if contrast is None:
            return m, [routing]
        return (m if two_pass else 2 * m), [contrast.strong, contrast.weak]

    @torch.inference_mode()
    def generate(
        self,
        prompts: Sequence[str],
        *,
        stops: Sequence[str] = (),
        max_new_tokens: int | Sequence[int],
        seeds: Sequence[int] | None = None,
        sampling: SamplingParams = GREEDY,
        routing: Policy = None,
        contrast: Contrast | None = None,
        ban_eos: bool = False,
        two_pass: bool | None = None,
        baseline: "Baseline | None" = None,
        num_samples: int = 1,
    ) -> list[Generation]:
        """Decode every prompt until EOS (unless banned), a stop string, or max_new_tokens (one int, or one per prompt).

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
        m = n * num_samples  # decode rows per routing stream
        limits = [t for t in self._limits(max_new_tokens, n) for _ in range(num_samples)]
        generators = self._generators(seeds, m, sampling)
        ban = torch.tensor(self.eos_ids, device=self.device) if ban_eos and self.eos_ids else None
        two_pass = bool(two_pass)  # None: batched, measured faster or equal on CPU and H200 (docs/decoding.md)
        scorer = self._scorer(n, routing, contrast, two_pass, baseline, ban, max(limits))
        checker = StopChecker(self.tokenizer, stops)
        eos = set() if ban_eos else set(self.eos_ids)

        tokens: list[list[int]] = [[] for _ in range(m)]
        reasons: list[str | None] = [None] * m
        rows, policies = self._forward_rows(m, routing, contrast, two_pass, baseline)
        with self.controller.use(None):  # whatever routing was in force comes back afterwards
            scores = scorer.prefill(*self.encode(prompts))  # (n, V)
            if num_samples > 1:  # one prefill per prompt, its cache shared by the samples
                fan = torch.arange(n, device=self.device).repeat_interleave(num_samples)
                scorer.select(fan)
                scores = scores[fan.to(scores.device)]
            paired = contrast is not None and not two_pass and baseline is None
            with self._decode_kernels(rows, policies, paired):
                live = list(range(m))
                while live:
                    scores, live = self._advance(scorer, scores, live, sampling, generators, checker, eos, limits,
                                                 tokens, reasons)
        return [self._finish(checker, ids, reason) for ids, reason in zip(tokens, reasons)]

    @torch.inference_mode()
    def generate_continuous(
        self,
        prompts: Sequence[str],
        *,
        batch_size: int,
        stops: Sequence[str] = (),
        max_new_tokens: int | Sequence[int],
        seeds: Sequence[int] | None = None,
        sampling: SamplingParams = GREEDY,
        routing: Policy = None,
        contrast: Contrast | None = None,
        ban_eos: bool = False,
        two_pass: bool | None = None,
        on_finish: Callable[[int, Generation], None] | None = None,
    ) -> list[Generation]:
        """`generate` over many prompts with at most `batch_size` in flight: as rows finish, waiting
        prompts are prefilled and join the running batch and cache (left-padded to its length), so the
        batch stays full instead of running until its longest row ends. SCMoE rows join in pairs.
        Prompts are prefilled a group at a time (at least ceil(batch_size / PREFILL_AHEAD)), ahead of
        the slots that free up one by one: a prefill forward has a fixed cost, and a prompt's cache and
        first scores do not change while it waits. The joined cache grows in place (RoomyLayer).

        Same results as `generate` per prompt (fp32: the same token ids as batch 1, tested); in bf16
        a row's padding differs with its batch companions, the same caveat as static batching.
        Baselines (CD, DoLa, contrastive search) keep per-row state of their own and are not supported.
        `on_finish(i, generation)` is called once per prompt as soon as its row ends (so a caller can
        save it before the rest of the batch is done).
        """
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        refuse_unjoinable(new_cache(self.model, self.controller))  # before any prefill: no tensors built yet
        n = len(prompts)
        if n == 0:
            return []
        limits = self._limits(max_new_tokens, n)
        generators = self._generators(seeds, n, sampling)
        ban = torch.tensor(self.eos_ids, device=self.device) if ban_eos and self.eos_ids else None
        two_pass = bool(two_pass)
        checker = StopChecker(self.tokenizer, stops)
        eos = set() if ban_eos else set(self.eos_ids)
        tokens: list[list[int]] = [[] for _ in range(n)]
        reasons: list[str | None] = [None] * n
        out: list[Generation | None] = [None] * n
        rows, policies = self._forward_rows(min(batch_size, n), routing, contrast, two_pass, None)
        paired = contrast is not None and not two_pass
        waiting, live = deque(range(n)), []
        scorer: Scorer | None = None
        scores = None
        ready: _Prefilled | None = None
        group = -(-batch_size // PREFILL_AHEAD)
        with self.controller.use(None), ExitStack() as kernels:
            while waiting or ready or live:
                prefilled = False
                while len(live) < batch_size and (ready or waiting):
                    if ready is None:  # prefill under the model's own kernels, a group ahead of the free slots
                        kernels.close()
                        new = [waiting.popleft() for _ in range(min(max(batch_size - len(live), group), len(waiting)))]
                        joining = self._scorer(len(new), routing, contrast, two_pass, None, ban)
                        ready = _Prefilled(joining, joining.prefill(*self.encode([prompts[i] for i in new])), new)
                        prefilled = True
                    scorer, scores, ready, joined = self._admit(scorer, scores, ready, batch_size - len(live))
                    live += joined
                if prefilled:
                    kernels.enter_context(self._decode_kernels(rows, policies, paired))
                before = len(live)
                stepped = live
                scores, live = self._advance(scorer, scores, live, sampling, generators, checker, eos, limits,
                                             tokens, reasons)
                for i in stepped:
                    if reasons[i] is not None and out[i] is None:
                        out[i] = self._finish(checker, tokens[i], reasons[i])
                        if on_finish is not None:
                            on_finish(i, out[i])
                if not live:
                    scorer = None  # every row finished: the next admission starts a fresh cache
                elif len(live) < before:
                    scorer.trim_left()
        assert all(gen is not None for gen in out), "the loop ends only when every row has finished"
        return out  # type: ignore[return-value]

    @staticmethod
    def _admit(scorer: Scorer | None, scores: Tensor | None, ready: "_Prefilled",
               free: int) -> tuple[Scorer, Tensor, "_Prefilled | None", list[int]]:
        """Move the first `free` prefilled prompts into the running batch (when none runs, they start it).

        Returns the batch's scorer and scores, the prompts still waiting prefilled (None when none)
        and the indices of those admitted.
        """
        k = min(free, len(ready.ids))
        joined = ready.ids[:k]
        if k == len(ready.ids):
            if scorer is None:
                return ready.scorer, ready.scores, None, joined
            scorer.extend(ready.scorer)
            return scorer, torch.cat([scores, ready.scores]), None, joined
        assert scorer is not None, "a prefill group never outnumbers the slots of an empty batch"
        rows = torch.arange(len(ready.ids), device=ready.scores.device)
        scorer.extend(ready.scorer, rows[:k])
        ready.scorer.select(rows[k:])
        rest = _Prefilled(ready.scorer, ready.scores[k:], ready.ids[k:])
        return scorer, torch.cat([scores, ready.scores[:k]]), rest, joined

    def _advance(
        self,
        scorer: Scorer,
        scores: Tensor,
        live: list[int],
        sampling: SamplingParams,
        generators: list[torch.Generator] | None,
        checker: StopChecker,
        eos: set[int],
        limits: list[int],
        tokens: list[list[int]],
        reasons: list[str | None],
    ) -> tuple[Tensor | None, list[int]]:
        """One step: pick and record a token per live row, drop finished rows, feed the rest.

        `live[r]` is the index (into tokens, limits, generators) of row r; returns the next scores
        and the rows still live (scores None when none is).
        """
        rows_gen = None if generators is None else [generators[i] for i in live]
        chosen = self.sampler(scores, sampling, rows_gen)  # (R,)
        keep: list[int] = []
        for row, (i, tok) in enumerate(zip(live, chosen.tolist())):
            tokens[i].append(tok)
            if tok in eos:
                reasons[i] = "eos"
            elif checker.hit(tokens[i]):
                reasons[i] = "stop"
            elif len(tokens[i]) >= limits[i]:
                reasons[i] = "length"
            else:
                keep.append(row)
        if not keep:
            return None, []
        if len(keep) < len(live):
            rows = torch.tensor(keep, device=self.device)
            scorer.select(rows)
            chosen = chosen[rows]
            live = [live[r] for r in keep]
        return scorer.step(chosen), live

    @staticmethod
    def _finish(checker: StopChecker, ids: list[int], reason: str | None) -> Generation:
        decoded = checker.finish(ids)
        return Generation(decoded.text, ids, reason or "length", decoded.stop, len(ids))
