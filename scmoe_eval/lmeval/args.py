"""lm-eval `model_args` -> our typed config, checked by the same schemas and preflight as `scmoe-eval`.

`model_args` use our override names: `model=tiny-mixtral`, `model.path=/ckpt`, `model.dtype=float32`,
`strategy=scmoe`, `strategy.beta=0.5`, `strategy.weak.k=2`, `run.batch_size=8`, ... They are composed
with Hydra against conf/ and the dataclass schemas, then `validate` and `check_model` run, all before
any weights load; every failure is a `ConfigError` naming the key. A few keys belong to the backend
only (`BackendOptions`). Nothing here imports lm-eval.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping, Optional

from scmoe_eval.config import SCMOE_STRATEGIES, ConfigError, ExperimentConfig, to_experiment

GROUPS = ("model", "strategy")  # config groups a model_args key may select (`strategy=scmoe`)
SECTIONS = ("model", "strategy", "run")  # dotted keys allowed below these (`strategy.beta=0.5`)
RUN_KEYS = ("batch_size", "max_new_tokens", "seed")  # the run.* keys that mean something here
LOGLIKELIHOOD_MODES = ("routing", "scmoe")
HINTS = {  # lm-eval `hf` backend names -> ours
    "pretrained": "model.path", "dtype": "model.dtype", "revision": "model.revision",
    "trust_remote_code": "model.trust_remote_code", "parallelize": "model.device_map",
    "max_gen_toks": "run.max_new_tokens",
}


@dataclass(frozen=True)
class BackendOptions:
    """Settings of the lm-eval backend that `scmoe-eval` has no use for."""

    loglikelihood: str = "routing"  # routing: log p under the strategy's routing; scmoe: SCMoE-MC (docs/lmeval.md)
    max_length: Optional[int] = None  # context window for scoring; None = the model's max_position_embeddings


@dataclass(frozen=True)
class Parsed:
    """What `parse_model_args` returns: our config and the backend-only options."""

    cfg: ExperimentConfig  # model.path still as given (fixture:<family> stays portable in run dirs)
    options: BackendOptions


def _override(key: str, value: Any) -> str:
    """One Hydra override; strings are quoted so `fixture:mixtral` or a path stay one value."""
    if value is None:
        return f"{key}=null"
    if isinstance(value, bool):
        return f"{key}={str(value).lower()}"
    if isinstance(value, (int, float)):
        return f"{key}={value}"
    text = str(value)
    if key in GROUPS:
        return f"{key}={text}"
    return f"{key}='" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _schema_fields(key: str) -> Optional[dict]:
    """The schema's field dict at a dotted section (`strategy.weak` -> RoutingConfig's fields)."""
    node: Any = dataclasses.asdict(ExperimentConfig())
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node if isinstance(node, dict) else None


def _check_key(key: str) -> None:
    """An unknown or unsupported key is named before Hydra runs (its messages name overrides, not keys)."""
    if key in HINTS:
        raise ConfigError(key, f"not a scmoe model_args key; use {HINTS[key]}")
    if key in GROUPS:
        return
    section, _, rest = key.partition(".")
    if section not in SECTIONS or not rest:
        valid = ", ".join([*GROUPS, *(f"{s}.*" for s in SECTIONS), *(f.name for f in dataclasses.fields(BackendOptions))])
        raise ConfigError(key, f"unknown model_args key; valid: {valid}")
    if section == "run" and rest not in RUN_KEYS:
        raise ConfigError(key, f"not used by the lm-eval backend (lm-eval sets limits and outputs); "
                               f"valid run keys: {', '.join('run.' + k for k in RUN_KEYS)}")
    parent, _, leaf = key.rpartition(".")
    fields = _schema_fields(parent)
    if fields is not None and isinstance(fields.get(leaf), dict):
        raise ConfigError(key, f"is a section; set its fields: {', '.join(f'{key}.{k}' for k in fields[leaf])}")
    if fields is None or leaf not in fields:
        valid = ", ".join(f"{parent}.{k}" for k in sorted(fields or {}))
        raise ConfigError(key, f"unknown key (not in the config schema); valid: {valid}")


def _compose(overrides: list[str]) -> Any:
    from hydra import compose, initialize_config_dir

    from scmoe_eval.cli import CONFIG_DIR  # registers the schemas with Hydra's ConfigStore

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose("config", overrides=overrides)


def _root_message(err: BaseException) -> str:
    while err.__cause__ is not None:
        err = err.__cause__
    return str(err).strip().splitlines()[0]


def _compose_or_name(pairs: list[tuple[str, str]]) -> Any:
    """Compose; on a Hydra error retry each override alone to name the key that broke it."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    failures = (HydraException, OmegaConfBaseException)
    try:
        return _compose([o for _, o in pairs])
    except failures as err:
        for key, override in pairs:
            try:
                _compose([o for k, o in pairs if k in GROUPS and k != key] + [override])
            except failures as one:
                raise ConfigError(key, _root_message(one)) from None
        raise ConfigError("model_args", _root_message(err)) from None


