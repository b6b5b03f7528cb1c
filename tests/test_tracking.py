"""logger=wandb writes an offline run (config, metrics, samples, comparison table) into the run dir."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from scmoe_eval.cli import CONFIG_DIR
from scmoe_eval.config import to_experiment
from scmoe_eval.pipeline import run_experiment
from scmoe_eval.tracking import NullTracker, build_tracker


def test_no_logger_is_a_no_op(tmp_path: Path) -> None:
    assert isinstance(build_tracker(None, tmp_path, {}), NullTracker)
    with pytest.raises(KeyError, match="valid: wandb"):
        build_tracker("mlflow", tmp_path, {})


def test_wandb_offline_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "config"))
    with initialize_config_dir(version_base="1.3", config_dir=CONFIG_DIR):
        cfg = compose("config", overrides=[
            "model=tiny-mixtral", "strategy=scmoe", "task=gsm8k", "task.demo=true",
            "run.limit=2", "run.max_new_tokens=4", f"run.output_dir={tmp_path}", "logger=wandb",
        ])
    run_dir = run_experiment(to_experiment(cfg))

    runs = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, list((run_dir / "wandb").iterdir())
    files = runs[0] / "files"
    wanted = (b"tiny-mixtral", b"weak", b"official/accuracy", b"n_unparseable")  # config and metrics
    for _ in range(100):  # wandb's service process may still be flushing the offline log on a busy machine
        data = b"".join(p.read_bytes() for p in runs[0].glob("run-*.wandb"))  # the offline record log
        if all(logged in data for logged in wanted):
            break
        time.sleep(0.2)
    for logged in wanted:
        assert logged in data, logged
    tables = {p.name.split("_")[0] for p in (files / "media" / "table").glob("*.table.json")}
    assert tables == {"samples", "comparison"}
    samples = json.loads(next((files / "media" / "table").glob("samples_*.table.json")).read_text())
    assert len(samples["data"]) == 2 and "completion" in samples["columns"]
