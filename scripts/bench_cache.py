"""Decode-step cost of the KV cache layout: RoomyLayer (in place, the Stream default) vs transformers'
stock DynamicLayer (torch.cat of the whole layer per step), at a GSM8K-length prompt.

Not a test: it writes JSON. For each method (greedy: PlainScorer; SCMoE: PairedScorer, rows (strong,
weak)) and batch, two scorers over the same model are prefilled with the same prompts, one on
RoomyLayers and one on the stock DynamicCache; then every decode step runs on both, fed the same
tokens, alternating which goes first, under the engine's own decode kernels. Only the steps are timed,
so prefill noise stays out and each step's pair of timings shares the machine's state. The scores of
the two layouts (logits; SCMoE scores for SCMoE) are compared bit for bit at every step (`same_scores`).

  python scripts/bench_cache.py            # mid32k shape (issue 9), 900-token prompt, 64 steps, B 1 and 8
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from bench_decode import cpu_subjects, prompts
from bench_json import begin, conditions, cpu_args, write_report
from transformers import DynamicCache

from scmoe_eval.decoding.engine import Contrast, DecodeEngine
from scmoe_eval.decoding.streams import PairedScorer, PlainScorer
from scmoe_eval.models.routing import RoutingPolicy

SCMOE = Contrast(RoutingPolicy.topk(2), RoutingPolicy.rank(2))


def scorer(engine: DecodeEngine, method: str, n: int, stock: bool) -> PlainScorer | PairedScorer:
    """The engine's own scorer for n prompts; `stock` puts its stream on transformers' DynamicCache."""
    s = engine._scorer(n, None, SCMOE if method == "scmoe" else None, False, None, None)
    if stock:
        s.stream.cache = DynamicCache(config=engine.model.config)
    return s


@torch.inference_mode()
def bench(engine: DecodeEngine, method: str, texts: list[str], steps: int) -> dict:
    """Per-step ms of both layouts over `steps` decode steps after one prefill each."""
    n = len(texts)
    ids, mask = engine.encode(texts)
    layouts = {"roomy": scorer(engine, method, n, False), "stock": scorer(engine, method, n, True)}
    with engine.controller.use(None):
        first = {k: s.prefill(ids, mask) for k, s in layouts.items()}
        same = torch.equal(first["roomy"], first["stock"])
        tokens = first["roomy"].argmax(-1)
        rows, policies = engine._forward_rows(n, None, SCMOE if method == "scmoe" else None, False, None)
        ms: dict[str, list[float]] = {"roomy": [], "stock": []}
        with engine._decode_kernels(rows, policies, method == "scmoe"):
            for step in range(steps):
                order = ("roomy", "stock") if step % 2 == 0 else ("stock", "roomy")
                out = {}
                for k in order:
                    start = time.perf_counter()
                    out[k] = layouts[k].step(tokens)
                    ms[k].append(1000 * (time.perf_counter() - start))
                same = same and torch.equal(out["roomy"], out["stock"])
                tokens = out["roomy"].argmax(-1)
    med = {k: statistics.median(v) for k, v in ms.items()}
    return dict(roomy_ms_per_step=med["roomy"], stock_ms_per_step=med["stock"], roomy_over_stock=med["roomy"] / med["stock"],
                same_scores=same, cache_positions=ids.shape[1] + steps, step_ms={k: [round(x, 3) for x in v] for k, v in ms.items()})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=["tiny", "mid", "mid32k"], default="mid32k")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--prompt-len", type=int, default=900, help="tokens (mid32k's word tokenizer: exact)")
    parser.add_argument("--steps", type=int, default=64)
    cpu_args(parser, "results/bench/cache_layout.json")
    args = parser.parse_args()
    load_start = begin(args)
    subject = cpu_subjects([args.size])[0]
    summary = {}
    for batch in args.batch:
        texts = prompts(batch, args.prompt_len, subject.loaded.model.config.vocab_size)
        for method in ("greedy", "scmoe"):
            summary[f"{method}/B{batch}"] = row = bench(subject.engine, method, texts, args.steps)
            print(f"{method}/B{batch}: roomy {row['roomy_ms_per_step']:.2f} ms/step, stock {row['stock_ms_per_step']:.2f}, "
                  f"ratio {row['roomy_over_stock']:.3f}, same scores {row['same_scores']}", flush=True)
    write_report(args.out, dict(**conditions(load_start), settings=dict(model=args.size, prompt_len=args.prompt_len,
                                                                        steps=args.steps, batches=args.batch),
                                summary=summary))


if __name__ == "__main__":
    main()
