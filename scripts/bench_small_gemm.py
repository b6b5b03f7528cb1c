"""Why two rows cost about twice one on CPU: the matmuls of a decode step at 1-16 rows (fp32, MKL).

For each weight shape of the mid32k Mixtral (LM head, expert gate/up and down, attention q), times
`F.linear(x, W)` (x @ W.T, what nn.Linear and the experts implementations call) and `torch.mm(W, x.T)`
(the transposed product, decoding/kernels.py and models/experts.py use it for tall weights) for M rows,
interleaved per round, medians in ms. A weight-streaming kernel would cost about the same at M=1..4.

  python scripts/bench_small_gemm.py     # -> results/bench/cpu_small_gemm.json
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from bench_json import begin, conditions, cpu_args, write_report

SHAPES = {"lm_head": (32000, 512), "expert_gate_up": (3584, 512), "expert_down": (512, 1792), "attn_q": (512, 512)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 2, 3, 4, 8, 16])
    parser.add_argument("--rounds", type=int, default=15)
    cpu_args(parser, "results/bench/cpu_small_gemm.json")
    args = parser.parse_args()
    load_start = begin(args)
    g = torch.Generator().manual_seed(0)
    results = {}
    for name, (out_dim, in_dim) in SHAPES.items():
        w = torch.randn(out_dim, in_dim, generator=g)
        for m in args.rows:
            x = torch.randn(m, in_dim, generator=g)
            fns = {"linear": lambda: F.linear(x, w), "transposed": lambda: torch.mm(w, x.T)}
            times: dict[str, list[float]] = {k: [] for k in fns}
            for fn in fns.values():
                fn()
            for _ in range(args.rounds):
                for k, fn in fns.items():
                    start = time.perf_counter()
                    fn()
                    times[k].append(time.perf_counter() - start)
            med = {k: 1000 * statistics.median(v) for k, v in times.items()}
            results[f"{name}/M{m}"] = dict(shape=[out_dim, in_dim], rows=m, linear_ms=med["linear"],
                                           transposed_ms=med["transposed"])
        one = results[f"{name}/M1"]["linear_ms"]
        for m in args.rows:
            r = results[f"{name}/M{m}"]
            r["linear_over_one_row"], r["transposed_over_one_row"] = r["linear_ms"] / one, r["transposed_ms"] / one
            print(f"{name:15} M={m:<3} linear {r['linear_ms']:8.3f} ms ({r['linear_over_one_row']:.2f}x one row)  "
                  f"transposed {r['transposed_ms']:8.3f} ms ({r['transposed_over_one_row']:.2f}x)", flush=True)
    write_report(args.out, dict(**conditions(load_start), mkl=torch.backends.mkl.is_available(), rounds=args.rounds,
                                results=results))


if __name__ == "__main__":
    main()
