"""Typed configuration schemas (Hydra structured configs).

One dataclass per config group. YAML files under `conf/` are validated against these
before any model is loaded (see `validate`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional


@dataclass
class RoutingConfig:
    """One routing policy. `k` is 1-based for `rank` (rank 1 = the top expert)."""

    kind: str = "default"  # default | topk | rank | topp | random
    k: int = 2  # topk: experts kept; rank: which ranked expert; random: experts drawn
    p: float = 0.6  # topp: cumulative router mass to exceed
    seed: int = 0  # random: generator seed


@dataclass
class ModelConfig:
    name: str = "mixtral-8x7b"
    path: str = "mistralai/Mixtral-8x7B-v0.1"  # hub id or local directory
    revision: Optional[str] = None
    dtype: str = "bfloat16"  # auto | float32 | bfloat16 | float16
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    device_map: Optional[str] = "auto"  # "auto" spreads a big model over all GPUs
    attn_implementation: Optional[str] = None  # eager | sdpa | flash_attention_2
    experts_implementation: Optional[str] = None  # eager | grouped_mm | batched_mm
    trust_remote_code: bool = False  # DeepSeekMoE-16B needs it
    family: Optional[str] = None  # force a family adapter instead of detecting it
    local_files_only: bool = False


@dataclass
class StrategyConfig:
    name: str = "greedy"  # greedy | sample | scmoe | scmoe-sample | self-consistency
    routing: RoutingConfig = field(default_factory=RoutingConfig)  # greedy / sample
    strong: RoutingConfig = field(default_factory=lambda: RoutingConfig(kind="topk", k=2))
    weak: RoutingConfig = field(default_factory=lambda: RoutingConfig(kind="rank", k=2))
    alpha: float = 0.1
    beta: float = 0.5
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    ban_eos: Optional[bool] = None  # None: the strategy's paper default (SCMoE bans EOS)
    two_pass: Optional[bool] = None  # SCMoE: None picks the faster mode for the device
    inner: str = "sample"  # self-consistency: the strategy sampled n times
    num_samples: int = 1


@dataclass
class TaskConfig:
    name: str = "gsm8k"  # gsm8k | strategy_qa | mbpp | human_eval | prompts
    data_dir: Optional[str] = None  # paper JSONL layout (test.jsonl, ...) instead of the Hub
    path: Optional[str] = None  # `prompts` task: a JSONL of {id, prompt}
    dataset: Optional[str] = None  # Hub dataset id (defaults per task)
    subset: Optional[str] = None
    split: Optional[str] = None
    revision: Optional[str] = None
    stop: Optional[list[str]] = None  # override the task's stop strings
    paper_stops: bool = True  # MBPP: add the paper code's blank-line stop
    allow_code_execution: bool = False  # or HF_ALLOW_CODE_EVAL=1
    timeout: float = 3.0  # seconds per program
    num_workers: int = 4


@dataclass
class RunConfig:
    limit: Optional[int] = None
    batch_size: int = 8
    max_new_tokens: int = 512
    seed: int = 1234
    output_dir: str = "results/runs"
    shard: int = 0
    num_shards: int = 1


@dataclass
class ExperimentConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    run: RunConfig = field(default_factory=RunConfig)
    logger: Optional[str] = None  # None | wandb
    extra: dict[str, Any] = field(default_factory=dict)
