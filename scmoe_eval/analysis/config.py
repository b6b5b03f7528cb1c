"""Typed config of `scmoe-eval-analyze`: the run's model/task/run groups plus an `analysis` group.

The model, task and run schemas are the ones `scmoe-eval` uses (scmoe_eval/config.py), so every
model config under conf/model/ works unchanged. Weak routings are given as short labels
(`rank2`, `random1`, `topk1`, `topp0.5`) so a sweep is one override: `analysis.weak=[rank1,rank2]`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Optional

from hydra.core.config_store import ConfigStore

from scmoe_eval.config import ConfigError, ModelConfig, RoutingConfig, RunConfig, TaskConfig

ANALYSIS_NAMES = ("kld", "unchosen", "heatmap", "routing")
PAPER_WEAK = ["rank1", "rank2", "rank3", "rank4", "rank5", "rank6", "rank7", "rank8", "random1"]
SPANS = ("all", "answer")
SPLITS = ("train", "test")
_LABEL = re.compile(r"^(rank|topk|random)(\d+)$|^topp(\d*\.?\d+)$")


@dataclass
class AnalysisConfig:
    name: str = "kld"  # kld | unchosen | heatmap | routing
    strong: RoutingConfig = field(default_factory=lambda: RoutingConfig(kind="topk", k=2))
    weak: list[str] = field(default_factory=lambda: list(PAPER_WEAK))  # rankK | topkK | randomK | toppP
    amateur: Optional[str] = None  # kld: a dense model with the same vocabulary (the paper: Mistral-7B)
    split: str = "train"  # GSM8K split the text comes from (the paper's Tab.5: train)
    span: str = "all"  # tokens scored: all = question + answer, answer = the gold answer only
    strip_calculator: bool = True  # drop GSM8K's <<48/2=24>> calculator annotations from the gold answer
    example_index: Optional[int] = None  # heatmap: the item (its GSM8K index) to draw; None = first item
    tables_dir: Optional[str] = None  # also copy the tables and PNGs here (not part of the config hash)


@dataclass
class AnalyzeConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    run: RunConfig = field(default_factory=lambda: RunConfig(batch_size=1))
    analysis: AnalysisConfig = field(default_factory=AnalysisConfig)


def register_analysis_configs() -> None:
    """`base_analyze` is the root schema; `analysis/base_analysis` the group schema."""
    cs = ConfigStore.instance()
    cs.store(name="base_analyze", node=AnalyzeConfig)
    cs.store(group="analysis", name="base_analysis", node=AnalysisConfig)


def parse_weak(label: str, key: str = "analysis.weak") -> RoutingConfig:
    """'rank2' -> RoutingConfig(kind='rank', k=2); 'topp0.5' -> topp p=0.5. A bad label names `key`."""
    m = _LABEL.match(str(label))
    if not m:
        raise ConfigError(key, f"{label!r} is not a routing label; use rankK, topkK, randomK or toppP (e.g. rank2)")
    if m.group(3) is not None:
        return RoutingConfig(kind="topp", p=float(m.group(3)))
    return RoutingConfig(kind=m.group(1), k=int(m.group(2)))


def validate_analysis(cfg: AnalyzeConfig, num_experts: Optional[int] = None) -> None:
    """Value checks before any model loads; with `num_experts`, every rank/top-k must fit the model."""
    from scmoe_eval.config import _validate_policy

    a = cfg.analysis
    if a.name not in ANALYSIS_NAMES:
        raise ConfigError("analysis.name", f"must be one of {', '.join(ANALYSIS_NAMES)}, got {a.name!r}")
    if a.split not in SPLITS:
        raise ConfigError("analysis.split", f"must be one of {', '.join(SPLITS)}, got {a.split!r}")
    if a.span not in SPANS:
        raise ConfigError("analysis.span", f"must be one of {', '.join(SPANS)}, got {a.span!r}")
    if not a.weak and not a.amateur:
        raise ConfigError("analysis.weak", "give at least one weak routing (e.g. [rank2]) or analysis.amateur")
    if len(set(a.weak)) != len(a.weak):
        raise ConfigError("analysis.weak", f"has duplicates: {list(a.weak)}")
    _validate_policy("analysis.strong", a.strong, num_experts)
    for label in a.weak:
        try:
            _validate_policy("analysis.weak", parse_weak(label), num_experts)
        except ConfigError as err:  # name the list entry, not a `.k` key the user never wrote
            raise ConfigError("analysis.weak", f"{label!r}: {str(err).removeprefix(err.key + ': ')}") from None
    if a.name != "kld" and a.amateur:
        raise ConfigError("analysis.amateur", f"only the kld analysis compares an amateur model, not {a.name}")
    r = cfg.run
    if r.limit is not None and r.limit < 1:
        raise ConfigError("run.limit", f"must be >= 1 or null, got {r.limit}")
    if r.batch_size < 1:
        raise ConfigError("run.batch_size", f"must be >= 1, got {r.batch_size}")
    if r.num_shards != 1 or r.shard != 0:
        raise ConfigError("run.num_shards", "analyses run unsharded (run.num_shards=1, run.shard=0)")
