"""Typed configuration schemas (Hydra structured configs).

One dataclass per config group. YAML files under `conf/` extend these schemas through
their defaults lists (`register_configs` puts them in Hydra's ConfigStore), so a typo'd
key or a string where a number belongs fails at compose time. `validate` then checks
value ranges; both happen before any model is loaded.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue


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
    # Hub id or local directory. Mandatory in the schema: a filled-in default would win over a
    # group file's `path: ???` (OmegaConf keeps a set value when `???` is merged onto it), which
    # silently turned `model=local` into Mixtral-8x7B; every conf/model/*.yaml sets its own.
    path: str = MISSING
    revision: Optional[str] = None
    dtype: str = "bfloat16"  # auto | float32 | bfloat16 | float16
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    device_map: Optional[str] = "auto"  # "auto" spreads a big model over all GPUs
    attn_implementation: Optional[str] = None  # eager | sdpa | flash_attention_2
    experts_implementation: Optional[str] = None  # eager | grouped_mm | batched_mm | dense_hit (models/experts.py)
    trust_remote_code: bool = False  # DeepSeekMoE-16B needs it
    family: Optional[str] = None  # force a family adapter instead of detecting it
    local_files_only: bool = False
    require_gpu: bool = False  # big checkpoints: fail fast on a machine without CUDA


@dataclass
class StrategyConfig:
    name: str = "greedy"  # greedy | sample | scmoe | scmoe-sample | self-consistency | cd | dola | contrastive-search
    routing: RoutingConfig = field(default_factory=RoutingConfig)  # greedy / sample
    strong: RoutingConfig = field(default_factory=lambda: RoutingConfig(kind="topk", k=2))
    weak: RoutingConfig = field(default_factory=lambda: RoutingConfig(kind="rank", k=2))
    alpha: float = 0.1
    beta: float = 0.5
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    ban_eos: Optional[bool] = None  # None: the strategy's paper default (SCMoE bans EOS)
    two_pass: Optional[bool] = None  # SCMoE: None = batched rows, measured faster or level everywhere
    inner: str = "sample"  # self-consistency: the strategy sampled n times
    num_samples: int = 1
    amateur: Optional[str] = None  # cd: the amateur checkpoint (hub id or local dir), same vocabulary
    dola_layers: Any = "low"  # dola: "low" | "high" (even layers of [0, L/2) | [L/2, L)) or a list
    relative_top: float = 0.1  # dola: keep tokens with mature prob >= relative_top * max prob
    repetition_penalty: float = 1.2  # dola: HF-style penalty on tokens already in the row
    penalty_alpha: float = 0.6  # contrastive-search: weight of the degeneration penalty (top_k candidates)


@dataclass
class TaskConfig:
    name: str = "gsm8k"  # gsm8k | strategy_qa | mbpp | human_eval | prompts
    data_dir: Optional[str] = None  # paper JSONL layout (test.jsonl, ...) instead of the Hub
    demo: bool = False  # the few items shipped in the package (tasks/demo/<task>): offline, never a score
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
    schedule: str = "static"  # static | continuous (finished rows' slots refilled from the queue; docs/usage.md)
    compile: bool = False  # decode steps through torch.compile on a static cache (docs/decode-cost.md)
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


ROUTING_KINDS = ("default", "topk", "rank", "topp", "random")
DTYPES = ("auto", "float32", "bfloat16", "float16")
LOGGERS = (None, "wandb")
SCMOE_STRATEGIES = ("scmoe", "scmoe-sample")
BASELINE_STRATEGIES = ("cd", "dola", "contrastive-search")  # stock routing, no routing policy to check
SAMPLING_STRATEGIES = ("sample", "scmoe-sample", "self-consistency")  # the only ones where num_samples > 1 differ
DOLA_BANDS = ("low", "high")
SCHEDULES = ("static", "continuous")


class ConfigError(ValueError):
    """A bad setting, named by its dotted key so the user knows what to change."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key


