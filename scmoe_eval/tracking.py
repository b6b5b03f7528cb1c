"""Experiment trackers, chosen by the `logger` key (null = files in the run dir only).

wandb runs offline unless WANDB_MODE says otherwise, so no account is needed; the offline
run lives in <run_dir>/wandb and can be uploaded later with `wandb sync`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Optional, Protocol

from scmoe_eval.registry import Registry

# Columns of the per-sample table; scored records may add task-specific ones (answer, passed...).
SAMPLE_COLUMNS = ("id", "sample", "completion", "stop_reason", "num_tokens")
MAX_SAMPLE_ROWS = 1000  # keeps the offline run small on full benchmarks


class Tracker(Protocol):
    def log_metrics(self, metrics: dict[str, Any]) -> None: ...
    def log_samples(self, scored: list[dict]) -> None: ...
    def log_table(self, name: str, frame: Any) -> None: ...
    def finish(self) -> None: ...


class NullTracker:
    """logger=null: everything already lives in the run directory."""

    def log_metrics(self, metrics: dict[str, Any]) -> None:
        pass

    def log_samples(self, scored: list[dict]) -> None:
        pass

    def log_table(self, name: str, frame: Any) -> None:
        pass

    def finish(self) -> None:
        pass


class WandbTracker:
    """One wandb run per run directory, named like it, with the resolved config attached."""

    def __init__(self, run_dir: Path, name: str, config: dict[str, Any]) -> None:
        import wandb

        self._wandb = wandb
        self.run = wandb.init(
            project=os.environ.get("WANDB_PROJECT", "scmoe-eval"),
            name=name,
            dir=str(run_dir),
            config=config,
            mode=os.environ.get("WANDB_MODE", "offline"),
            reinit="finish_previous",
        )

    def log_metrics(self, metrics: dict[str, Any]) -> None:
        flat = {k: v for k, v in _flatten(metrics).items() if isinstance(v, (int, float))}
        self.run.summary.update(flat)
        self.run.log(flat)

    def log_samples(self, scored: list[dict]) -> None:
        rows = scored[:MAX_SAMPLE_ROWS]
        extra = sorted({k for r in rows for k in r if k not in SAMPLE_COLUMNS and _is_scalar(r[k])})
        columns = list(SAMPLE_COLUMNS) + extra
        data = [[r.get(c) if _is_scalar(r.get(c)) else str(r.get(c)) for c in columns] for r in rows]
        self.run.log({"samples": self._wandb.Table(columns=columns, data=data)})

    def log_table(self, name: str, frame: Any) -> None:
        self.run.log({name: self._wandb.Table(dataframe=frame.reset_index())})

    def finish(self) -> None:
        self.run.finish()


TRACKERS: Registry[Callable[[Path, str, dict], Tracker]] = Registry("logger")
TRACKERS.register("wandb")(WandbTracker)


def build_tracker(name: Optional[str], run_dir: Path, config: dict[str, Any]) -> Tracker:
    """The tracker for `logger=<name>`; None gives the no-op tracker."""
    if name is None:
        return NullTracker()
    return TRACKERS.get(name)(run_dir, run_dir.name, config)


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, f"{name}/"))
        else:
            out[name] = value
    return out
