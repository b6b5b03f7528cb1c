"""A multirun checks every job's config before the first job runs; one error lists every bad job."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from scmoe_eval.cli import CONFIG_DIR, EXIT_BAD_CONFIG
from scmoe_eval.config import ConfigError
from scmoe_eval.sweep import _JobBuilder, check_sweep, sweep_jobs

REPO = Path(__file__).resolve().parents[1]
TINY = ["model=tiny-mixtral", "task.demo=true", "run.limit=2"]


def test_every_bad_job_is_listed_before_any_runs(tmp_path: Path) -> None:
    argv = ["-m", *TINY, "strategy=scmoe", "strategy.weak.k=2,9,12", "strategy.beta=0.5,-1", f"run.output_dir={tmp_path}"]
    with pytest.raises(ConfigError) as info:
        check_sweep(argv, CONFIG_DIR)
    lines = str(info.value).splitlines()
    assert info.value.key == "multirun" and lines[0] == "multirun: 5 of 6 jobs are invalid; nothing was run:"
    assert lines[1] == ("  jobs 1 (strategy.weak.k=2 strategy.beta=-1), 3 (strategy.weak.k=9 strategy.beta=-1), "
                        "5 (strategy.weak.k=12 strategy.beta=-1): strategy.beta: must be >= 0, got -1.0")
    assert "job 2 (strategy.weak.k=9 strategy.beta=0.5): strategy.weak.k: rank-9 needs at least 9 experts" in lines[2]
    assert "job 4 (strategy.weak.k=12 strategy.beta=0.5): strategy.weak.k: rank-12" in lines[3] and len(lines) == 4


def test_paths_and_code_gate_are_checked_per_job(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_ALLOW_CODE_EVAL", raising=False)
    argv = ["-m", "model=tiny-mixtral", "task=gsm8k,mbpp", "task.demo=true", "model.path=fixture:mixtral,/nonexistent/ckpt",
            f"run.output_dir={tmp_path}"]
    with pytest.raises(ConfigError) as info:
        check_sweep(argv, CONFIG_DIR)
    text = str(info.value)
    assert "3 of 4 jobs are invalid" in text
    assert "job 1 (task=gsm8k model.path=/nonexistent/ckpt): model.path: '/nonexistent/ckpt' does not exist" in text
    assert "jobs 2 (task=mbpp model.path=fixture" in text and "/nonexistent/ckpt): task.allow_code_execution" in text


def test_single_runs_and_valid_sweeps_pass(tmp_path: Path) -> None:
    assert check_sweep([*TINY, "strategy.beta=0.5", f"run.output_dir={tmp_path}"], CONFIG_DIR) == 0  # not a sweep
    assert check_sweep(["--cfg", "job", "-m", *TINY], CONFIG_DIR) == 0  # Hydra's own flags: left to Hydra
    assert check_sweep(["-m", *TINY, "strategy=greedy,scmoe", f"run.output_dir={tmp_path}"], CONFIG_DIR) == 2


def test_preset_sweeps_are_expanded_without_dash_m() -> None:
    with initialize_config_dir(version_base="1.3", config_dir=CONFIG_DIR):
        jobs, _ = sweep_jobs(["experiment=paper-table1", "task.allow_code_execution=true"])
    assert len(jobs) == 4 * 5 and ["task=mbpp", "strategy.beta=0.7", "experiment=paper-table1",
                                   "task.allow_code_execution=True"] in jobs


@pytest.mark.skipif(torch.cuda.is_available(), reason="about a machine without a GPU")
def test_slurm_jobs_are_not_judged_by_this_machines_gpus(tmp_path: Path) -> None:
    argv = ["-m", *TINY, "model.require_gpu=true", "strategy=greedy,scmoe", f"run.output_dir={tmp_path}"]
    with pytest.raises(ConfigError, match="needs a CUDA GPU"):
        check_sweep(argv, CONFIG_DIR)
    assert check_sweep([*argv, "hydra/launcher=slurm"], CONFIG_DIR) == 2


def test_fast_job_configs_equal_hydras_own_composition() -> None:
    """One compose per group choice plus value overrides gives exactly what Hydra composes per job."""
    jobs = [
        ["model=tiny-mixtral", "strategy=scmoe", "strategy.weak.k=3", "task=mbpp", "task.stop=[]", "run.limit=null"],
        ["model=tiny-mixtral", "strategy=dola", "strategy.dola_layers=[0,2]", "task.data_dir='/d/${task.name}'"],
        ["experiment=ablation-weak-rank", "strategy.beta=0.3", "model.path=/x", "hydra/launcher=slurm"],
        ["strategy=self-consistency-scmoe", "strategy.num_samples=4", "+extra.note=hello"],
    ]
    with initialize_config_dir(version_base="1.3", config_dir=CONFIG_DIR):
        builder = _JobBuilder(CONFIG_DIR, OverridesParser.create())
        for job in jobs:
            fast, hydra = builder.build(job), compose("config", overrides=job)
            assert OmegaConf.to_container(fast) == OmegaConf.to_container(hydra), job


@pytest.mark.slow
def test_cli_sweep_with_a_bad_job_runs_nothing(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "scmoe_eval", "-m", *TINY, "strategy=scmoe", "strategy.weak.k=2,9", f"run.output_dir={tmp_path}"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == EXIT_BAD_CONFIG
    assert proc.stderr.strip().splitlines()[-2:] == [
        "scmoe-eval: error: multirun: 1 of 2 jobs are invalid; nothing was run:",
        "  job 1 (strategy.weak.k=9): strategy.weak.k: rank-9 needs at least 9 experts; the model has 8",
    ]
    assert not list(tmp_path.rglob("generations.jsonl")) and not list(tmp_path.glob("gsm8k__*"))
