"""Bad input fails before any model loads, naming the key, with a non-zero exit."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

import scmoe_eval.models.loading as loading
from scmoe_eval.cli import CONFIG_DIR, EXIT_BAD_CONFIG
from scmoe_eval.config import ConfigError, to_experiment
from scmoe_eval.pipeline import run_experiment

REPO = Path(__file__).resolve().parents[1]


def cli(*args: str, out: Path) -> subprocess.CompletedProcess:
    """The CLI in a subprocess; `out` keeps even Hydra's run dir of a failing job out of the repo."""
    return subprocess.run(
        [sys.executable, "-m", "scmoe_eval", *args, f"run.output_dir={out}"], cwd=REPO, capture_output=True,
        text=True, timeout=300,
    )


@pytest.fixture
def no_model_load(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_: object, **__: object) -> None:
        raise AssertionError("a model was loaded although the config is bad")

    monkeypatch.setattr(loading, "load_model", refuse)
    monkeypatch.setattr(loading.AutoModelForCausalLM, "from_pretrained", refuse)


def run_config(tmp_path: Path, *overrides: str) -> Path:
    with initialize_config_dir(version_base="1.3", config_dir=CONFIG_DIR):
        cfg = compose("config", overrides=[f"run.output_dir={tmp_path}", *overrides])
    return run_experiment(to_experiment(cfg))


def test_unknown_group_option_lists_valid_options(tmp_path: Path) -> None:
    proc = cli("model=mixtral-8x8b", out=tmp_path)
    assert proc.returncode != 0
    assert "Could not find 'model/mixtral-8x8b'" in proc.stderr
    assert "Available options in 'model'" in proc.stderr and "mixtral-8x7b" in proc.stderr


def test_unknown_key_is_rejected(tmp_path: Path) -> None:
    proc = cli("strategy=scmoe", "strategy.gamma=0.5", out=tmp_path)
    assert proc.returncode != 0 and "Key 'gamma' not in 'StrategyConfig'" in proc.stderr
    appended = cli("+run.resume_from=x", out=tmp_path)
    assert appended.returncode == EXIT_BAD_CONFIG and "run.resume_from: unknown key" in appended.stderr


def test_negative_beta_exits_2_naming_the_key(tmp_path: Path) -> None:
    proc = cli("model=tiny-mixtral", "strategy=scmoe", "strategy.beta=-1", out=tmp_path)
    assert proc.returncode == EXIT_BAD_CONFIG
    assert proc.stderr.strip().splitlines()[-1] == "scmoe-eval: error: strategy.beta: must be >= 0, got -1.0"
    assert not any(tmp_path.iterdir())  # a single run leaves no _hydra/runs/<time>/ folder behind


@pytest.mark.parametrize(
    "overrides,key",
    [
        (["strategy=scmoe", "strategy.alpha=1.01"], "strategy.alpha"),
        (["strategy=dynamic", "strategy.routing.p=0"], "strategy.routing.p"),
        (["strategy=scmoe", "strategy.weak.k=9"], "strategy.weak.k"),  # the fixture has 8 experts
        (["strategy=topk", "strategy.routing.k=12"], "strategy.routing.k"),
        (["strategy=self-consistency-scmoe", "strategy.strong.k=9"], "strategy.strong.k"),
        (["task.data_dir=/nonexistent/gsm8k"], "task.data_dir"),
        (["task=prompts", "task.path=/nonexistent/prompts.jsonl"], "task.path"),
        (["task=mbpp"], "task.allow_code_execution"),
        (["task=human_eval"], "task.allow_code_execution"),
        (["strategy.name=beam"], "strategy.name"),
    ],
)
def test_bad_input_fails_before_model_load(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_model_load: None, overrides: list[str], key: str,
) -> None:
    monkeypatch.delenv("HF_ALLOW_CODE_EVAL", raising=False)
    data = [] if any(o.startswith(("task.data_dir", "task=prompts")) for o in overrides) else ["task.demo=true"]
    with pytest.raises(ConfigError) as info:
        run_config(tmp_path, "model=tiny-mixtral", *data, *overrides)
    assert info.value.key == key


