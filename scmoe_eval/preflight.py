"""Checks that need the outside world (files, the model's config.json, GPUs, the code gate).

They all run before any weights load, so a bad setting costs seconds, not a model load,
and every failure is a `ConfigError` that names the key to change.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from typing import Any, Callable, Optional

from scmoe_eval.config import ConfigError, ExperimentConfig, ModelConfig, validate

FIXTURE_PREFIX = "fixture:"
# Where each family's config.json keeps its routed-expert count.
EXPERT_COUNT_KEYS = ("num_local_experts", "num_experts", "n_routed_experts")
HUB_HINT = (
    "Point it at a local copy (make reproduce-gsm8k MODEL=/path/to/checkpoint, or model.path=/path/to/checkpoint), "
    "or try `make demo` for the whole pipeline on a tiny offline model."
)


@dataclass
class Checked:
    """A config that passed every check, with what the checks had to look up anyway."""

    cfg: ExperimentConfig  # model.path resolved to a loadable location
    task: Any  # the registered task object
    items: list  # all items of the task (after run.limit)
    num_experts: int


def resolve_model_path(model: ModelConfig) -> str:
    """`fixture:<family>` -> the cached tiny checkpoint (built offline on first use); else unchanged."""
    if not model.path.startswith(FIXTURE_PREFIX):
        return model.path
    from scmoe_eval.models.fixtures import fixture_path

    family = model.path[len(FIXTURE_PREFIX):]
    try:
        return str(fixture_path(family))
    except (KeyError, ValueError) as err:
        raise ConfigError("model.path", f"no tiny fixture for {family!r}: {err}") from None


def _looks_local(path: str) -> bool:
    return path.startswith(("/", "./", "../", "~")) or os.path.isdir(path)


def _hub_reachable_or_raise(model: ModelConfig) -> None:
    """One HEAD request without retries, so an unreachable Hub fails in seconds, not minutes."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url

    try:
        get_hf_file_metadata(hf_hub_url(model.path, "config.json", revision=model.revision), timeout=10)
    except Exception as err:  # noqa: BLE001 - any transport or HTTP failure means the same to the user
        raise ConfigError(
            "model.path", f"cannot fetch config.json of {model.path!r} from the Hugging Face Hub ({err}). {HUB_HINT}"
        ) from None


def check_local_path(model: ModelConfig) -> None:
    """A local model.path that is not a checkpoint directory is named as such, before any GPU check."""
    if _looks_local(model.path):
        path = os.path.expanduser(model.path)
        if not os.path.isdir(path):
            raise ConfigError("model.path", f"{path!r} does not exist. {HUB_HINT}")
        if not os.path.isfile(os.path.join(path, "config.json")):
            raise ConfigError("model.path", f"{path!r} is not a checkpoint directory (no config.json). {HUB_HINT}")


def read_model_config(model: ModelConfig) -> Any:
    """The checkpoint's transformers config (config.json only, never weights)."""
    from transformers import AutoConfig

    path = model.path
    if _looks_local(path):
        path = os.path.expanduser(path)
        if not os.path.isfile(os.path.join(path, "config.json")):
            raise ConfigError("model.path", f"{path!r} is not a checkpoint directory (no config.json). {HUB_HINT}")
    kwargs = dict(revision=model.revision, trust_remote_code=model.trust_remote_code)
    try:
        return AutoConfig.from_pretrained(path, local_files_only=True, **kwargs)
    except OSError:
        if _looks_local(path) or model.local_files_only or os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0"):
            raise ConfigError(
                "model.path", f"{model.path!r} is neither a local checkpoint nor in the Hub cache (offline). {HUB_HINT}"
            ) from None
    _hub_reachable_or_raise(model)
    return AutoConfig.from_pretrained(path, **kwargs)


def num_experts(model_config: Any) -> int:
    """Routed experts per MoE layer, whatever the family calls the field."""
    configs = [model_config, getattr(model_config, "text_config", None)]
    for config in filter(None, configs):
        for key in EXPERT_COUNT_KEYS:
            value = getattr(config, key, None)
            if isinstance(value, int) and value > 0:
                return value
    raise ConfigError(
        "model.path", f"config.json has none of {', '.join(EXPERT_COUNT_KEYS)}: not a Mixture-of-Experts model"
    )


def _check_gpu(model: ModelConfig) -> None:
    import torch

    wants_cuda = model.device.startswith("cuda") or model.require_gpu
    if wants_cuda and not torch.cuda.is_available():
        raise ConfigError(
            "model.require_gpu" if model.require_gpu else "model.device",
            f"{model.name} ({model.path}) needs a CUDA GPU and none is visible. {HUB_HINT} "
            "(model.require_gpu=false forces a CPU run if you really mean it.)",
        )


def _check_task(cfg: ExperimentConfig) -> Any:
    from scmoe_eval.scoring.execution import CodeExecutionNotAllowed, require_code_execution
    from scmoe_eval.tasks import TASKS, get_task

    if cfg.task.name not in TASKS:
        raise ConfigError("task.name", f"unknown task {cfg.task.name!r}; valid: {', '.join(TASKS.names())}")
    task = get_task(cfg.task.name)
    if task.is_code:
        try:
            require_code_execution(cfg.task.allow_code_execution, cfg.task.name)
        except CodeExecutionNotAllowed as err:
            raise ConfigError("task.allow_code_execution", str(err)) from None
    return task


