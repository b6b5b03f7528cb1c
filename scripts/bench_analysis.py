"""Benchmark: teacher-forced KLD for strong + N weak routings, batched rows vs a naive per-routing loop.

grouped (what `scmoe-eval-analyze analysis=kld` runs): per item the strong pass once and every weak
routing as an extra row of one batched forward (routings of equal expert width share a forward; the
paper's set makes 2 forwards: top-2, and the 9 single-expert weak rows). one_forward: all 10 rows in one
forward, as SCMoE decoding batches strong and weak rows (the routing controller then pads every row to
top-2's 2 expert slots). naive: one forward per routing (the strong pass still only once). All compute
the same per-token KL; the script checks the rank rows agree. Repeats are interleaved (grouped,
one_forward, naive, grouped, ...) and medians reported; os.getloadavg() is recorded before and after.
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


def _grouped(loaded, enc, policies):
    return multi_routing_forward(loaded, enc, policies)[0]


def _one_forward(loaded, enc, policies):
    return multi_routing_forward(loaded, enc, policies, by_width=False)[0]


MODES = (("grouped", _grouped), ("one_forward", _one_forward), ("naive", separate_forwards))


def bench(size: str, items: int, repeats: int) -> dict:
    loaded = load_model(ModelConfig(name=f"{size}-mixtral", path=str(fixture_path("mixtral", size)), dtype="float32",
                                    device="cpu", device_map=None))
    texts = load_texts(TaskConfig(data_dir="demo"), AnalysisConfig(), items)
    encs = [encode(loaded.tokenizer, [t]) for t in texts]  # one item per forward, as the runner's default
    policies = [RoutingPolicy.topk(2), *(RoutingPolicy.from_config(parse_weak(w)) for w in PAPER_WEAK)]
    for _, fn in MODES:  # warm-up
        _time(fn, loaded, encs[:1], policies)
    times: dict[str, list[float]] = {name: [] for name, _ in MODES}
    max_diff = 0.0
    for _ in range(repeats):
        for name, fn in MODES:
            seconds, kl = _time(fn, loaded, encs, policies)
            times[name].append(seconds)
            if name == "grouped":
                reference = kl
            else:  # rank rows must agree; random-1 draws differ between calls of other shapes
                max_diff = max(max_diff, max(float((a[:-1] - b[:-1]).abs().max()) for a, b in zip(reference, kl)))
    tokens = sum(int(e.scored.sum()) for e in encs)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "model": f"{size} Mixtral fixture (random weights), CPU fp32",
        "hidden_size": loaded.model.config.hidden_size, "layers": loaded.model.config.num_hidden_layers,
        "routings": [str(p) for p in policies], "items": len(encs), "scored_tokens": tokens,
        "seconds": times, "median_s": med,
        "items_per_s": {k: len(encs) / v for k, v in med.items()},
        "speedup_grouped_over_naive": med["naive"] / med["grouped"],
        "speedup_one_forward_over_naive": med["naive"] / med["one_forward"],
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
        "what": "teacher-forced KLD of strong top-2 vs 9 weak routings (rank-1..8, random-1) per item: grouped "
                "(strong forward + one 9-row weak forward), one 10-row forward, and one forward per routing; "
                "GSM8K train demo items, one item per call",
        "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(), "platform": platform.platform(),
        "torch": torch.__version__, "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
        "repeats_interleaved": args.repeats, "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    for r in results:
        ips = r["items_per_s"]
        print(f"{r['model']}: grouped {ips['grouped']:.2f} items/s, one forward {ips['one_forward']:.2f}, naive "
              f"{ips['naive']:.2f} (grouped/naive {r['speedup_grouped_over_naive']:.2f}x), "
              f"max |ΔKL| {r['max_abs_kl_diff_rank_rows']:.2e}")


if __name__ == "__main__":
    main()
