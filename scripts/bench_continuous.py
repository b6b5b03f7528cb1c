"""Whole-benchmark throughput: static batches vs continuous batching (DecodeEngine.generate_continuous).

Static: prompts in fixed batches of B, each batch decoding until its longest row ends (the finished
rows' slots sit empty). Continuous: at most B prompts in flight, waiting prompts admitted as rows
finish. The workload is GSM8K-shaped: `--items` questions, completion lengths drawn from a
log-normal (median ~150 tokens) clipped to [40, 400] and forced by a per-item length schedule
(EOS banned, no stops), so both modes generate exactly the same tokens. After a warm-up, rounds
interleave static/continuous; reports generated tokens/s (median) by wall clock and by this process's
CPU time (other jobs still slow it through shared caches), whether the token ids agree, and the
decode forwards each mode ran (their ratio, step_bound, is what continuous would gain if a step cost
the same whatever its rows and cache width), their mean rows and row-weighted cache width, and the
prefill forwards. `--profile` adds one untimed run per mode with profile_decode.Timer's hooks installed:
seconds in each part of the decode forwards (attention, experts, router, LM head, the rest), in prefill,
and outside the model (the engine: scoring, stops, joins and row selection), to show which parts
continuous batching saves and which grow with its fuller, wider steps.

  python scripts/bench_continuous.py            # CPU, 1 thread, fixture tiny, B 8 and 16, greedy and SCMoE
  python scripts/bench_continuous.py --profile --out results/bench/continuous_profile.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from bench_json import begin, conditions, cpu_args, fixture_engine, write_report
from profile_decode import Timer

from scmoe_eval.decoding.engine import Contrast
from scmoe_eval.models.routing import RoutingPolicy

QUESTIONS = (
    "Natalia sold clips to {a} of her friends in April, and then she sold half as many clips in May. How many clips did she sell altogether?",
    "Weng earns ${a} an hour for babysitting. Yesterday, she just did {b} minutes of babysitting. How much did she earn?",
    "Betty is saving money for a new wallet which costs ${a}. Betty has only half of the money she needs. Her parents decided to give her ${b} for that purpose. How much more money does Betty need?",
    "James writes a {a}-page letter to {b} different friends twice a week. How many pages does he write a year?",
)


def workload(items: int, seed: int) -> tuple[list[str], list[int]]:
    """GSM8K-shaped questions and their forced completion lengths (log-normal, median ~150, in [40, 400])."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.exp(torch.randn(items, generator=g) * 0.6 + torch.log(torch.tensor(150.0)))
    lengths = lengths.round().clamp(40, 400).long().tolist()
    nums = torch.randint(2, 99, (items, 2), generator=g).tolist()
    prompts = [f"Question: {QUESTIONS[i % len(QUESTIONS)].format(a=a, b=b)}\nAnswer:" for i, (a, b) in enumerate(nums)]
    return prompts, lengths


