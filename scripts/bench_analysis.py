"""Benchmark: teacher-forced KLD for strong + N weak routings, batched rows vs a naive per-routing loop.

batched: ONE forward per item with the strong routing and every weak routing as extra rows (what
`scmoe-eval-analyze analysis=kld` runs). naive: one forward per routing (the strong pass still only
once). Both then compute the same per-token KL; the script checks they agree. Repeats are interleaved
(batched, naive, batched, ...) and medians reported; os.getloadavg() is recorded before and after.
Writes results/bench/analysis.json. Not a test: timings depend on the machine and its load.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/bench_analysis.py --sizes tiny mid --items 8 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from scmoe_eval.analysis.config import AnalysisConfig, PAPER_WEAK, parse_weak
from scmoe_eval.analysis.data import load_texts
from scmoe_eval.analysis.forward import encode, kl_divergence, multi_routing_forward, separate_forwards
from scmoe_eval.config import ModelConfig, TaskConfig
from scmoe_eval.models.fixtures import fixture_path
from scmoe_eval.models.loading import load_model
from scmoe_eval.models.routing import RoutingPolicy

REPO = Path(__file__).resolve().parents[1]


def _kl(logits: torch.Tensor, scored: torch.Tensor) -> torch.Tensor:
    return torch.stack([kl_divergence(logits[0, 0, scored[0]], logits[0, j, scored[0]]) for j in range(1, logits.shape[1])])


def _time(fn, loaded, encs, policies) -> tuple[float, list[torch.Tensor]]:
    start = time.perf_counter()
    out = [_kl(fn(loaded, enc, policies), enc.scored) for enc in encs]
    return time.perf_counter() - start, out


def _batched(loaded, enc, policies):
    return multi_routing_forward(loaded, enc, policies)[0]


def bench(size: str, items: int, repeats: int) -> dict:
    loaded = load_model(ModelConfig(name=f"{size}-mixtral", path=str(fixture_path("mixtral", size)), dtype="float32",
                                    device="cpu", device_map=None))
    texts = load_texts(TaskConfig(data_dir="demo"), AnalysisConfig(), items)
    encs = [encode(loaded.tokenizer, [t]) for t in texts]  # one item per forward, as the runner's default
    policies = [RoutingPolicy.topk(2), *(RoutingPolicy.from_config(parse_weak(w)) for w in PAPER_WEAK)]
    _time(_batched, loaded, encs[:1], policies)  # warm-up both paths
    _time(separate_forwards, loaded, encs[:1], policies)
    times: dict[str, list[float]] = {"batched": [], "naive": []}
    max_diff = 0.0
    for _ in range(repeats):
        for name, fn in (("batched", _batched), ("naive", separate_forwards)):
            seconds, kl = _time(fn, loaded, encs, policies)
            times[name].append(seconds)
            if name == "batched":
                reference = kl
            else:  # rank rows must agree; random-1 draws differ between one 10-row call and single-row calls
                max_diff = max(max_diff, max(float((a[:-1] - b[:-1]).abs().max()) for a, b in zip(reference, kl)))
    tokens = sum(int(e.scored.sum()) for e in encs)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "model": f"{size} Mixtral fixture (random weights), CPU fp32",
        "hidden_size": loaded.model.config.hidden_size, "layers": loaded.model.config.num_hidden_layers,
        "routings": [str(p) for p in policies], "items": len(encs), "scored_tokens": tokens,
        "seconds": times, "median_s": med,
        "items_per_s": {k: len(encs) / v for k, v in med.items()},
        "speedup_batched_over_naive": med["naive"] / med["batched"],
        "max_abs_kl_diff_rank_rows": max_diff,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["tiny", "mid"])
    parser.add_argument("--items", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=REPO / "results" / "bench" / "analysis.json")
    args = parser.parse_args()
    load_before = os.getloadavg()
    results = [bench(size, args.items, args.repeats) for size in args.sizes]
    report = {
        "what": "teacher-forced KLD of strong top-2 vs 9 weak routings (rank-1..8, random-1) per item: one batched "
                "10-row forward vs one forward per routing; GSM8K train demo items, batch of 1 item",
        "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(), "platform": platform.platform(),
        "torch": torch.__version__, "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
        "repeats_interleaved": args.repeats, "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    for r in results:
        print(f"{r['model']}: batched {r['items_per_s']['batched']:.2f} items/s, naive {r['items_per_s']['naive']:.2f} "
              f"items/s ({r['speedup_batched_over_naive']:.2f}x), max |ΔKL| {r['max_abs_kl_diff_rank_rows']:.2e}")


if __name__ == "__main__":
    main()
