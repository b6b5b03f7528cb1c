"""The benchmark scripts still run: scripts/gpu_bench.sh spends scarce device time, so a broken flag
must fail here first. Tiny settings; the numbers are not looked at, only the JSON's shape."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _run(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("impl", ["dense_hit", "eager"])
def test_bench_decode_runs_the_gpu_script_flags_on_cpu(tmp_path, impl):
    out = tmp_path / "bench.json"
    done = _run(["scripts/bench_decode.py", "--cpu-sizes", "tiny", "--batch", "1", "--rounds", "1", "--new-tokens",
                 "4", "--methods", "greedy", "scmoe_batched", "--decode-experts", impl, "--out", str(out)], tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["decode_experts"] == impl and {r["method"] for r in report["results"]} == {"greedy", "scmoe_batched"}
    assert set(report["summary"]["tiny/B1"]) == {"scmoe_batched_over_greedy", "decode_step_scmoe_batched_over_greedy"}
    assert all(r["prefill_ms"] > 0 and "decode_ms_per_step" in r for r in report["results"])


def test_gpu_bench_script_calls_only_existing_flags():
    script = (ROOT / "scripts" / "gpu_bench.sh").read_text()
    help_text = _run(["scripts/bench_decode.py", "--help"], ROOT).stdout
    flags = {word for line in script.splitlines() if "bench_decode.py" in line or line.strip().startswith("--")
             for word in line.split() if word.startswith("--")}
    known = set(re.findall(r"--[a-z][a-z-]*", help_text))
    assert flags and flags <= known, flags - known
    methods = {word for line in re.findall(r"--methods ([a-z_ ]+)", script) for word in line.split()}
    choices = re.search(r"--methods \{([a-z_,]+)\}", help_text.replace("\n", "")).group(1).split(",")
    assert {"greedy_compiled", "scmoe_compiled"} <= methods <= set(choices), methods - set(choices)
    assert subprocess.run(["bash", "-n", str(ROOT / "scripts" / "gpu_bench.sh")]).returncode == 0


def test_bench_cache_runs_and_both_layouts_agree(tmp_path):
    """bench_cache.py on the tiny fixture: the RoomyLayer and stock-cache scorers give the same
    scores at every step (greedy and SCMoE), and the JSON has per-step times for both."""
    out = tmp_path / "cache.json"
    done = _run(["scripts/bench_cache.py", "--size", "tiny", "--batch", "2", "--prompt-len", "40", "--steps", "70",
                 "--out", str(out)], tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads(out.read_text())["summary"]
    assert set(summary) == {"greedy/B2", "scmoe/B2"}
    for row in summary.values():
        assert row["same_scores"] is True and len(row["step_ms"]["roomy"]) == len(row["step_ms"]["stock"]) == 70


def test_bench_continuous_profile_accounts_for_every_second(tmp_path):
    """bench_continuous.py --profile: both modes give the same tokens, each mode's components add up
    to its wall time, and the timer saw exactly the decode forwards the step counter counted."""
    out = tmp_path / "continuous.json"
    done = _run(["scripts/bench_continuous.py", "--items", "6", "--batch", "2", "--rounds", "1", "--methods", "greedy",
                 "--profile", "--out", str(out)], tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    row = json.loads(out.read_text())["summary"]["greedy/B2"]
    assert row["same_tokens"] is True
    for mode, parts in row["profile_s"].items():
        assert parts["decode_steps"] == row["forwards"][mode]["decode_steps"]
        spent = sum(v for k, v in parts.items() if k not in ("total", "decode_steps"))
        assert spent == pytest.approx(parts["total"], abs=2e-3) and min(parts.values()) > 0, parts
