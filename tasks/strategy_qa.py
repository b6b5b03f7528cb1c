"""StrategyQA: 2,286 yes/no questions needing implicit multi-step reasoning, 4-shot CoT.

The paper's set is the StrategyQA *train* split (2,290) minus the questions of the four
exemplars in the prompt (inferred from its counts; see docs/tasks.md).
"""

from __future__ import annotations

from scmoe_eval.config import TaskConfig
from scmoe_eval.scoring.answers import official_yes_no, paper_decode_cleanup, strict_yes_no

from .base import TASKS, Item
from .benchmark import AnswerTask, load_shots, qa_prompt, verdict
from .source import HubSource, TaskDataError

_YES_OR_NO = "Yes or no: "


def exemplar_questions() -> list[str]:
    """The exemplar questions as worded in the train split (no "Yes or no: " prefix)."""
    return [s["question"].removeprefix(_YES_OR_NO) for s in load_shots("strategy_qa")]


def derive_paper_rows(train_rows: list[dict]) -> list[dict]:
    """Train rows minus the exemplar questions, order kept, with a yes/no `label`."""
    exemplars = set(exemplar_questions())
    kept = [row for row in train_rows if row["question"] not in exemplars]
    removed = {row["question"] for row in train_rows} & exemplars
    if removed != exemplars:
        raise TaskDataError(f"exemplar questions not found in the train split: "
                            f"{sorted(exemplars - removed)}")
    return [{**row, "label": "yes" if row["answer"] else "no"} for row in kept]


@TASKS.register("strategy_qa")
class StrategyQA(AnswerTask):
    name = "strategy_qa"
    # A parquet mirror of the original strategyQA_train.json (2,290 rows: qid, term,
    # description, question, answer, facts, decomposition); the commit is pinned.
    hub = HubSource("havens2/strategyQA_train", None, "train",
                    "8ae79f541d6d1a43ed5f46fbfae156a9d9ba793d")
    n_items = 2286
    fields = ("qid", "question", "label")

    def from_hub(self, rows: list[dict]) -> list[dict]:
        return derive_paper_rows(rows)

    def make_item(self, row: dict, index: int) -> Item:
        return Item(id=f"strategy_qa/{row['qid']}", index=index,
                    prompt=qa_prompt(load_shots("strategy_qa"), row["question"]),
                    gold=row["label"], meta={"question": row["question"]})

    def default_stops(self, cfg: TaskConfig) -> list[str]:
        return ["\n\n"]

    def official(self, completion: str, gold: str) -> dict:
        answer, found = official_yes_no(paper_decode_cleanup(completion))
        return verdict(answer, answer == gold, not found)

    def strict(self, completion: str, gold: str) -> dict:
        answer = strict_yes_no(completion)
        return verdict(answer, answer == gold, answer is None)
