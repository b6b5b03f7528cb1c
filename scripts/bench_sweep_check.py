"""How long the multirun preflight (scmoe_eval/sweep.py) takes for big sweeps, against composing every
job with Hydra's Compose API (what a naive check would do). Writes results/bench/sweep_check.json.

Repeats are interleaved (fast, naive, fast, naive, ...) and medians reported; the load average is
recorded because the machine may be shared. The first check of a process (imports, the fixture,
the demo data) is timed separately as `cold_s`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

from hydra import compose, initialize_config_dir

from scmoe_eval.cli import CONFIG_DIR
from scmoe_eval.config import to_experiment
from scmoe_eval.preflight import check
from scmoe_eval.sweep import check_sweep, sweep_jobs

BETAS = "0.1,0.3,0.5,0.7,0.9"


def argv(ranks: int, tasks: str) -> list[str]:
    return ["-m", "model=tiny-mixtral", f"task={tasks}", "task.demo=true", "task.allow_code_execution=true",
            "strategy=scmoe", "strategy.weak.k=" + ",".join(str(k) for k in range(1, ranks + 1)),
            f"strategy.beta={BETAS}", "strategy.alpha=0.05,0.1,0.2", "run.output_dir=/tmp/bench-sweep"]


def naive(args: list[str]) -> float:
    """Compose every job with Hydra, then the same preflight (model config and data still read once)."""
    start = time.perf_counter()
    with initialize_config_dir(version_base="1.3", config_dir=CONFIG_DIR):
        jobs, _ = sweep_jobs(args)
        memo: dict = {}
        for job in jobs:
            check(to_experiment(compose("config", overrides=job)), memo)
    return time.perf_counter() - start


def fast(args: list[str]) -> float:
    start = time.perf_counter()
    check_sweep(args, CONFIG_DIR)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("results/bench/sweep_check.json"))
    args = parser.parse_args()
    cases = {"120 jobs (2 tasks x 4 ranks x 5 betas x 3 alphas)": argv(4, "gsm8k,mbpp"),
             "480 jobs (4 tasks x 8 ranks x 5 betas x 3 alphas)": argv(8, "gsm8k,strategy_qa,mbpp,human_eval")}
    load_before = os.getloadavg()
    cold = fast(cases[next(iter(cases))])
    results = {}
    for name, case in cases.items():
        times: dict[str, list[float]] = {"fast": [], "naive": []}
        for _ in range(args.rounds):
            times["fast"].append(fast(case))
            times["naive"].append(naive(case))
        results[name] = {kind: {"median_s": round(statistics.median(t), 3), "runs_s": [round(x, 3) for x in t]}
                         for kind, t in times.items()}
        results[name]["speedup"] = round(results[name]["naive"]["median_s"] / results[name]["fast"]["median_s"], 2)
    report = {"cold_s": round(cold, 3), "cases": results, "rounds": args.rounds,
              "loadavg_before": load_before, "loadavg_after": os.getloadavg(), "cpu_count": os.cpu_count()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