def test_k_is_checked_against_the_checkpoint_config(tmp_path: Path, no_model_load: None) -> None:
    with pytest.raises(ConfigError, match="rank-9 needs at least 9 experts; the model has 8"):
        run_config(tmp_path, "model=tiny-mixtral", "task.demo=true", "strategy=scmoe",
                   "strategy.weak.k=9")


def test_missing_local_checkpoint_names_the_override(tmp_path: Path, no_model_load: None) -> None:
    with pytest.raises(ConfigError, match="MODEL=/path/to/checkpoint") as info:
        run_config(tmp_path, "model=local", "model.path=/nonexistent/ckpt")
    assert info.value.key == "model.path" and "make demo" in str(info.value)


@pytest.mark.parametrize("offline", ["1", "0"])  # "0": the one-request Hub probe (fails here, 404s online)
def test_unreachable_hub_names_the_override_and_the_demo(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_model_load: None, offline: str
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", offline)
    with pytest.raises(ConfigError, match="MODEL=/path/to/checkpoint") as info:
        run_config(tmp_path, "model=olmoe", "model.require_gpu=false", "model.path=scmoe-eval/no-such-model")
    assert info.value.key == "model.path" and "make demo" in str(info.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the check is about machines without a GPU")
def test_reproduce_gsm8k_without_gpu_fails_fast_with_hints(tmp_path: Path) -> None:
    proc = subprocess.run(
        ["make", "-s", "reproduce-gsm8k", f"RUNS={tmp_path}", f"TABLES={tmp_path}/tables"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode != 0
    message = proc.stderr
    assert "model.require_gpu" in message and "MODEL=/path/to/checkpoint" in message and "make demo" in message


@pytest.mark.parametrize("model", ["local", "deepseek-moe-16b"])
def test_model_without_path_is_an_error_not_mixtral(tmp_path: Path, no_model_load: None, model: str) -> None:
    """`path: ???` in the group file must survive the schema's merge (it used to become the Hub's Mixtral)."""
    with pytest.raises(ConfigError, match="is required") as info:
        run_config(tmp_path, f"model={model}", "task.demo=true")
    assert info.value.key == "model.path"


def test_prompts_without_path_names_task_path(tmp_path: Path, no_model_load: None) -> None:
    with pytest.raises(ConfigError, match="task.path=/file.jsonl") as info:
        run_config(tmp_path, "model=tiny-mixtral", "task=prompts")
    assert info.value.key == "task.path"


def test_missing_model_path_is_named_before_the_gpu_check(tmp_path: Path, no_model_load: None) -> None:
    """mixtral-8x7b requires a GPU; a path that does not exist is still the first thing reported."""
    with pytest.raises(ConfigError, match="'/ckpt/nonexistent' does not exist") as info:
        run_config(tmp_path, "model=mixtral-8x7b", "model.path=/ckpt/nonexistent", "task.demo=true")
    assert info.value.key == "model.path"


def test_list_names_every_option_once(capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    from scmoe_eval.cli import main

    monkeypatch.setattr(sys, "argv", ["scmoe-eval", "--list"])
    main()
    out = capsys.readouterr().out
    for group in ("task", "strategy", "model", "experiment"):
        for path in (Path(CONFIG_DIR) / group).glob("*.yaml"):
            (line,) = [x for x in out.splitlines() if x.split()[:1] == [path.stem]]
            assert len(line.split(None, 1)) == 2, f"{path.stem} has no description"
    assert "base_" not in out and "  scmoe  " in out and "  paper-table1  " in out and "  tiny-mixtral  " in out


def test_help_hides_schemas_and_a_schema_is_not_an_option(tmp_path: Path) -> None:
    helped = cli("--help", out=tmp_path)
    assert helped.returncode == 0 and "base_" not in helped.stdout
    assert "strategy: cd, contrastive-search" in helped.stdout and "scmoe-eval --list" in helped.stdout
    proc = cli("strategy=base_strategy", out=tmp_path)
    assert proc.returncode == EXIT_BAD_CONFIG
    assert proc.stderr.strip().splitlines()[-1].startswith("scmoe-eval: error: strategy: base_strategy is the schema")
