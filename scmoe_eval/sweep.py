"""Check every job of a multirun before the first one runs.

Hydra launches the jobs of a sweep one after another, so a bad value in job 7 of a paper sweep
surfaced hours in. `check_sweep(argv)` expands the sweep as Hydra's BasicSweeper does (the command
line plus a preset's `hydra.sweeper.params`), builds each job's config and puts it through the
single-run preflight (`preflight.check`): ranges, rank > experts, the data and model paths. One
error lists every bad job. For speed, each distinct set of group choices is composed once and the
value overrides are applied to a copy; model configs and data sets are read once per sweep.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Optional, Sequence

from hydra import compose, initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, OverrideType
from hydra.errors import HydraException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from scmoe_eval.config import ConfigError, to_experiment
from scmoe_eval.preflight import check

MULTIRUN_FLAGS = ("-m", "--multirun")
MAX_LISTED = 20  # bad jobs spelled out in the error; the rest are counted


def _plain_overrides(argv: Sequence[str]) -> Optional[list[str]]:
    """The overrides of `scmoe-eval [-m] key=value ...`; None when other Hydra flags (--help, --cfg, -cd...) are given."""
    if any(arg.startswith("-") and arg not in MULTIRUN_FLAGS for arg in argv):
        return None
    return [arg for arg in argv if arg not in MULTIRUN_FLAGS]


def _is_structural(override: Override, groups: set[str]) -> bool:
    """Overrides that need a compose: group choices, hydra.*, additions and deletions."""
    key = override.key_or_group
    return "/" in key or key in groups or key.startswith("hydra.") or override.type != OverrideType.CHANGE


class _JobBuilder:
    """Job configs from override lists: one compose per distinct set of structural overrides."""

    def __init__(self, config_dir: str, parser: OverridesParser) -> None:
        self.groups = {p.name for p in Path(config_dir).iterdir() if p.is_dir()}
        self.parser = parser
        self.composed: dict[tuple[str, ...], Any] = {}
        self.parsed: dict[str, Override] = {}  # a sweep repeats few distinct overrides; parsing is slow

    def _parse(self, job: list[str]) -> list[Override]:
        for line in job:
            if line not in self.parsed:
                self.parsed[line] = self.parser.parse_overrides([line])[0]
        return [self.parsed[line] for line in job]

    def build(self, job: list[str]) -> DictConfig:
        parsed = self._parse(job)
        structural = tuple(o.input_line for o in parsed if _is_structural(o, self.groups))
        if structural not in self.composed:
            try:
                self.composed[structural] = compose("config", overrides=list(structural))
            except (HydraException, OmegaConfBaseException) as err:
                self.composed[structural] = err
        base = self.composed[structural]
        if isinstance(base, Exception):
            raise base
        cfg = copy.deepcopy(base)
        for override in parsed:
            if not _is_structural(override, self.groups):
                OmegaConf.update(cfg, override.key_or_group, override.value(), merge=True)
        return cfg


def sweep_jobs(argv: Sequence[str]) -> Optional[tuple[list[list[str]], DictConfig]]:
    """Every job's override list and the sweep's Hydra config (inside an initialised Hydra), or None for a
    single run or a command line Hydra itself must judge (other flags, a base config that does not compose)."""
    overrides = _plain_overrides(argv)
    if overrides is None:
        return None
    parser = OverridesParser.create()
    try:
        parsed = parser.parse_overrides(overrides)
        fixed = [o.input_line for o in parsed if not o.is_sweep_override()]
        base = compose("config", overrides=fixed, return_hydra_config=True)
    except (HydraException, OmegaConfBaseException):
        return None  # Hydra reports it in its own words
    if not any(flag in argv for flag in MULTIRUN_FLAGS) and base.hydra.mode != RunMode.MULTIRUN:
        return None
    params = [f"{key}={value}" for key, value in (base.hydra.sweeper.get("params") or {}).items()]
    jobs = BasicSweeper.split_arguments(parser.parse_overrides(params + overrides), None)[0]
    return jobs, base.hydra


def check_sweep(argv: Sequence[str], config_dir: str) -> int:
    """Preflight every job of a multirun; ConfigError naming each bad job. Returns the number of jobs (0: no sweep)."""
    with initialize_config_dir(version_base="1.3", config_dir=config_dir):
        expanded = sweep_jobs(argv)
        if expanded is None:
            return 0
        jobs, hydra_cfg = expanded
        # jobs that run elsewhere (SLURM nodes) are not judged by this machine's GPUs
        local = "slurm" not in str(hydra_cfg.launcher.get("_target_", "")).lower()
        builder, memo = _JobBuilder(config_dir, OverridesParser.create()), {}
        fixed = set(jobs[0]).intersection(*jobs) if len(jobs) > 1 else set()
        bad: dict[str, list[str]] = {}  # reason -> the jobs it applies to (an offline Hub fails many alike)
        for index, job in enumerate(jobs):
            try:
                check(to_experiment(builder.build(job)), memo, gpu=local)
            except (ConfigError, HydraException, OmegaConfBaseException) as err:
                what = " ".join(o for o in job if o not in fixed) or " ".join(job)
                bad.setdefault(str(err).splitlines()[0], []).append(f"{index} ({what})")
    if bad:
        lines = [f"job{'s' if len(which) > 1 else ''} {', '.join(which)}: {reason}" for reason, which in bad.items()]
        listed = lines[:MAX_LISTED] + ([f"... and {len(lines) - MAX_LISTED} more"] if len(lines) > MAX_LISTED else [])
        count = sum(map(len, bad.values()))
        raise ConfigError(
            "multirun", f"{count} of {len(jobs)} jobs are invalid; nothing was run:\n  " + "\n  ".join(listed)
        )
    return len(jobs)