def _load_items(task: Any, cfg: ExperimentConfig) -> list:
    from scmoe_eval.tasks.source import TaskDataError

    try:
        items = task.load(cfg.task)
    except (FileNotFoundError, TaskDataError) as err:
        key = "task.path" if cfg.task.path or cfg.task.name == "prompts" else "task.demo" if cfg.task.demo else "task.data_dir"
        raise ConfigError(key, f"cannot load the {cfg.task.name} data: {err}") from None
    return items[: cfg.run.limit] if cfg.run.limit else items


def check_task(cfg: ExperimentConfig) -> tuple[Any, list]:
    """The task and its items, code-execution gate included: all that scoring needs."""
    task = _check_task(cfg)
    return task, _load_items(task, cfg)


def _check_strategy(cfg: ExperimentConfig) -> None:
    from scmoe_eval.decoding.strategies import STRATEGIES

    for key, name in (("strategy.name", cfg.strategy.name), ("strategy.inner", cfg.strategy.inner)):
        if key == "strategy.inner" and cfg.strategy.name != "self-consistency":
            continue
        if name not in STRATEGIES:
            raise ConfigError(key, f"unknown strategy {name!r}; valid: {', '.join(STRATEGIES.names())}")


def _text_config(model_config: Any) -> Any:
    return getattr(model_config, "text_config", None) or model_config


def _check_amateur(cfg: ExperimentConfig, expert_config: Any) -> str:
    """CD: the amateur's config.json is readable and declares the expert's vocabulary; its resolved path."""
    amateur = dataclasses.replace(cfg.model, path=cfg.strategy.amateur, revision=None, family=None)
    try:
        amateur = dataclasses.replace(amateur, path=resolve_model_path(amateur))
        amateur_config = read_model_config(amateur)
    except ConfigError as err:
        why = str(err).removeprefix(f"{err.key}: ").replace(HUB_HINT, "Point strategy.amateur at a local checkpoint.")
        raise ConfigError("strategy.amateur", why) from None
    ours, theirs = _text_config(expert_config).vocab_size, _text_config(amateur_config).vocab_size
    if ours != theirs:
        raise ConfigError(
            "strategy.amateur",
            f"{cfg.strategy.amateur!r} has vocab_size {theirs}, the model {ours}: CD needs the same vocabulary",
        )
    return amateur.path


def _check_dola_layers(cfg: ExperimentConfig, model_config: Any) -> None:
    """DoLa: the premature layers (a band or a list) exist in this model."""
    from scmoe_eval.decoding.baselines import dola_candidates

    try:
        dola_candidates(cfg.strategy.dola_layers, _text_config(model_config).num_hidden_layers)
    except ValueError as err:
        raise ConfigError("strategy.dola_layers", str(err).removeprefix("strategy.dola_layers: ")) from None


def _once(memo: Optional[dict], key: Any, fn: Callable[[], Any]) -> Any:
    """fn() or, within one sweep check (`memo` given), the result or ConfigError it gave before."""
    if memo is None:
        return fn()
    key = json.dumps(key, sort_keys=True, default=str)
    if key not in memo:
        try:
            memo[key] = (fn(), None)
        except ConfigError as err:
            memo[key] = (None, err)
    value, err = memo[key]
    if err is not None:
        raise err
    return value


def check(cfg: ExperimentConfig, memo: Optional[dict] = None, *, gpu: bool = True) -> Checked:
    """Every check, cheapest first; returns what the run needs next. Raises ConfigError.

    `memo` (a dict shared by the jobs of one sweep) reads each model config and data set once;
    `gpu=False` skips the GPU check (jobs that run on other machines, e.g. SLURM nodes).
    """
    validate(cfg)
    _check_strategy(cfg)
    task = _check_task(cfg)  # the gate before the model; the items after it (they may be big)
    resolved, experts = _check_model(cfg, memo, gpu)
    data_key = ("items", dataclasses.asdict(cfg.task), cfg.run.limit)
    items = _once(memo, data_key, lambda: _load_items(task, resolved))
    return Checked(cfg=resolved, task=task, items=items, num_experts=experts)


def check_model(cfg: ExperimentConfig) -> tuple[ExperimentConfig, int]:
    """The model half of `check` for callers that bring their own tasks (the lm-eval backend):
    value ranges, strategy name, the local path, GPU, the checkpoint's config.json and every k
    against its experts. Returns the config with model.path resolved, and the expert count."""
    validate(cfg)
    _check_strategy(cfg)
    return _check_model(cfg, None, True)


def _check_model(cfg: ExperimentConfig, memo: Optional[dict], gpu: bool) -> tuple[ExperimentConfig, int]:
    """Path (exists before the GPU is asked for), GPU, config.json, amateur / DoLa layers, k vs experts."""
    model = dataclasses.asdict(cfg.model)
    resolved = dataclasses.replace(
        cfg, model=dataclasses.replace(cfg.model, path=_once(memo, ("path", model), lambda: resolve_model_path(cfg.model)))
    )
    check_local_path(resolved.model)
    if gpu:
        _check_gpu(resolved.model)
    model_config = _once(memo, ("config", model), lambda: read_model_config(resolved.model))
    experts = num_experts(model_config)
    if cfg.strategy.name == "cd":
        amateur = _once(memo, ("amateur", model, cfg.strategy.amateur), lambda: _check_amateur(resolved, model_config))
        resolved = dataclasses.replace(resolved, strategy=dataclasses.replace(resolved.strategy, amateur=amateur))
    if cfg.strategy.name == "dola":
        _check_dola_layers(resolved, model_config)
    validate(resolved, num_experts=experts)
    return resolved, experts