class Forwards:
    """Counts the model's decode forwards (one fed token per row), with their rows and cache width
    (attention runs over rows x width), and its prefills (whole prompts)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.reset()
        model.register_forward_pre_hook(self._count, with_kwargs=True)

    def reset(self) -> None:
        self.steps = self.prefills = self.rows = self.row_positions = 0

    def _count(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        rows, fed = kwargs["input_ids"].shape
        if fed > 1:
            self.prefills += 1
            return
        self.steps += 1
        self.rows += rows
        self.row_positions += rows * kwargs["attention_mask"].shape[1]

    def profile(self) -> dict:
        return dict(decode_steps=self.steps, prefill_forwards=self.prefills, mean_rows=self.rows / self.steps,
                    mean_cache_width=self.row_positions / self.rows)


def profiled(engine, fn, prompts: list[str], lengths: list[int]) -> dict[str, float]:
    """One run of `fn` under the component timer (hooks cost time, so it is not one of the timed rounds)."""
    timer = Timer(engine.model, engine.controller)
    start = time.perf_counter()
    fn(prompts, lengths)
    wall = time.perf_counter() - start
    timer.remove()
    return {k: round(v, 4) for k, v in timer.breakdown(wall).items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=["tiny", "mid"], default="tiny")
    parser.add_argument("--items", type=int, default=64)
    parser.add_argument("--batch", type=int, nargs="+", default=[8, 16])
    parser.add_argument("--methods", nargs="+", choices=["greedy", "scmoe"], default=["greedy", "scmoe"])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--profile", action="store_true", help="add a per-component time breakdown per mode")
    cpu_args(parser, "results/bench/continuous.json")
    args = parser.parse_args()
    load_start = begin(args)
    engine = fixture_engine(args.size)
    prompts, lengths = workload(args.items, args.seed)
    total_tokens = sum(lengths)
    contrast = Contrast(RoutingPolicy.topk(2), RoutingPolicy.rank(2))
    counter = Forwards(engine.model)
    rows, summary = [], {}
    for method in args.methods:
        kw = dict(ban_eos=True, **({"contrast": contrast} if method == "scmoe" else {}))
        for batch in args.batch:
            def static(prompts, lengths, batch=batch, kw=kw):
                out = []
                for s in range(0, len(prompts), batch):
                    out += engine.generate(prompts[s : s + batch], max_new_tokens=lengths[s : s + batch], **kw)
                return out

            def continuous(prompts, lengths, batch=batch, kw=kw):
                return engine.generate_continuous(prompts, batch_size=batch, max_new_tokens=lengths, **kw)

            modes = (("static", static), ("continuous", continuous))
            for _, fn in modes:  # warm-up, whole: after a short one, the first timed rounds ran slower (9.8, 9.0, 7.8 s)
                fn(prompts, lengths)
            wall: dict[str, list[float]] = {"static": [], "continuous": []}
            cpu: dict[str, list[float]] = {"static": [], "continuous": []}
            ids, forwards = {}, {}
            for _ in range(args.rounds):
                for mode, fn in modes:
                    counter.reset()
                    start, start_cpu = time.perf_counter(), time.process_time()
                    gens = fn(prompts, lengths)
                    wall[mode].append(time.perf_counter() - start)
                    cpu[mode].append(time.process_time() - start_cpu)
                    ids[mode], forwards[mode] = [g.token_ids for g in gens], counter.profile()
            assert [len(t) for t in ids["static"]] == lengths
            tps = {m: total_tokens / statistics.median(v) for m, v in wall.items()}
            tps_cpu = {m: total_tokens / statistics.median(v) for m, v in cpu.items()}
            key = f"{method}/B{batch}"
            summary[key] = dict(static_tokens_per_s=tps["static"], continuous_tokens_per_s=tps["continuous"],
                                continuous_over_static=tps["continuous"] / tps["static"],
                                continuous_over_static_cpu=tps_cpu["continuous"] / tps_cpu["static"],
                                step_bound=forwards["static"]["decode_steps"] / forwards["continuous"]["decode_steps"],
                                forwards=forwards,
                                same_tokens=ids["static"] == ids["continuous"])
            if args.profile:
                summary[key]["profile_s"] = {mode: profiled(engine, fn, prompts, lengths) for mode, fn in modes}
            rows += [dict(method=method, batch=batch, mode=m, seconds_runs=[round(t, 3) for t in wall[m]],
                          cpu_seconds_runs=[round(t, 3) for t in cpu[m]]) for m in wall]
            print(key, json.dumps(summary[key]), flush=True)
    write_report(args.out, dict(
        **conditions(load_start),
        settings=dict(model=f"fixture mixtral {args.size}", items=args.items, rounds=args.rounds,
                      generated_tokens=total_tokens, lengths=lengths),
        results=rows, summary=summary,
    ))


if __name__ == "__main__":
    main()
