"""What a run shows: end-of-run table, progress off a terminal, CPU thread default."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import pytest

from scmoe_eval.report import Progress, summary_table
from scmoe_eval.threads import cgroup_cpus, default_threads, physical_cores

METRICS = {
    "task": "gsm8k", "n_items": 40, "n_samples": 1, "primary": "accuracy",
    "official": {"accuracy": 0.625, "ci95": [0.475, 0.775], "n_unparseable": 2},
    "strict": {"accuracy": 0.6, "ci95": [0.45, 0.75]},
}


def test_summary_table_is_one_formatted_row():
    lines = summary_table(METRICS, {"generated_tokens": 1000, "generation_seconds": 8.0}).splitlines()
    assert len(lines) == 3 and set(lines[1]) <= set("|:-")
    assert [c.strip() for c in lines[0].split("|")[1:-1]] == ["task", "metric", "official", "strict", "n", "95% CI", "tokens/s"]
    cells = [c.strip() for c in lines[2].split("|")[1:-1]]
    assert cells == ["gsm8k", "accuracy", "62.50", "60.00", "40", "47.50–77.50", "125.0"]
    many = summary_table({**METRICS, "n_samples": 20, "primary": "pass@1",
                          "official": {"pass@1": 0.5, "ci95": [0.4, 0.6]}, "strict": {"pass@1": 0.5}})
    cells = [c.strip() for c in many.splitlines()[2].split("|")[1:-1]]
    assert cells[1:5] == ["pass@1", "50.00", "50.00", "40 x 20 samples"] and cells[-1] == "-"  # nothing generated
    assert "{" not in many and "'" not in many  # not a dict


def test_progress_off_a_terminal_logs_plain_lines(caplog):
    stream = io.StringIO()  # not a TTY, like a SLURM log or `| tee`
    desc = "gsm8k__mixtral-8x7b__scmoe-b0.5-a0.1-strong-topk4-weak-rank2__3f9c01ab"
    with caplog.at_level(logging.INFO, logger="scmoe_eval"):
        with Progress(10, desc, interval=0.0, stream=stream) as bar:
            for _ in range(4):
                bar.update(2, 50)
        quiet = Progress(10, desc, interval=3600.0, stream=stream)
        quiet.update(2, 50)
    assert stream.getvalue() == ""  # no bar frames at all
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 4 and all("\r" not in line for line in lines)
    assert lines[0].startswith(f"{desc}: 2/10 items") and lines[-1].startswith(f"{desc}: 8/10 items")


def test_progress_on_a_terminal_shows_the_full_setting():
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    stream = Tty()
    desc = "strategy_qa__mixtral-8x7b__sc20-scmoe-sample-b0.5-a0.1-weak-rank3__0123abcd"
    with Progress(3, desc, stream=stream) as bar:
        bar.update(3, 30)
    assert desc in stream.getvalue() and "3/3" in stream.getvalue()


def test_default_threads_respects_omp_and_the_free_cores():
    assert default_threads({"OMP_NUM_THREADS": "3"}, cores=64, usable=64, load=50.0) == (3, "OMP_NUM_THREADS")
    assert default_threads({}, cores=16, usable=16, quota=None, load=0.2)[0] == 16  # idle machine: every core
    assert default_threads({}, cores=16, usable=32, quota=4, load=0.0)[0] == 4  # a container's 4-CPU quota
    assert default_threads({}, cores=16, usable=2, quota=None, load=0.0)[0] == 2  # taskset / SLURM cpus
    threads, why = default_threads({}, cores=2, usable=2, quota=None, load=3.6)  # two busy neighbours
    assert threads == 1 and "busy" in why
    assert default_threads({"OMP_NUM_THREADS": "zero"}, cores=8, usable=8, quota=None, load=2.0)[0] == 6


def test_physical_cores_and_cgroup_quota(tmp_path: Path):
    blocks = [f"processor\t: {i}\nphysical id\t: {i // 8}\ncore id\t\t: {i % 4}\n" for i in range(16)]
    (tmp_path / "cpuinfo").write_text("\n".join(blocks))  # 2 sockets x 4 cores x 2 hyperthreads
    assert physical_cores(tmp_path / "cpuinfo") == 8
    assert physical_cores(tmp_path / "missing") >= 1
    (tmp_path / "cpu.max").write_text("250000 100000\n")
    assert cgroup_cpus(tmp_path) == 3
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpus(tmp_path) is None
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("200000")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000")
    assert cgroup_cpus(v1) == 2


def test_cpu_threads_benchmark_runs(tmp_path: Path):
    import json
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    out = tmp_path / "threads.json"
    done = subprocess.run(
        [sys.executable, "scripts/bench_cpu_threads.py", "--sizes", "tiny", "--rounds", "2", "--new-tokens", "4",
         "--out", str(out)], cwd=root, env={**os.environ, "PYTHONPATH": str(root)}, capture_output=True, text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(out.read_text())
    tiny = report["sizes"]["tiny"]
    assert set(tiny["median_tok_s"]) == {"torch_default", "ours", "one_thread"} and len(tiny["loadavg_per_round"]) == 2
    assert all(len(v) == 2 and min(v) > 0 for v in tiny["tok_s"].values())
    assert report["threads"]["ours"] >= 1 and report["ours_reason"]