def _options(given: Mapping[str, Any]) -> BackendOptions:
    mode = given.get("loglikelihood", "routing")
    if mode not in LOGLIKELIHOOD_MODES:
        raise ConfigError("loglikelihood", f"must be one of {', '.join(LOGLIKELIHOOD_MODES)}, got {mode!r}")
    max_length = given.get("max_length")
    if max_length is not None and (not isinstance(max_length, int) or isinstance(max_length, bool) or max_length < 2):
        raise ConfigError("max_length", f"must be an integer >= 2 or None, got {max_length!r}")
    return BackendOptions(loglikelihood=mode, max_length=max_length)


def parse_model_args(model_args: Mapping[str, Any], *, batch_size: Any = None, device: Any = None) -> Parsed:
    """Typed config + backend options from lm-eval's parsed `model_args` (values already typed by lm-eval).

    `batch_size` / `device` are lm-eval's own `--batch_size` / `--device`; a model_args key wins over them,
    and `device` only fills a `model.device` left at `auto` (lm-eval's CLI passes `cuda` by default).
    """
    backend_keys = {f.name for f in dataclasses.fields(BackendOptions)}
    given = dict(model_args)
    options = _options({k: v for k, v in given.items() if k in backend_keys})
    ours = {k: v for k, v in given.items() if k not in backend_keys}
    if batch_size is not None and "run.batch_size" not in ours:
        if not isinstance(batch_size, int) or isinstance(batch_size, bool):
            raise ConfigError("batch_size", f"must be an integer (no 'auto': the backend batches run.batch_size "
                                            f"requests at a time), got {batch_size!r}")
        ours["run.batch_size"] = batch_size
    for key in ours:
        _check_key(key)
    groups = [(k, _override(k, v)) for k, v in ours.items() if k in GROUPS]  # presets first, then fields
    fields = [(k, _override(k, v)) for k, v in ours.items() if k not in GROUPS]
    cfg = to_experiment(_compose_or_name(groups + fields))
    if device is not None and "model.device" not in ours and cfg.model.device == "auto":
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, device=str(device)))
    s = cfg.strategy
    if s.name == "self-consistency" or s.num_samples != 1:
        raise ConfigError("strategy.num_samples" if s.name != "self-consistency" else "strategy",
                          "one sample per request: lm-eval draws several with the task's `repeats`")
    if options.loglikelihood == "scmoe" and s.name not in SCMOE_STRATEGIES:
        raise ConfigError("loglikelihood", f"scmoe scoring needs strategy=scmoe or scmoe-sample (its strong, weak, "
                                           f"alpha and beta), got strategy {s.name!r}")
    return Parsed(cfg=cfg, options=options)


def check(parsed: Parsed) -> tuple[ExperimentConfig, int]:
    """Preflight without a task: value ranges, strategy, GPU, config.json, k vs experts (no weights)."""
    from scmoe_eval.preflight import check_model

    return check_model(parsed.cfg)

