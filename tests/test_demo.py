"""`make demo` end to end: tiny model on CPU, four tasks, greedy vs SCMoE, scored, table printed."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TASKS = ("gsm8k", "strategy_qa", "mbpp", "human_eval")


@pytest.mark.slow
def test_make_demo(tmp_path: Path) -> None:
    proc = subprocess.run(
        ["make", "-s", "demo", f"DEMO_OUT={tmp_path}"],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = sorted(p.parent for p in tmp_path.glob("*/metrics.json"))
    assert len(runs) == 8
    for run_dir in runs:
        metrics = json.loads((run_dir / "metrics.json").read_text())
        assert metrics["n_items"] == 3 and metrics["task"] == run_dir.name.split("__")[0]
        assert len((run_dir / "scored.jsonl").read_text().splitlines()) == 3
    table = proc.stdout[proc.stdout.index("## comparison"):].splitlines()
    header = next(line for line in table if line.startswith("| model"))
    assert all(task in header for task in TASKS)
    rows = [line for line in table if line.startswith("| tiny-mixtral")]
    assert len(rows) == 2 and any("| greedy " in r for r in rows) and any("| scmoe-b0.5" in r for r in rows)
    # model, method, then per task: value, n, 95% CI
    assert all(line.count("|") == 2 + 3 * len(TASKS) + 1 and "nan" not in line for line in rows)


@pytest.mark.parametrize("data_root", ["", "/somewhere/shared/data"])
def test_make_data_demo_takes_the_shipped_subset(data_root: str) -> None:
    """`DATA=demo` (the README's tiny sweep) reads the shipped subset whether or not ../shared exists."""
    proc = subprocess.run(
        ["make", "-n", "sweep-beta", "DATA=demo", f"DATA_ROOT={data_root}", "MODEL_CONFIG=tiny-mixtral"],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )
    sweep = next(line for line in proc.stdout.splitlines() if "scmoe-eval -m" in line)
    assert "task.demo=true" in sweep and "task.data_dir" not in sweep
    default = subprocess.run(["make", "-n", "sweep-beta", f"DATA_ROOT={data_root}"], cwd=REPO, capture_output=True,
                             text=True, timeout=60).stdout
    assert ("task.data_dir='/somewhere/shared/data/" in default) == bool(data_root) and "task.demo" not in default
