"""The task interface, the task registry and the dry-run prompt writer.

A task turns a dataset into prompts (`load`), tells the engine where to stop
(`stop_sequences`) and judges finished generations (`score`). Scoring is a pure
function of the generation records, so a saved generations JSONL can be re-scored
on a CPU without the model.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scmoe_eval.config import TaskConfig
from scmoe_eval.registry import Registry


@dataclass(frozen=True)
class Item:
    """One benchmark problem: `id` is stable across runs, `index` is its list position."""

    id: str
    index: int
    prompt: str
    gold: Any
    meta: dict = field(default_factory=dict)


class Task(ABC):
    """Base class of every task; subclasses register with `@TASKS.register(name)`."""

    name: str = ""
    is_code: bool = False
    primary_metric: str = "accuracy"  # "accuracy" | "pass@1" | "none" (prompts)

    @abstractmethod
    def load(self, cfg: TaskConfig) -> list[Item]:
        """All items in benchmark order."""

    @abstractmethod
    def default_stops(self, cfg: TaskConfig) -> list[str]:
        """The stop strings of the paper's code for this task."""

    @abstractmethod
    def score(self, items: list[Item], records: list[dict], cfg: TaskConfig) -> list[dict]:
        """Copies of `records` with "official" and "strict" verdicts added."""

    def stop_sequences(self, cfg: TaskConfig) -> list[str]:
        """`cfg.stop` when given (even an empty list), else the task's defaults."""
        return list(cfg.stop) if cfg.stop is not None else self.default_stops(cfg)


TASKS: Registry[type[Task]] = Registry("task")


def get_task(name: str) -> Task:
    """A fresh instance of the registered task `name`."""
    return TASKS.get(name)()


def items_by_id(items: list[Item], records: list[dict]) -> list[Item]:
    """The item each record belongs to, in record order; unknown ids are an error."""
    lookup = {item.id: item for item in items}
    missing = sorted({r["id"] for r in records} - lookup.keys())
    if missing:
        raise KeyError(f"records refer to items not in the task: {missing[:5]}")
    return [lookup[r["id"]] for r in records]


def write_prompts(task_name: str, cfg: TaskConfig, out_path: Path, limit: int | None = None) -> int:
    """Dry run: write every prompt and its stop strings as JSONL, with no model.

    Lines are {"id", "index", "prompt", "stop"}; returns how many were written.
    """
    task = get_task(task_name)
    items = task.load(cfg)
    if limit is not None:
        items = items[:limit]
    stops = task.stop_sequences(cfg)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with out_path.open("w", encoding="utf-8") as fh:
        for item in items:
            row = {"id": item.id, "index": item.index, "prompt": item.prompt, "stop": stops}
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    return len(items)
