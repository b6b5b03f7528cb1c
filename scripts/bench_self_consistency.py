"""Self-consistency cost: n samples per prompt with one shared prefill vs one engine call per sample.

maj@20 on GSM8K repeats a ~900-token 8-shot prompt 20 times. Before prefill sharing, Strategy.generate
ran one engine call per sample index, each prefilling every prompt; now one call prefills each prompt
once and fans its KV cache out to the n samples (the records are identical, tests/test_strategies.py).
Times, interleaved old/new per round (median): "prefill" = a 1-token run (prefill + first draw),
"total" = `--new-tokens` forced tokens (EOS banned, no stops).

  python scripts/bench_self_consistency.py     # CPU, 1 thread, fixture mid, ~900-token prompt, n=20
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import replace

import torch
from bench_json import begin, conditions, cpu_args, fixture_engine, write_report

from scmoe_eval.config import StrategyConfig
from scmoe_eval.decoding.strategies import build_strategy

SHOT = ("Question: Olivia has $23. She bought five bagels for $3 each. How much money does she have left?\n"
        "Answer: 5 bagels for $3 each will be 5 x 3 = 15 dollars. 23 - 15 is 8. The answer is 8.\n\n")


def long_prompt(tokenizer, tokens: int) -> str:
    """A GSM8K-shaped few-shot prompt of about `tokens` tokens (shots repeated, then a question)."""
    text = ""
    while len(tokenizer(text + SHOT)["input_ids"]) <= tokens:
        text += SHOT
    return text + "Question: There are 15 trees in the grove. How many trees did the workers plant today?\nAnswer:"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=["tiny", "mid"], default="mid")
    parser.add_argument("--prompt-tokens", type=int, default=900)
    parser.add_argument("--samples", type=int, default=20)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--inner", nargs="+", default=["sample", "scmoe-sample"])
    cpu_args(parser, "results/bench/self_consistency.json")
    args = parser.parse_args()
    load_start = begin(args)
    engine = fixture_engine(args.size)
    prompt = long_prompt(engine.tokenizer, args.prompt_tokens)
    prompt_tokens = len(engine.tokenizer(prompt)["input_ids"])
    rows, summary = [], {}
    with torch.inference_mode():
        for inner in args.inner:
            cfg = StrategyConfig(name="self-consistency", inner=inner, num_samples=args.samples, temperature=1.0,
                                 ban_eos=True)
            new = build_strategy(cfg)
            old = replace(new, share_prefill=False)
            runs = {}
            for label, strategy in (("old", old), ("new", new)):
                for phase, tokens in (("prefill", 1), ("total", args.new_tokens)):
                    runs[(label, phase)] = (lambda s=strategy, t=tokens: s.generate(
                        engine, [prompt], stops=[], max_new_tokens=t, seeds=[1234]))
            same = [g.token_ids for g in runs[("old", "total")]()[0]] == [g.token_ids for g in runs[("new", "total")]()[0]]
            times: dict = {k: [] for k in runs}
            for _ in range(args.rounds):
                for key, fn in runs.items():  # old, new interleaved within each round
                    start = time.perf_counter()
                    fn()
                    times[key].append(time.perf_counter() - start)
            med = {f"{label}_{phase}_s": statistics.median(v) for (label, phase), v in times.items()}
            summary[inner] = dict(**med, same_tokens=same,
                                  prefill_speedup=med["old_prefill_s"] / med["new_prefill_s"],
                                  total_speedup=med["old_total_s"] / med["new_total_s"])
            rows += [dict(inner=inner, method=label, phase=phase, seconds_runs=[round(t, 4) for t in v])
                     for (label, phase), v in times.items()]
            print(inner, json.dumps(summary[inner]), flush=True)
    write_report(args.out, dict(
        **conditions(load_start),
        settings=dict(model=f"fixture mixtral {args.size}", prompt_tokens=prompt_tokens, samples=args.samples,
                      new_tokens=args.new_tokens, rounds=args.rounds),
        results=rows, summary=summary,
    ))


if __name__ == "__main__":
    main()
