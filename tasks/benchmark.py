"""Shared machinery of the four paper benchmarks: loading, few-shot data, QA scoring.

Every benchmark reads rows in the paper's `test.jsonl` layout, either from
`task.data_dir` or by converting the pinned Hub dataset into that layout, so prompts
and gold answers are built by one code path whatever the source.
"""

from __future__ import annotations

import json
from abc import abstractmethod
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from scmoe_eval.config import TaskConfig

from .base import Item, Task, items_by_id
from .source import HubSource, check_count, check_fields, load_hub_rows, read_jsonl


@lru_cache(maxsize=None)
def load_shots(name: str) -> Any:
    """Prompt data shipped with the package (tasks/shots/<name>.json); treat as read-only."""
    text = resources.files("scmoe_eval.tasks").joinpath("shots", f"{name}.json").read_text("utf-8")
    return json.loads(text)


def demo_dir(task_name: str) -> Path:
    """The packaged demo subset of a task (tasks/demo/<task>: test.jsonl + input.jsonl, licences in README)."""
    return Path(str(resources.files("scmoe_eval.tasks").joinpath("demo", task_name)))


class BenchmarkTask(Task):
    """A fixed-size benchmark with a pinned Hub source and the paper's row layout."""

    hub: HubSource
    n_items: int
    fields: tuple[str, ...]  # keys every paper-layout row must have

    def load(self, cfg: TaskConfig) -> list[Item]:
        if cfg.demo:  # the shipped subset: whatever it holds, in the paper's layout
            rows = read_jsonl(demo_dir(self.name) / "test.jsonl", self.fields)
        elif cfg.data_dir:
            path = Path(cfg.data_dir) / "test.jsonl"
            rows = read_jsonl(path, self.fields)
            check_count(rows, self.n_items, str(path))
        else:
            rows, where = self.default_rows(cfg)
            check_fields(rows, self.fields, where)
            check_count(rows, self.n_items, where)
        return [self.make_item(row, index) for index, row in enumerate(rows)]

    def default_rows(self, cfg: TaskConfig) -> tuple[list[dict], str]:
        """Rows in the paper's layout from the pinned source, and a name for errors."""
        source = self.hub.resolve(cfg)
        return self.from_hub(load_hub_rows(source)), source.describe()

    def from_hub(self, rows: list[dict]) -> list[dict]:
        """Convert Hub rows to the paper's layout (subclasses derive labels here)."""
        return rows

    @abstractmethod
    def make_item(self, row: dict, index: int) -> Item:
        """Build the prompt and gold answer of one paper-layout row."""


class AnswerTask(BenchmarkTask):
    """A task whose completion ends in a short answer compared with a gold string."""

    @abstractmethod
    def official(self, completion: str, gold: Any) -> dict:
        """{"answer", "correct", "unparseable", "reason"} as the paper's scorer decides."""

    @abstractmethod
    def strict(self, completion: str, gold: Any) -> dict:
        """{"answer", "correct", "unparseable", "reason"}; unparseable is always wrong."""

    def score(self, items: list[Item], records: list[dict], cfg: TaskConfig) -> list[dict]:
        return [
            {**rec, "official": self.official(rec["completion"], item.gold),
             "strict": self.strict(rec["completion"], item.gold)}
            for rec, item in zip(records, items_by_id(items, records))
        ]


def verdict(answer: Any, correct: bool, unparseable: bool) -> dict:
    """One mode's verdict with the reason for a failure spelled out."""
    reason = None if correct else ("unparseable" if unparseable else "wrong answer")
    return {"answer": answer, "correct": correct, "unparseable": unparseable, "reason": reason}


def qa_prompt(shots: list[dict], question: str) -> str:
    """The paper's "Question: …\\nAnswer: …" chain-of-thought prompt."""
    header = "".join(f"Question: {s['question']}\nAnswer: {s['answer']}\n\n" for s in shots)
    return f"{header}Question: {question}\nAnswer:"
