"""GSM8K question + gold-answer texts for the teacher-forced analyses.

Sources, in the order the config picks them:
- `task.data_dir=demo` (or `task.demo=true` where TaskConfig has it): the few items shipped in
  scmoe_eval/analysis/data/gsm8k_demo (MIT, see its README),
  so the analyses run on a fresh clone with no Hub and no ../shared;
- `task.data_dir=DIR`: DIR/<split>.jsonl in the original release's layout (openai/grade-school-math),
  which is what ../shared/data/gsm8k holds; the item count is checked (7,473 train, 1,319 test);
- otherwise the pinned Hub dataset (openai/gsm8k, main, the revision the gsm8k task pins).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from scmoe_eval.analysis.config import AnalysisConfig
from scmoe_eval.config import ConfigError, TaskConfig

SPLIT_SIZES = {"train": 7473, "test": 1319}
DEMO = "demo"
_CALCULATOR = re.compile(r"<<[^>]*>>")
HALLIE_INDEX = 372  # GSM8K test: "Hallie had dance practice ...", the paper's Fig. 3 example


@dataclass(frozen=True)
class TextItem:
    """One teacher-forced text: `prefix` (the question part) + `answer`; index is the GSM8K index."""

    index: int
    id: str
    prefix: str
    answer: str

    @property
    def text(self) -> str:
        return self.prefix + self.answer


def demo_dir() -> Path:
    return Path(str(resources.files("scmoe_eval.analysis").joinpath("data", "gsm8k_demo")))


def format_item(row: dict, index: int, split: str, strip_calculator: bool) -> TextItem:
    """The paper's "Question: ...\\nAnswer: ..." layout (the task prompts' format, zero-shot)."""
    answer = row["answer"]
    if strip_calculator:
        answer = _CALCULATOR.sub("", answer)
    return TextItem(index=index, id=f"gsm8k-{split}/{index}", prefix=f"Question: {row['question']}\nAnswer:",
                    answer=" " + answer)


def _rows(task: TaskConfig, split: str) -> list[tuple[int, dict]]:
    from scmoe_eval.tasks.gsm8k import GSM8K
    from scmoe_eval.tasks.source import TaskDataError, check_count, load_hub_rows, read_jsonl

    try:
        if task.data_dir == DEMO or getattr(task, "demo", False):  # task.demo=true: the task's shipped-subset switch
            rows = read_jsonl(demo_dir() / f"{split}.jsonl", ("question", "answer", "idx"))
            return [(int(r["idx"]), r) for r in rows]
        if task.data_dir:
            path = Path(task.data_dir).expanduser() / f"{split}.jsonl"
            rows = read_jsonl(path, ("question", "answer"))
            check_count(rows, SPLIT_SIZES[split], str(path))
        else:
            source = GSM8K.hub.resolve(TaskConfig(split=split, dataset=task.dataset, subset=task.subset,
                                                  revision=task.revision))
            rows = load_hub_rows(source)
            check_count(rows, SPLIT_SIZES[split], source.describe())
    except TaskDataError as err:
        raise ConfigError("task.data_dir", f"cannot load GSM8K {split}: {err}") from None
    return list(enumerate(rows))


def load_texts(task: TaskConfig, analysis: AnalysisConfig, limit: int | None) -> list[TextItem]:
    """The items an analysis runs on; heatmap keeps only `analysis.example_index` (default: the first)."""
    if task.name != "gsm8k":
        raise ConfigError("task", f"the analyses run on GSM8K (task=gsm8k), not {task.name!r}")
    rows = _rows(task, analysis.split)
    items = [format_item(row, i, analysis.split, analysis.strip_calculator) for i, row in rows]
    if analysis.name == "heatmap":
        want = items[0].index if analysis.example_index is None else analysis.example_index
        items = [it for it in items if it.index == want]
        if not items:
            raise ConfigError("analysis.example_index", f"GSM8K {analysis.split} has no item {want}")
    return items[:limit] if limit else items
