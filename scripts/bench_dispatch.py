"""Kernel-launch proxy for batch-1 GPU decoding, measured on CPU: ATen ops per decode step.

At batch 1 a Mixtral-8x7B decode step on a GPU is bound by kernel launches and host syncs, not by
FLOPs (the H200 run spends ~30 ms per token where reading the weights takes ~6 ms). Both counts
depend on the model's depth and the decoding code, not its width, so they can be measured here:
a random Mixtral with the 8x7B layout (32 layers, 8 experts, top-2) at hidden size 64, run under
the PyTorch profiler. Per method and step it reports
  - kernels: ATen ops that run a kernel themselves (views, allocations and wrappers excluded),
  - syncs: device->host waits on a GPU: `.item()`, `.tolist()`, `nonzero`, `unique`, ...,
  - alloc_expert_copies: bytes the step allocates, in units of one expert's weights per layer (the
    weight copies `batched_mm` gathers dominate it; a copy-free implementation stays near 0),
  - cpu_ms: host time per step (1 thread), the launch-bound share of a GPU step.
Steps are isolated by differencing a 40-token and an 8-token run (prefill cancels).

  python scripts/bench_dispatch.py                          # -> results/bench/dispatch.json (~1 min)
  python scripts/bench_dispatch.py --experts grouped_mm --out results/bench/dispatch_grouped_mm.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections import Counter
from pathlib import Path

import torch
import transformers
from torch.profiler import ProfilerActivity, profile
from transformers import MixtralConfig

from bench_decode import MIXTRAL_8X7B, METHODS, _wrap, prompts, random_mixtral, runner, word_tokenizer

NO_KERNEL = {  # views, metadata and allocations: no device kernel behind them
    "aten::as_strided", "aten::view", "aten::_reshape_alias", "aten::reshape", "aten::expand", "aten::slice",
    "aten::select", "aten::unsqueeze", "aten::squeeze", "aten::transpose", "aten::t", "aten::permute",
    "aten::alias", "aten::detach", "aten::empty", "aten::empty_strided", "aten::empty_like", "aten::resize_",
    "aten::lift_fresh", "aten::unbind", "aten::split", "aten::chunk", "aten::narrow", "aten::contiguous",
    "aten::_unsafe_view", "aten::split_with_sizes", "aten::result_type", "aten::is_nonzero", "aten::item",
    "aten::set_", "aten::resolve_conj", "aten::resolve_neg", "aten::_local_scalar_dense", "aten::to",
    "aten::_to_copy",
}
# Ops whose result size or value the host must wait for on a GPU; Tensor.tolist() is counted separately
# (it reads the data without dispatching an ATen op).
SYNCS = {"aten::_local_scalar_dense", "aten::nonzero", "aten::_unique2", "aten::unique_dim",
         "aten::unique_consecutive", "aten::masked_select"}


def launches(event) -> bool:
    """An ATen op that runs a kernel itself: not a view/allocation, and no child op does the work."""
    if not event.name.startswith("aten::") or event.name in NO_KERNEL:
        return False
    return all(c.name in NO_KERNEL or not c.name.startswith("aten::") for c in event.cpu_children)


def op_counts(fn) -> Counter:
    """Per ATen op name: how many kernels it ran ("kernel:" prefix) and how often it was called;
    "alloc_bytes": everything the ops allocated."""
    counts: Counter = Counter()
    tolist = torch.Tensor.tolist

    def counted_tolist(self):
        counts["sync:tolist"] += 1
        return tolist(self)

    torch.Tensor.tolist = counted_tolist
    try:
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            fn()
    finally:
        torch.Tensor.tolist = tolist
    for e in prof.events():
        if e.name.startswith("aten::"):
            counts[e.name] += 1
            counts["kernel:" + e.name] += launches(e)
            counts["alloc_bytes"] += max(e.self_cpu_memory_usage, 0)
    return counts


def per_step(counts_long: Counter, counts_short: Counter, steps: int) -> dict[str, float]:
    diff = {k: (counts_long[k] - counts_short[k]) / steps for k in counts_long | counts_short}
    return {
        "kernels": sum(v for k, v in diff.items() if k.startswith("kernel:")),
        "syncs": sum(v for k, v in diff.items() if k in SYNCS or k.startswith("sync:")),
        "aten_calls": sum(v for k, v in diff.items() if k.startswith("aten::")),
        "alloc_bytes": diff.get("alloc_bytes", 0.0),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("results/bench/dispatch.json"))
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--experts", default="batched_mm",
                        help="experts implementation (default batched_mm: what the engine and HF generate use "
                             "for batch-1 decode on CUDA)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    shape = {**MIXTRAL_8X7B, "hidden_size": args.hidden, "intermediate_size": 2 * args.hidden,
             "num_attention_heads": 4, "num_key_value_heads": 1, "vocab_size": 2048}
    model = random_mixtral(MixtralConfig(**shape), "cpu", torch.float32)
    model.set_experts_implementation(args.experts)
    subject = _wrap("mixtral-8x7b-layout", model, word_tokenizer(shape["vocab_size"]), "cpu")
    texts = prompts(1, 32, shape["vocab_size"])
    expert_bytes = 3 * shape["hidden_size"] * shape["intermediate_size"] * 4  # gate, up, down in float32
    short, long = 8, 40
    rows = []
    with torch.inference_mode():
        for method in METHODS:
            run_short, run_long = (runner(subject, method, texts, n) for n in (short, long))
            run_long()  # warm-up
            counts = per_step(op_counts(run_long), op_counts(run_short), long - short)
            times = []
            for _ in range(args.rounds):
                t0 = time.perf_counter()
                run_long()
                t1 = time.perf_counter()
                run_short()
                times.append(((t1 - t0) - (time.perf_counter() - t1)) / (long - short) * 1e3)
            copies = counts.pop("alloc_bytes") / (expert_bytes * shape["num_hidden_layers"])
            rows.append({"method": method, **counts, "alloc_expert_copies": round(copies, 2),
                         "cpu_ms": statistics.median(times)})
            print(rows[-1])
    greedy = next(r for r in rows if r["method"] == "greedy")
    summary = {r["method"]: {k: round(r[k] / greedy[k], 3) if greedy[k] else None
                             for k in ("kernels", "syncs", "alloc_expert_copies", "cpu_ms")} for r in rows}
    report = dict(
        device=platform.processor() or platform.machine(), threads=1, torch=torch.__version__,
        transformers=transformers.__version__,
        model={k: shape[k] for k in ("num_hidden_layers", "num_local_experts", "num_experts_per_tok", "hidden_size")},
        experts_implementation=model.config._experts_implementation,
        batch=1, prompt_len=32, steps_measured=long - short, results=rows, ratio_to_greedy=summary,
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