def register_configs() -> None:
    """Store the dataclasses as schemas: `base_config` for the root, `base_<group>` per group."""
    cs = ConfigStore.instance()
    cs.store(name="base_config", node=ExperimentConfig)
    cs.store(group="model", name="base_model", node=ModelConfig)
    cs.store(group="strategy", name="base_strategy", node=StrategyConfig)
    cs.store(group="task", name="base_task", node=TaskConfig)


def to_experiment(cfg: DictConfig) -> ExperimentConfig:
    """The typed config; keys the schema lacks (added with `+key=...`) are an error, not dropped."""
    try:
        experiment: ExperimentConfig = OmegaConf.to_object(cfg)  # type: ignore[assignment]
    except MissingMandatoryValue as err:
        key = str(err.full_key or "?")
        raise ConfigError(key, f"is required and was not given (add {key}=...)") from None
    given = OmegaConf.to_container(cfg, resolve=False)
    unknown = _unknown_keys(given, dataclasses.asdict(experiment))
    if unknown:
        raise ConfigError(unknown[0], "unknown key (not in the config schema; see `scmoe-eval --cfg job`)")
    return experiment


def _unknown_keys(given: dict, known: dict, prefix: str = "") -> list[str]:
    out = []
    for key, value in given.items():
        if key not in known:
            out.append(f"{prefix}{key}")
        elif isinstance(value, dict) and isinstance(known[key], dict):
            out += _unknown_keys(value, known[key], f"{prefix}{key}.")
    return out


def used_policies(strategy: StrategyConfig) -> dict[str, RoutingConfig]:
    """The routing policies a strategy actually runs, keyed by their override name."""
    name = strategy.inner if strategy.name == "self-consistency" else strategy.name
    if name in SCMOE_STRATEGIES:
        return {"strategy.strong": strategy.strong, "strategy.weak": strategy.weak}
    if name in BASELINE_STRATEGIES:
        return {}
    return {"strategy.routing": strategy.routing}


def validate(cfg: ExperimentConfig, num_experts: Optional[int] = None) -> None:
    """Check value ranges; with `num_experts`, also that every k fits the model."""
    s, r = cfg.strategy, cfg.run
    _check(s.beta >= 0 and math.isfinite(s.beta), "strategy.beta", f"must be >= 0, got {s.beta}")
    _check(0 < s.alpha <= 1, "strategy.alpha", f"must be in (0, 1], got {s.alpha}")
    _check(s.temperature > 0, "strategy.temperature", f"must be > 0, got {s.temperature}")
    _check(0 < s.top_p <= 1, "strategy.top_p", f"must be in (0, 1], got {s.top_p}")
    _check(s.top_k >= 0, "strategy.top_k", f"must be >= 0 (0 = off), got {s.top_k}")
    _check(s.num_samples >= 1, "strategy.num_samples", f"must be >= 1, got {s.num_samples}")
    _check(s.num_samples == 1 or s.name in SAMPLING_STRATEGIES, "strategy.num_samples",
           f"{s.name} is deterministic, so every sample would be the same; use 1, or one of "
           f"{', '.join(sorted(SAMPLING_STRATEGIES))}")
    _check(s.inner != "self-consistency", "strategy.inner", "cannot itself be self-consistency")
    for key, policy in used_policies(s).items():
        _validate_policy(key, policy, num_experts)
    _validate_baseline(s)
    _check(cfg.model.dtype in DTYPES, "model.dtype", f"must be one of {DTYPES}, got {cfg.model.dtype!r}")
    _check(cfg.logger in LOGGERS, "logger", f"must be null or 'wandb', got {cfg.logger!r}")
    _check(r.limit is None or r.limit >= 1, "run.limit", f"must be >= 1 or null, got {r.limit}")
    _check(r.batch_size >= 1, "run.batch_size", f"must be >= 1, got {r.batch_size}")
    _validate_schedule(r, s)
    _check(r.max_new_tokens >= 1, "run.max_new_tokens", f"must be >= 1, got {r.max_new_tokens}")
    _check(r.num_shards >= 1, "run.num_shards", f"must be >= 1, got {r.num_shards}")
    _check(0 <= r.shard < r.num_shards, "run.shard", f"must be in [0, {r.num_shards}), got {r.shard}")
    _check(cfg.task.timeout > 0, "task.timeout", f"must be > 0, got {cfg.task.timeout}")
    _check(bool(cfg.model.path) and cfg.model.path != MISSING, "model.path",
           "is required: model.path=/path/to/checkpoint (a local directory) or a Hub id")
    _check(cfg.task.name != "prompts" or bool(cfg.task.path), "task.path",
           "task=prompts needs task.path=/file.jsonl with one {\"id\", \"prompt\"} object per line")
    _check(not (cfg.task.demo and cfg.task.data_dir), "task.demo",
           "task.demo=true reads the shipped demo subset; drop it or task.data_dir, not both")


