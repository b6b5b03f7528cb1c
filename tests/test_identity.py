"""Run identity follows what is evaluated (items, checkpoint content), not where the files lie."""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from scmoe_eval.cli import CONFIG_DIR
from scmoe_eval.config import to_experiment
from scmoe_eval.identity import checkpoint_fingerprint, run_identity
from scmoe_eval.models.fixtures import build_tiny_checkpoint
from scmoe_eval.pipeline import run_experiment
from scmoe_eval.preflight import check
from scmoe_eval.store import IDENTITY_KEY, config_hash, run_name

PROMPTS = [{"id": "a", "prompt": "Question: 2 + 2?\nAnswer:"}, {"id": "b", "prompt": "The quick brown fox"}]


def experiment(*overrides: str):
    with initialize_config_dir(version_base="1.3", config_dir=CONFIG_DIR):
        return to_experiment(compose("config", overrides=list(overrides)))


def name_of(*overrides: str) -> str:
    """The run directory name the pipeline would use, without generating anything."""
    cfg = experiment(*overrides)
    cfg_dict = asdict(cfg)
    cfg_dict[IDENTITY_KEY] = run_identity(check(cfg))
    return run_name(cfg_dict)


def write_prompts(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def two_copies(tmp_path_factory: pytest.TempPathFactory, tiny_mixtral_path: Path) -> tuple[Path, Path]:
    """The same prompts file and the same checkpoint, each at two different paths."""
    root = tmp_path_factory.mktemp("copies")
    for where in ("mount-a", "elsewhere/mount-b"):
        write_prompts(root / where / "prompts.jsonl", PROMPTS)
        shutil.copytree(tiny_mixtral_path, root / where / "ckpt")
    return root / "mount-a", root / "elsewhere" / "mount-b"


def overrides(where: Path, out: Path) -> list[str]:
    return ["model=local", f"model.path={where / 'ckpt'}", "model.dtype=float32", "model.device=cpu",
            "task=prompts", f"task.path={where / 'prompts.jsonl'}", "run.max_new_tokens=2", f"run.output_dir={out}"]


def test_same_files_at_two_paths_share_one_run_dir(two_copies: tuple[Path, Path], tmp_path: Path) -> None:
    first = run_experiment(experiment(*overrides(two_copies[0], tmp_path)))
    second = run_experiment(experiment(*overrides(two_copies[1], tmp_path)))
    assert first == second and [p.name for p in tmp_path.glob("prompts__*")] == [first.name]
    env = json.loads((second / "environment.json").read_text())
    assert env["items_generated"] == 0, "the second path regenerated what the first had done"
    assert env["local_paths"]["task.path"] == str((two_copies[1] / "prompts.jsonl").resolve())
    assert env["previous"][0]["local_paths"]["model.path"] == str((two_copies[0] / "ckpt").resolve())
    saved = json.loads((first / "config.json").read_text())
    assert saved[IDENTITY_KEY]["model"].startswith("ckpt-sha256:") and "identity" not in (first / "config.yaml").read_text()


def test_changed_data_or_weights_give_a_new_run_dir(two_copies: tuple[Path, Path], tmp_path: Path) -> None:
    base = name_of(*overrides(two_copies[0], tmp_path))
    assert name_of(*overrides(two_copies[1], tmp_path)) == base
    edited = tmp_path / "edited"
    write_prompts(edited / "prompts.jsonl", [PROMPTS[0], {**PROMPTS[1], "prompt": "The quick brown cat"}])
    shutil.copytree(two_copies[0] / "ckpt", edited / "ckpt")
    assert name_of(*overrides(edited, tmp_path)) != base
    # other weights, same config and tokenizer (e.g. the next checkpoint of a fine-tune)
    write_prompts(edited / "prompts.jsonl", PROMPTS)
    assert name_of(*overrides(edited, tmp_path)) == base
    shutil.rmtree(edited / "ckpt")
    build_tiny_checkpoint("mixtral", edited / "ckpt", seed=1)
    assert (edited / "ckpt" / "config.json").read_text() == (two_copies[0] / "ckpt" / "config.json").read_text()
    assert checkpoint_fingerprint(edited / "ckpt") != checkpoint_fingerprint(two_copies[0] / "ckpt")
    assert name_of(*overrides(edited, tmp_path)) != base


def test_demo_subset_and_the_paper_files_agree_where_their_items_do(shared_data: Path, tmp_path: Path) -> None:
    common = ["model=tiny-mixtral", "task=gsm8k", "run.limit=3", f"run.output_dir={tmp_path}"]
    demo = name_of(*common, "task.demo=true")
    assert name_of(*common, f"task.data_dir={shared_data}/gsm8k") == demo
    assert name_of(*common, f"task.data_dir={shared_data}/../data/gsm8k") == demo
    assert name_of(*common[:-2], "run.limit=4", f"run.output_dir={tmp_path}", "task.demo=true") != demo


def test_configs_without_identity_hash_their_paths_as_before() -> None:
    """Run dirs made before the identity block keep their names (scmoe-eval-score finds them)."""
    from scmoe_eval.config import ExperimentConfig

    cfg = asdict(ExperimentConfig())
    other = json.loads(json.dumps(cfg))
    other["task"]["data_dir"] = "/elsewhere"
    assert config_hash(other) != config_hash(cfg)
    cfg[IDENTITY_KEY] = other[IDENTITY_KEY] = {"data": "x", "model": "y"}
    assert config_hash(other) == config_hash(cfg)
