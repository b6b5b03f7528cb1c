"""GSM8K: 1,319 grade-school maths problems, 8-shot chain of thought (Wei et al.)."""

from __future__ import annotations

from scmoe_eval.config import TaskConfig
from scmoe_eval.scoring.answers import (
    math_equal,
    numbers_equal,
    official_gsm8k_answer,
    paper_decode_cleanup,
    strict_gsm8k_answer,
)

from .base import TASKS, Item
from .benchmark import AnswerTask, load_shots, qa_prompt, verdict
from .source import HubSource


def gold_from_solution(solution: str) -> str:
    """The gold answer is the text after "####", commas kept ("2,125") as in the paper."""
    return solution.split("####")[-1].strip()


@TASKS.register("gsm8k")
class GSM8K(AnswerTask):
    name = "gsm8k"
    hub = HubSource("openai/gsm8k", "main", "test", "740312add88f781978c0658806c59bc2815b9866")
    n_items = 1319
    fields = ("question", "label")

    def from_hub(self, rows: list[dict]) -> list[dict]:
        return [{**row, "idx": i, "label": gold_from_solution(row["answer"])}
                for i, row in enumerate(rows)]

    def make_item(self, row: dict, index: int) -> Item:
        return Item(id=f"gsm8k/{index}", index=index,
                    prompt=qa_prompt(load_shots("gsm8k"), row["question"]),
                    gold=row["label"], meta={"question": row["question"]})

    def default_stops(self, cfg: TaskConfig) -> list[str]:
        return ["\n\n"]

    def official(self, completion: str, gold: str) -> dict:
        answer = official_gsm8k_answer(paper_decode_cleanup(completion))
        return verdict(answer, math_equal(gold, answer), answer == "")

    def strict(self, completion: str, gold: str) -> dict:
        answer = strict_gsm8k_answer(completion)
        return verdict(answer, answer is not None and numbers_equal(answer, gold), answer is None)
