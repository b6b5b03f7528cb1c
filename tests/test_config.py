"""Config tree and validation: every YAML composes against its schema; bad values name their key."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException

from scmoe_eval.cli import CONFIG_DIR
from scmoe_eval.config import ConfigError, ExperimentConfig, to_experiment, used_policies, validate

GROUPS = ("model", "strategy", "task", "experiment")


def load(*overrides: str) -> ExperimentConfig:
    """Compose the root config with overrides, as the CLI does, and convert to the dataclass."""
    with initialize_config_dir(version_base="1.3", config_dir=CONFIG_DIR):
        cfg = compose("config", overrides=list(overrides))
    return to_experiment(cfg)


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (Path(CONFIG_DIR) / group).glob("*.yaml"))


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in options(g)])
def test_every_option_composes_and_validates(group: str, option: str) -> None:
    required = {"local": ["model.path=/somewhere"], "deepseek-moe-16b": ["model.path=/somewhere"],
                "paper-table4": ["model.path=/somewhere"],
                "prompts": ["task.path=/somewhere"]}
    cfg = load(f"{group}={option}", *required.get(option, []))
    assert isinstance(cfg, ExperimentConfig)
    validate(cfg)


def test_defaults_are_the_paper_main_setting() -> None:
    cfg = load("strategy=scmoe")
    assert cfg.model.path == "mistralai/Mixtral-8x7B-v0.1" and cfg.model.dtype == "bfloat16"
    assert cfg.model.device_map == "auto" and cfg.model.require_gpu
    s = cfg.strategy
    assert (s.strong.kind, s.strong.k, s.weak.kind, s.weak.k, s.alpha, s.beta) == ("topk", 2, "rank", 2, 0.1, 0.5)


def test_self_consistency_presets_match_the_paper() -> None:
    sc = load("strategy=self-consistency").strategy
    assert (sc.inner, sc.num_samples, sc.temperature) == ("sample", 20, 0.7)
    both = load("strategy=self-consistency-scmoe").strategy
    assert (both.inner, both.weak.kind, both.weak.k, both.beta, both.temperature) == ("scmoe-sample", "rank", 3, 0.5, 1.0)


def test_user_override_names() -> None:
    cfg = load(
        "strategy=dynamic", "strategy.routing.p=0.4", "strategy.beta=0.3", "strategy.alpha=0.2",
        "strategy.weak.k=4", "strategy.strong.k=3", "run.limit=5", "run.shard=1", "run.num_shards=2",
    )
    s = cfg.strategy
    assert (s.routing.kind, s.routing.p, s.beta, s.alpha, s.weak.k, s.strong.k) == ("topp", 0.4, 0.3, 0.2, 4, 3)
    assert (cfg.run.limit, cfg.run.shard, cfg.run.num_shards) == (5, 1, 2)


def test_tiny_models_resolve_to_fixtures_on_cpu() -> None:
    for option in [o for o in options("model") if o.startswith("tiny-")]:
        m = load(f"model={option}").model
        assert m.path.startswith("fixture:") and (m.device, m.dtype, m.require_gpu) == ("cpu", "float32", False)


def test_sweep_presets_are_multiruns() -> None:
    with initialize_config_dir(version_base="1.3", config_dir=CONFIG_DIR):
        cfg = compose("config", overrides=["experiment=ablation-weak-rank"], return_hydra_config=True)
    assert str(cfg.hydra.mode) == "RunMode.MULTIRUN"
    assert cfg.hydra.sweeper.params["strategy.weak.k"] == "1,2,3,4,5,6,7,8"


def test_unknown_key_rejected_by_schema() -> None:
    with pytest.raises(ConfigCompositionException, match="strategy.betta"):
        load("strategy.betta=0.5")


@pytest.mark.parametrize("override,key", [("+run.resume_from=x", "run.resume_from"), ("+bogus=1", "bogus")])
def test_keys_added_with_plus_are_rejected_not_dropped(override: str, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(override)
    assert info.value.key == key


def test_extra_is_free_form() -> None:
    assert load("+extra.note=hello").extra == {"note": "hello"}


def test_unknown_group_option_lists_valid_ones() -> None:
    with pytest.raises(Exception, match="Could not find 'strategy/scmo'") as info:
        load("strategy=scmo")
    assert "scmoe-sample" in str(info.value) and "greedy" in str(info.value)


@pytest.mark.parametrize(
    "overrides,key",
    [
        (["strategy=scmoe", "strategy.beta=-0.1"], "strategy.beta"),
        (["strategy=scmoe", "strategy.alpha=0"], "strategy.alpha"),
        (["strategy=scmoe", "strategy.alpha=1.5"], "strategy.alpha"),
        (["strategy=dynamic", "strategy.routing.p=0"], "strategy.routing.p"),
        (["strategy=dynamic", "strategy.routing.p=1.2"], "strategy.routing.p"),
        (["strategy=scmoe", "strategy.weak.k=0"], "strategy.weak.k"),
        (["strategy=scmoe", "strategy.weak.kind=rnk"], "strategy.weak.kind"),
        (["strategy=sample", "strategy.temperature=0"], "strategy.temperature"),
        (["run.shard=2", "run.num_shards=2"], "run.shard"),
        (["run.batch_size=0"], "run.batch_size"),
        (["run.limit=0"], "run.limit"),
        (["logger=tensorboard"], "logger"),
        (["model.dtype=float8"], "model.dtype"),
        (["strategy=cd", "strategy.amateur=null"], "strategy.amateur"),
        (["strategy=cd", "strategy.beta=-1"], "strategy.beta"),
        (["strategy=dola", "strategy.dola_layers=mid"], "strategy.dola_layers"),
        (["strategy=dola", "strategy.dola_layers=[]"], "strategy.dola_layers"),
        (["strategy=dola", "strategy.dola_layers=[0,-2]"], "strategy.dola_layers"),
        (["strategy=dola", "strategy.relative_top=0"], "strategy.relative_top"),
        (["strategy=dola", "strategy.repetition_penalty=0"], "strategy.repetition_penalty"),
        (["strategy=contrastive-search", "strategy.penalty_alpha=1.5"], "strategy.penalty_alpha"),
        (["strategy=contrastive-search", "strategy.top_k=0"], "strategy.top_k"),
        (["strategy=greedy", "strategy.num_samples=3"], "strategy.num_samples"),
        (["strategy=dola", "strategy.num_samples=2"], "strategy.num_samples"),
        (["strategy=scmoe", "strategy.num_samples=2"], "strategy.num_samples"),
        (["run.schedule=dynamic"], "run.schedule"),
        (["strategy=dola", "run.schedule=continuous"], "run.schedule"),
        (["strategy=contrastive-search", "run.schedule=continuous"], "run.schedule"),
        (["strategy=self-consistency", "run.schedule=continuous"], "run.schedule"),
        (["strategy=sample", "strategy.num_samples=2", "run.schedule=continuous"], "run.schedule"),
        (["run.compile=true", "run.schedule=continuous"], "run.compile"),
        (["strategy=dola", "run.compile=true"], "run.compile"),
    ],
)
def test_bad_values_name_their_key(overrides: list[str], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        validate(load(*overrides))
    assert info.value.key == key and str(info.value).startswith(key)


def test_continuous_schedule_takes_one_sample_strategies() -> None:
    for name in ("greedy", "sample", "scmoe", "scmoe-sample", "dynamic"):
        validate(load(f"strategy={name}", "run.schedule=continuous"))


def test_compiled_decode_takes_the_engine_strategies() -> None:
    for name in ("greedy", "scmoe", "scmoe-sample", "self-consistency", "dynamic"):
        validate(load(f"strategy={name}", "run.compile=true"))


def test_sampling_strategies_take_many_samples() -> None:
    for name in ("sample", "scmoe-sample", "self-consistency"):
        validate(load(f"strategy={name}", "strategy.num_samples=4"))


def test_k_beyond_experts_checked_only_for_policies_in_use() -> None:
    scmoe = load("strategy=scmoe", "strategy.weak.k=9")
    with pytest.raises(ConfigError, match="the model has 8") as info:
        validate(scmoe, num_experts=8)
    assert info.value.key == "strategy.weak.k"
    validate(load("strategy=greedy", "strategy.weak.k=9"), num_experts=8)  # weak is unused by greedy
    with pytest.raises(ConfigError, match="strategy.routing.k"):
        validate(load("strategy=topk", "strategy.routing.k=9"), num_experts=8)


def test_used_policies() -> None:
    assert set(used_policies(load("strategy=scmoe").strategy)) == {"strategy.strong", "strategy.weak"}
    assert set(used_policies(load("strategy=rank").strategy)) == {"strategy.routing"}
    assert set(used_policies(load("strategy=self-consistency-scmoe").strategy)) == {"strategy.strong", "strategy.weak"}
    assert set(used_policies(load("strategy=self-consistency").strategy)) == {"strategy.routing"}
    for baseline in ("cd", "dola", "contrastive-search"):  # stock routing: no policy to check
        assert used_policies(load(f"strategy={baseline}").strategy) == {}


def test_conf_ships_in_the_wheel() -> None:
    """Every file under conf/ matches a package-data glob, so a non-editable install has the whole tree."""
    import fnmatch
    import tomllib

    root = Path(__file__).resolve().parent.parent
    setuptools_cfg = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert setuptools_cfg["package-dir"]["scmoe_eval.conf"] == "conf"
    globs = setuptools_cfg["package-data"]["scmoe_eval.conf"]
    files = [p.relative_to(root / "conf").as_posix() for p in (root / "conf").rglob("*") if p.is_file()]
    assert "config.yaml" in files and len(files) > 30
    # fnmatch's * crosses "/", so compare segment counts as setuptools' glob does
    unshipped = [f for f in files if not any(fnmatch.fnmatch(f, g) and f.count("/") == g.count("/") for g in globs)]
    assert unshipped == []


def test_paper_table4_is_the_deepseek_grid() -> None:
    cfg = load("experiment=paper-table4", "model.path=/ckpt/deepseek-moe-16b-qwen2moe")
    s = cfg.strategy
    assert cfg.model.name == "deepseek-moe-16b" and s.name == "scmoe"
    assert (s.strong.kind, s.strong.k, s.weak.kind, s.weak.k) == ("topk", 6, "topk", 1)  # paper.py's Tab.10 keys
