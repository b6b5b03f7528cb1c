"""Sharded multirun through the submitit launcher (local executor here, SLURM on a cluster)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException

from scmoe_eval.cli import CONFIG_DIR

REPO = Path(__file__).resolve().parents[1]


def hydra_cfg(*overrides: str):
    with initialize_config_dir(version_base="1.3", config_dir=CONFIG_DIR):
        return compose("config", overrides=list(overrides), return_hydra_config=True).hydra


def test_slurm_launcher_two_nodes_config() -> None:
    launcher = hydra_cfg(
        "hydra/launcher=slurm", "hydra.launcher.nodes=2", "hydra.launcher.gpus_per_node=4",
        "hydra.launcher.partition=gpu",
    ).launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.nodes, launcher.gpus_per_node, launcher.partition, launcher.timeout_min) == (2, 4, "gpu", 720)
    assert hydra_cfg("hydra/launcher=submitit_slurm").launcher.gpus_per_node is None  # the plugin's own default
    with pytest.raises(ConfigCompositionException):
        hydra_cfg("hydra/launcher=slurm", "hydra.launcher.gpus=4")  # not a submitit option


@pytest.mark.slow
def test_sharded_multirun_with_submitit_local(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable, "-m", "scmoe_eval", "-m", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10",
            "model=tiny-mixtral", "task=gsm8k", "task.demo=true", "strategy=scmoe",
            "run.limit=4", "run.max_new_tokens=8", "run.num_shards=2", "run.shard=0,1", f"run.output_dir={tmp_path}",
        ],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dirs = list(tmp_path.glob("gsm8k__*"))
    assert len(run_dirs) == 1, "both shards must write into one run directory"
    shards = sorted(p.name for p in (run_dirs[0] / "shards").glob("*.jsonl"))
    assert shards == ["generations-0-of-2.jsonl", "generations-1-of-2.jsonl"]
    assert json.loads((run_dirs[0] / "metrics.json").read_text())["n_items"] == 4
    assert list(tmp_path.glob("_hydra/multiruns/*/.submitit/*")), "jobs did not go through submitit"
