"""`scmoe-eval-analyze`: a Hydra app over the same conf/ tree as `scmoe-eval` (config `analyze.yaml`).

It shares the `model` and `task` groups and the `run` schema with runs, and adds the `analysis`
group (conf/analysis/: kld, unchosen, heatmap, routing). Examples:

    scmoe-eval-analyze model=tiny-mixtral analysis=kld task.data_dir=demo
    scmoe-eval-analyze -m model.path=/ckpt analysis=kld,unchosen,heatmap,routing
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig, OmegaConf

from scmoe_eval.analysis.config import AnalyzeConfig, register_analysis_configs
from scmoe_eval.cli import CONFIG_DIR, _fail
from scmoe_eval.config import ConfigError, _unknown_keys, register_configs

register_configs()
register_analysis_configs()


def to_analyze(cfg: DictConfig) -> AnalyzeConfig:
    """The typed config; keys the schema lacks are an error naming the key."""
    import dataclasses

    typed: AnalyzeConfig = OmegaConf.to_object(cfg)  # type: ignore[assignment]
    unknown = _unknown_keys(OmegaConf.to_container(cfg, resolve=False), dataclasses.asdict(typed))
    if unknown:
        raise ConfigError(unknown[0], "unknown key (not in the analysis config schema; see `scmoe-eval-analyze --cfg job`)")
    return typed


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="analyze")
def _app(cfg: DictConfig) -> None:
    from scmoe_eval.analysis.runner import run_analysis

    try:
        run_dir = run_analysis(to_analyze(cfg))
    except ConfigError as err:
        _fail(err)
    print(run_dir)


def main() -> None:
    """`scmoe-eval-analyze [overrides...]` (Hydra: -m for sweeps, --help for the groups)."""
    _app()
