"""Shared machinery of the code tasks: the paper's clean-up rules and sandboxed scoring.

Both modes of every record are turned into complete test programs first and run in one
parallel batch (identical programs only once), so scoring 500 items costs one pool.
"""

from __future__ import annotations

from abc import abstractmethod

from scmoe_eval.config import TaskConfig
from scmoe_eval.scoring.execution import ExecResult, require_code_execution, run_programs

from .base import Item, items_by_id
from .benchmark import BenchmarkTask


def cut_fence(text: str) -> str:
    """Keep what lies between a ```python fence and the next ``` (paper rule)."""
    if "```python" not in text:
        return text
    text = text[text.index("```python"):].strip().replace("```python", "")
    if "```" in text:
        text = text[:text.index("```")].strip()
    return text


def cut_main_guard(text: str) -> str:
    """Cut before `__name__` and drop the two characters before it, i.e. the "if"."""
    if "__name__" not in text:
        return text
    return text[:text.index("__name__")].strip()[:-2]


def cut_example_usage(text: str) -> str:
    """Cut before a "# Example usage" comment, which models follow with demo calls."""
    if "# Example usage" not in text:
        return text
    return text[:text.index("# Example usage")].strip()


def code_verdict(code: str, result: ExecResult) -> dict:
    """One mode's verdict; the failure reason is the sandbox status and the last line
    of its detail, usually the exception ("failed: NameError: name 'math' is not ...")."""
    reason = None
    if not result.passed:
        lines = [line.strip() for line in result.detail.splitlines() if line.strip()]
        reason = f"{result.status}: {lines[-1][:200]}" if lines else result.status
    return {"answer": code, "correct": result.passed, "unparseable": False, "reason": reason}


class CodeTask(BenchmarkTask):
    """A task scored by running test programs; needs code execution to be allowed."""

    is_code = True
    primary_metric = "pass@1"

    @abstractmethod
    def official_program(self, item: Item, completion: str) -> tuple[str, str]:
        """(cleaned code, full test program) as the paper's scorer builds them."""

    @abstractmethod
    def strict_program(self, item: Item, completion: str) -> tuple[str, str]:
        """(code, full test program) from the completion as generated."""

    def score(self, items: list[Item], records: list[dict], cfg: TaskConfig) -> list[dict]:
        require_code_execution(cfg.allow_code_execution, self.name)
        built = [(self.official_program(item, rec["completion"]),
                  self.strict_program(item, rec["completion"]))
                 for rec, item in zip(records, items_by_id(items, records))]
        programs = list(dict.fromkeys(prog for pair in built for _, prog in pair))
        results = dict(zip(programs, run_programs(programs, timeout=cfg.timeout,
                                                  num_workers=cfg.num_workers)))
        return [{**rec, "official": code_verdict(off_code, results[off_prog]),
                 "strict": code_verdict(st_code, results[st_prog])}
                for rec, ((off_code, off_prog), (st_code, st_prog)) in zip(records, built)]
