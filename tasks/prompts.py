"""`prompts`: any JSONL of {id, prompt}, for generation only (no gold, no verdicts)."""

from __future__ import annotations

from pathlib import Path

from scmoe_eval.config import TaskConfig

from .base import TASKS, Item, Task
from .source import TaskDataError, read_jsonl


@TASKS.register("prompts")
class Prompts(Task):
    name = "prompts"
    primary_metric = "none"

    def load(self, cfg: TaskConfig) -> list[Item]:
        if not cfg.path:
            raise TaskDataError("task=prompts needs task.path=/file.jsonl with {id, prompt} lines")
        rows = read_jsonl(Path(cfg.path), ("id", "prompt"))
        seen: set[str] = set()
        for lineno, row in enumerate(rows, start=1):
            if str(row["id"]) in seen:
                raise TaskDataError(f"{cfg.path}:{lineno}: duplicate id {row['id']!r}")
            seen.add(str(row["id"]))
        return [Item(id=str(row["id"]), index=i, prompt=row["prompt"], gold=None,
                     meta={k: v for k, v in row.items() if k not in ("id", "prompt")})
                for i, row in enumerate(rows)]

    def default_stops(self, cfg: TaskConfig) -> list[str]:
        return []

    def score(self, items: list[Item], records: list[dict], cfg: TaskConfig) -> list[dict]:
        """Nothing to judge: the records come back unchanged."""
        return [dict(rec) for rec in records]
