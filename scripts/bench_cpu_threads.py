"""CPU threads before/after: torch's default intra-op threads vs the runner's default (scmoe_eval.threads).

Greedy decoding of the tiny (and mid) random Mixtral fixture, batch 1, `--new-tokens` forced tokens,
the settings interleaved within every round (the machine may be shared: the 1-min load average is
recorded beside each timing). Run it WITHOUT OMP_NUM_THREADS, or "torch default" is not torch's default.

  python scripts/bench_cpu_threads.py --rounds 7 --out results/bench/cpu_threads.json
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
from transformers import AutoModelForCausalLM, AutoTokenizer

from scmoe_eval.decoding.engine import DecodeEngine
from scmoe_eval.models.fixtures import fixture_path
from scmoe_eval.models.loading import LoadedModel
from scmoe_eval.models.routing import RoutingController
from scmoe_eval.threads import cgroup_cpus, default_threads, physical_cores

TORCH_DEFAULT = torch.get_num_threads()  # before anything sets it


def engine(size: str) -> DecodeEngine:
    path = fixture_path("mixtral", size=size)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    controller = RoutingController(model)
    tokenizer = AutoTokenizer.from_pretrained(path)
    loaded = LoadedModel(model=model, tokenizer=tokenizer, adapter=controller.adapter, controller=controller, device="cpu")
    return DecodeEngine(loaded)


def tokens_per_second(eng: DecodeEngine, threads: int, new_tokens: int) -> float:
    torch.set_num_threads(threads)
    start = time.perf_counter()
    (gen,) = eng.generate(["Question: how many experts does a token use? Answer:"], max_new_tokens=new_tokens,
                          ban_eos=True)
    return len(gen.token_ids) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--sizes", nargs="+", default=["tiny", "mid"], choices=["tiny", "mid"])
    parser.add_argument("--out", type=Path, default=Path("results/bench/cpu_threads.json"))
    args = parser.parse_args()
    ours, why = default_threads()
    settings = {"torch_default": TORCH_DEFAULT, "ours": ours, "one_thread": 1}
    result = {
        "what": "greedy decode tok/s, batch 1, random Mixtral fixture, fp32 CPU; settings interleaved per round",
        "omp_num_threads_env": os.environ.get("OMP_NUM_THREADS"),
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "physical_cores": physical_cores(),
                    "affinity": len(os.sched_getaffinity(0)), "cgroup_cpus": cgroup_cpus()},
        "threads": settings, "ours_reason": why, "new_tokens": args.new_tokens, "rounds": args.rounds,
        "torch": torch.__version__, "sizes": {},
    }
    for size in args.sizes:
        eng = engine(size)
        tokens_per_second(eng, 1, 4)  # warm-up
        samples: dict[str, list[float]] = {name: [] for name in settings}
        loads = []
        names = list(settings)
        for r in range(args.rounds):
            order = names[r % len(names):] + names[: r % len(names)]  # rotate who goes first
            for name in order:
                samples[name].append(round(tokens_per_second(eng, settings[name], args.new_tokens), 2))
            loads.append([round(x, 2) for x in os.getloadavg()])
        medians = {name: statistics.median(v) for name, v in samples.items()}
        result["sizes"][size] = {
            "median_tok_s": medians, "tok_s": samples, "loadavg_per_round": loads,
            "ours_over_default": round(medians["ours"] / medians["torch_default"], 2),
        }
        print(size, medians, "load", loads[-1])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
