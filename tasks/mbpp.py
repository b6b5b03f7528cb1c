"""MBPP: 500 Python problems (task ids 11-510), 3-shot, judged by the three asserts.

Exemplars are task ids 2, 3 and 8 (the paper's choice). For task 493 the paper's
prompt shows three asserts that differ from the `test_list` it scores against;
tasks/shots/mbpp_prompt_tests.json keeps them so prompts stay byte-identical.
"""

from __future__ import annotations

import re

from scmoe_eval.config import TaskConfig
from scmoe_eval.scoring.answers import paper_decode_cleanup

from .base import TASKS, Item
from .benchmark import load_shots
from .code import CodeTask, cut_example_usage, cut_fence, cut_main_guard
from .source import HubSource

_FIRST_FUNCTION = re.compile(r"def.*?\n[^\n\s#]", re.DOTALL)


def mbpp_block(text: str, tests: list[str]) -> str:
    """One problem statement as the paper (and lm-eval) words it, up to "[BEGIN]"."""
    return (f"You are an expert Python programmer, and here is your task: {text} "
            "Your code should pass these tests:\n\n" + "\n".join(tests) + "\n[BEGIN]\n")


def paper_mbpp_clean(completion: str) -> str:
    """The paper's MBPP post-processing, quirks included.

    Cut at "[DONE]"; keep from the first "def" (even inside a word such as
    "defaultdict") to the first unindented line, else "def " + the text after the
    *last* "def "; so imports above the function are dropped, and so is everything
    after the first function. Then fences, a `__main__` guard and "# Example usage".
    """
    text = completion.strip().replace("\r", "").split("[DONE]")[0]
    match = _FIRST_FUNCTION.search(text)
    if match:
        text = match.group(0)[:-1]
    elif "def " in text:
        text = "def " + text.split("def ")[-1]
    return cut_example_usage(cut_main_guard(cut_fence(text)))


@TASKS.register("mbpp")
class MBPP(CodeTask):
    name = "mbpp"
    hub = HubSource("google-research-datasets/mbpp", "full", "test", "4bb6404fdc6cacfda99d4ac4205087b89d32030c")
    n_items = 500
    fields = ("task_id", "text", "code", "test_list", "test_setup_code")

    def make_item(self, row: dict, index: int) -> Item:
        header = "".join(mbpp_block(s["text"], s["test_list"]) + s["code"] + "\n[DONE]\n\n"
                         for s in load_shots("mbpp"))
        shown = load_shots("mbpp_prompt_tests").get(str(row["task_id"]), row["test_list"])
        return Item(id=f"mbpp/{row['task_id']}", index=index,
                    prompt=header + mbpp_block(row["text"], shown),
                    gold={"test_list": list(row["test_list"]),
                          "test_setup_code": row["test_setup_code"]},
                    meta={"task_id": row["task_id"], "code": row["code"]})

    def default_stops(self, cfg: TaskConfig) -> list[str]:
        """"[DONE]", plus the blank-line stop the paper's code also applied to MBPP."""
        return ["[DONE]", "\n\n"] if cfg.paper_stops else ["[DONE]"]

    def official_program(self, item: Item, completion: str) -> tuple[str, str]:
        code = paper_mbpp_clean(paper_decode_cleanup(completion))
        return code, code + "\n" + "\n".join(item.gold["test_list"])

    def strict_program(self, item: Item, completion: str) -> tuple[str, str]:
        """The completion up to "[DONE]", imports kept, then setup code and asserts."""
        code = completion.split("[DONE]")[0]
        tests = "\n".join(item.gold["test_list"])
        return code, f"{code}\n{item.gold['test_setup_code']}\n{tests}"
