"""The lm-eval model backend `scmoe`: any lm-eval task under our routing policies and decoding strategies.

- generate_until: our DecodeEngine with the chosen strategy (its routing, contrast, EOS rule), the
  request's stop strings, max_gen_toks, do_sample and temperature.
- loglikelihood / loglikelihood_rolling: one forward over context + continuation per request,
  batched (left-padded, deduplicated by input), under the strategy's routing (`scoring_policy`), or
  the SCMoE-MC score with `loglikelihood=scmoe` (scoring.py).
Tokenisation follows lm-eval's `hf` backend (TemplateLM's context/continuation split, BOS added by
the tokenizer unless the text already starts with it), so stock-routing scores match `--model hf`.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import defaultdict
from typing import Any, Optional, Sequence

import torch
from torch import Tensor

try:
    from lm_eval.api.model import TemplateLM
    from lm_eval.api.registry import register_model
    from lm_eval.models.utils import normalize_gen_kwargs, resolve_max_length
    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
except ImportError as err:  # the optional extra is missing
    raise ImportError("the scmoe lm-eval backend needs lm-eval: pip install -e '.[lmeval]' (make install does)") from err
from tqdm.auto import tqdm

from scmoe_eval.config import SCMOE_STRATEGIES, BASELINE_STRATEGIES, ExperimentConfig, used_policies
from scmoe_eval.decoding.engine import DecodeEngine, Generation
from scmoe_eval.decoding.sampler import GREEDY, SamplingParams
from scmoe_eval.decoding.strategies import Strategy, build_strategy, sample_seed
from scmoe_eval.lmeval.args import BackendOptions, check, parse_model_args
from scmoe_eval.lmeval.scoring import scmoe_token_logprobs, token_logprobs
from scmoe_eval.models.loading import LoadedModel, load_model
from scmoe_eval.models.routing import RoutingPolicy
from scmoe_eval.pipeline import item_seed

log = logging.getLogger(__name__)
GEN_KEYS = ("until", "max_gen_toks", "do_sample", "temperature", "top_p", "top_k")
Request = tuple[Any, list[int], list[int]]  # ((context, continuation) or None, context ids, continuation ids)


def scoring_policy(cfg: ExperimentConfig) -> Optional[RoutingPolicy]:
    """The routing loglikelihood runs under: the strategy's routing, SCMoE's strong one, None = stock."""
    s = cfg.strategy
    if s.name in SCMOE_STRATEGIES:
        policy = RoutingPolicy.from_config(s.strong)
    elif s.name in BASELINE_STRATEGIES:
        return None
    else:
        policy = RoutingPolicy.from_config(s.routing)
    return None if policy.kind == "default" else policy


@register_model("scmoe")
class SCMoELM(TemplateLM):
    """lm-eval `LM` over one MoE checkpoint; `model_args` are our config keys (docs/lmeval.md)."""

    def __init__(
        self,
        batch_size: Any = None,
        max_batch_size: Any = None,
        device: Any = None,
        *,
        loaded: LoadedModel | None = None,
        **model_args: Any,
    ) -> None:
        """Validate `model_args` (no weights touched), then load the model unless `loaded` is given.

        `max_batch_size` (lm-eval's auto batch size cap) is accepted and ignored: batches are run.batch_size.
        """
        super().__init__()
        parsed = parse_model_args(model_args, batch_size=batch_size, device=device)
        resolved, _ = check(parsed)
        self.config: ExperimentConfig = parsed.cfg  # as given (fixture:<family> kept), for the run store
        self.options: BackendOptions = parsed.options
        if loaded is None:
            log.info("loading %s from %s", resolved.model.name, resolved.model.path)
            loaded = load_model(resolved.model)
        for policy in used_policies(resolved.strategy).values():
            loaded.controller.check(RoutingPolicy.from_config(policy))
        self.loaded = loaded
        self.tokenizer = loaded.tokenizer
        self.engine = DecodeEngine(loaded)
        self.strategy: Strategy = build_strategy(resolved.strategy)
        if resolved.strategy.name == "cd":
            from scmoe_eval.decoding.baselines import attach_amateur, load_amateur

            self.strategy = attach_amateur(self.strategy, load_amateur(resolved.strategy.amateur, resolved.model))
        self.policy = scoring_policy(resolved)
        self.batch_size = resolved.run.batch_size
        self._device = loaded.device
        self.generations: list[dict] = []  # one record per generate_until call, for the run store

    # ------------------------------------------------------------------ tokenizer facts lm-eval asks for
    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_token_id

    @property
    def prefix_token_id(self) -> int:
        """What an empty context is conditioned on: BOS, else EOS (as lm-eval's hf backend)."""
        bos = self.tokenizer.bos_token_id
        return bos if bos is not None else self.tokenizer.eos_token_id

    @property
    def max_length(self) -> int:
        if self.options.max_length is not None:
            return self.options.max_length
        return resolve_max_length(self.loaded.model.config, self.tokenizer)

    @property
    def tokenizer_name(self) -> str:
        return self.tokenizer.name_or_path.replace("/", "__")

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        return self.tokenizer.apply_chat_template(
            chat_history, tokenize=False, add_generation_prompt=add_generation_prompt
        )

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs: Any) -> list[int]:
        """Token ids; by default with BOS, unless the text already starts with the BOS string."""
        if add_special_tokens is None:
            bos = self.tokenizer.bos_token
            add_special_tokens = not (bos and string.startswith(bos))
        return self.tokenizer.encode(string, add_special_tokens=add_special_tokens)

    # ------------------------------------------------------------------ scoring
    @torch.inference_mode()
    def _last_logits(self, rows: Sequence[list[int]], keep: int, policies: Optional[list[RoutingPolicy]]) -> Tensor:
        """One forward over left-padded rows -> float32 logits of the last `keep` positions (B, keep, V)."""
        width = max(len(r) for r in rows)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.eot_token_id
        ids = torch.tensor([[pad] * (width - len(r)) + list(r) for r in rows], device=self._device)
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=self._device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)  # padding never shifts positions
        with self.loaded.controller.use(policies):
            out = self.loaded.model(
                input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False, logits_to_keep=keep
            )
        return out.logits.float()

    def _score_batch(self, inputs: list[tuple[int, ...]], keeps: list[int]) -> list[Tensor]:
        """Per input: (keep, V) logits, or (2, keep, V) strong/weak logits in SCMoE-MC mode."""
        keep = max(keeps)
        if self.options.loglikelihood != "scmoe":
            logits = self._last_logits(inputs, keep, None if self.policy is None else [self.policy] * len(inputs))
            return [logits[i, keep - k :] for i, k in enumerate(keeps)]
        contrast = self.strategy.contrast
        rows = [row for row in inputs for _ in (0, 1)]  # rows (2i, 2i+1) = (strong_i, weak_i), one forward
        logits = self._last_logits(rows, keep, [contrast.strong, contrast.weak] * len(inputs))
        return [logits[2 * i : 2 * i + 2, keep - k :] for i, k in enumerate(keeps)]

    def _continuation_logprob(self, logits: Tensor, continuation: list[int]) -> tuple[float, bool]:
        tokens = torch.tensor(continuation, device=logits.device)
        n = len(continuation)
        if self.options.loglikelihood == "scmoe":
            c = self.strategy.contrast
            logp, greedy = scmoe_token_logprobs(logits[0, -n:], logits[1, -n:], tokens, c.alpha, c.beta)
        else:
            logp, greedy = token_logprobs(logits[-n:], tokens)
        return float(logp.sum()), bool(greedy.all())

    def _loglikelihood_tokens(self, requests: list[Request], disable_tqdm: bool = False, **kwargs: Any) -> list[tuple[float, bool]]:
        """(log p(continuation | context), greedy?) per request; one forward per distinct input, batched."""
        members: dict[tuple[int, ...], list[int]] = defaultdict(list)  # model input -> requests it serves
        for i, (_, context, continuation) in enumerate(requests):
            if not 0 < len(continuation) <= self.max_length:
                raise ValueError(f"request {i}: continuation of {len(continuation)} tokens; "
                                 f"it must be 1..max_length={self.max_length}")
            whole = (list(context) + list(continuation))[-(self.max_length + 1) :]
            members[tuple(whole[:-1])].append(i)  # the last token is predicted, never fed
        inputs = sorted(members, key=lambda ids: (-len(ids), ids))  # longest first: padding and OOMs show early
        out: list[tuple[float, bool] | None] = [None] * len(requests)
        bar = tqdm(total=len(requests), disable=disable_tqdm, desc="loglikelihood (scmoe)")
        for lo in range(0, len(inputs), self.batch_size):
            batch = inputs[lo : lo + self.batch_size]
            keeps = [max(len(requests[i][2]) for i in members[ids]) for ids in batch]
            for ids, logits in zip(batch, self._score_batch(batch, keeps)):
                for i in members[ids]:
                    key, _, continuation = requests[i]
                    out[i] = self._continuation_logprob(logits, list(continuation))
                    if key is not None:
                        self.cache_hook.add_partial("loglikelihood", key, out[i])
                    bar.update(1)
        bar.close()
        return out  # type: ignore[return-value]

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
        """Whole-string log-likelihood over lm-eval's disjoint rolling windows of max_length tokens."""
        windows: list[Request] = []
        owner: list[int] = []
        for i, (string,) in enumerate(req.args for req in requests):
            for context, continuation in map(
                make_disjoint_window,
                get_rolling_token_windows(
                    token_list=self.tok_encode(string), prefix_token=self.prefix_token_id,
                    max_seq_len=self.max_length, context_len=1,
                ),
            ):
                windows.append((None, context, continuation))
                owner.append(i)
        totals = [0.0] * len(requests)
        for i, (logp, _) in zip(owner, self._loglikelihood_tokens(windows, disable_tqdm=disable_tqdm)):
            totals[i] += logp
        for req, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, total)
        return totals

    # ------------------------------------------------------------------ generation
    def _sampling(self, gen_kwargs: dict, do_sample: bool, temperature: float, top_p: Any, top_k: Any) -> SamplingParams:
        """The request's do_sample / temperature win; a request that sets neither keeps the strategy's sampling."""
        if "do_sample" not in gen_kwargs and "temperature" not in gen_kwargs:
            return self.strategy.sampling
        if not do_sample:
            return GREEDY
        return SamplingParams(
            temperature=float(temperature) if temperature else 1.0,  # do_sample with T=0: HF generate's default T
            top_k=int(top_k or 0), top_p=float(top_p if top_p is not None else 1.0),
        )

    def _gen_settings(self, gen_kwargs: dict) -> tuple[tuple[str, ...], int, SamplingParams]:
        unknown = sorted(set(gen_kwargs) - set(GEN_KEYS))
        if unknown:
            raise ValueError(f"generation kwargs {unknown} are not supported by the scmoe backend; "
                             f"supported: {', '.join(GEN_KEYS)}")
        kw = normalize_gen_kwargs(gen_kwargs, self.config.run.max_new_tokens)
        sampling = self._sampling(gen_kwargs, kw["do_sample"], kw.get("temperature", 0.0), kw.get("top_p"), kw.get("top_k"))
        return tuple(kw["until"]), int(kw["max_gen_toks"]), sampling

    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        """Decode every request with the strategy; batches of run.batch_size, longest prompt first.

        A request that lm-eval repeats (`repeats: n`) arrives n times; occurrence j uses seed
        sample_seed(item_seed(run.seed, doc_id), j), so samples never depend on batching.
        """
        seen: dict[int, int] = defaultdict(int)
        jobs = []
        for pos, req in enumerate(requests):
            context, gen_kwargs = req.args
            sample = seen[id(req)]
            seen[id(req)] += 1
            doc = req.doc_id if req.doc_id is not None else pos
            seed = sample_seed(item_seed(self.config.run.seed, doc), sample)
            jobs.append((pos, context, dict(gen_kwargs), seed, req, sample))
        groups: dict[Any, list] = defaultdict(list)
        for job in jobs:
            groups[self._gen_settings(job[2])].append(job)
        texts: list[str] = [""] * len(requests)
        bar = tqdm(total=len(requests), disable=disable_tqdm, desc="generate_until (scmoe)")
        for (stops, max_new_tokens, sampling), group in groups.items():
            strategy = dataclasses.replace(self.strategy, sampling=sampling)
            lengths = {job[0]: len(self.tok_encode(job[1])) for job in group}
            group.sort(key=lambda job: (-lengths[job[0]], job[0]))
            for lo in range(0, len(group), self.batch_size):
                batch = group[lo : lo + self.batch_size]
                gens = strategy.generate(
                    self.engine, [job[1] for job in batch], stops=list(stops),
                    max_new_tokens=max_new_tokens, seeds=[job[3] for job in batch],
                )
                for (pos, context, gen_kwargs, seed, req, sample), (gen,) in zip(batch, gens):
                    texts[pos] = gen.text
                    self._record(req, sample, seed, gen)
                    self.cache_hook.add_partial("generate_until", (context, gen_kwargs), gen.text)
                bar.update(len(batch))
        bar.close()
        return texts

    def _record(self, req: Any, sample: int, seed: int, gen: Generation) -> None:
        self.generations.append(
            {"task": req.task_name, "doc_id": req.doc_id, "sample": sample, "seed": seed, **gen.to_record()}
        )