def _validate_baseline(s: StrategyConfig) -> None:
    """Settings of the cd / dola / contrastive-search baselines (only the chosen one is checked)."""
    if s.name == "cd":
        _check(bool(s.amateur), "strategy.amateur", "the cd strategy needs an amateur model (hub id or local dir)")
    elif s.name == "dola":
        layers = s.dola_layers
        if isinstance(layers, str):
            message = f"must be one of {DOLA_BANDS} or a list of layers, got {layers!r}"
            _check(layers in DOLA_BANDS, "strategy.dola_layers", message)
        else:
            ok = isinstance(layers, (list, tuple)) and len(layers) > 0
            ok = ok and all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in layers)
            _check(ok, "strategy.dola_layers", f"must be a non-empty list of layer indices >= 0, got {layers!r}")
        _check(0 < s.relative_top <= 1, "strategy.relative_top", f"must be in (0, 1], got {s.relative_top}")
        _check(s.repetition_penalty > 0, "strategy.repetition_penalty", f"must be > 0, got {s.repetition_penalty}")
    elif s.name == "contrastive-search":
        _check(0 <= s.penalty_alpha <= 1, "strategy.penalty_alpha", f"must be in [0, 1], got {s.penalty_alpha}")
        _check(s.top_k >= 1, "strategy.top_k", f"contrastive search needs >= 1 candidates, got {s.top_k}")


def _validate_schedule(r: RunConfig, s: StrategyConfig) -> None:
    """Continuous batching runs one engine call per prompt and sample: not the baselines (their own
    per-row state) nor several samples (those share one prefill per prompt instead). The compiled
    decode needs static batches and the engine's own scorers (not the baselines')."""
    _check(r.schedule in SCHEDULES, "run.schedule", f"must be one of {SCHEDULES}, got {r.schedule!r}")
    if r.compile:
        _check(r.schedule == "static", "run.compile",
               "the compiled decode needs a fixed batch shape; use run.schedule=static or run.compile=false")
        _check(s.name not in BASELINE_STRATEGIES, "run.compile",
               f"the {s.name} baseline decodes eager; use run.compile=false")
    if r.schedule == "continuous":
        _check(s.name not in BASELINE_STRATEGIES, "run.schedule",
               f"continuous does not support the {s.name} baseline; use run.schedule=static")
        _check(s.name != "self-consistency" and s.num_samples == 1, "run.schedule",
               f"continuous runs one sample per item, this strategy draws {s.num_samples} "
               f"({s.name}); use run.schedule=static")


def _validate_policy(key: str, policy: RoutingConfig, num_experts: Optional[int]) -> None:
    kinds = ", ".join(ROUTING_KINDS)
    _check(policy.kind in ROUTING_KINDS, f"{key}.kind", f"must be one of {kinds}, got {policy.kind!r}")
    if policy.kind == "topp":
        _check(0 < policy.p <= 1, f"{key}.p", f"must be in (0, 1], got {policy.p}")
    if policy.kind in ("topk", "rank", "random"):
        _check(policy.k >= 1, f"{key}.k", f"must be >= 1 (ranks count from 1), got {policy.k}")
        if num_experts is not None:
            _check(
                policy.k <= num_experts,
                f"{key}.k",
                f"{policy.kind}-{policy.k} needs at least {policy.k} experts; the model has {num_experts}",
            )


def _check(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(key, message)
