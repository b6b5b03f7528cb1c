"""`make data`: fetch the pinned Hub datasets of the four benchmarks into the local cache, in one step.

With `--out DIR` the rows are also written in the paper's layout (DIR/<task>/test.jsonl), which
`task.data_dir=DIR/<task>` reads and the test suite picks up (tests/conftest.py looks in
.cache/shared/data when there is no ../shared). The paper's prompt files (input.jsonl) and
paper.md exist only in the paper's repository; the tests that compare against them still skip.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional, Sequence

from scmoe_eval.config import TaskConfig

from . import get_task
from .source import TaskDataError, check_count, check_fields

BENCHMARKS = ("gsm8k", "strategy_qa", "mbpp", "human_eval")


def fetch(name: str, out: Optional[Path]) -> str:
    """Load one benchmark from its pinned source (cached by `datasets`); a line saying what came from where."""
    task = get_task(name)
    rows, where = task.default_rows(TaskConfig(name=name))
    check_fields(rows, task.fields, where)
    check_count(rows, task.n_items, where)
    line = f"{name}: {len(rows)} items from {where}"
    if out is not None:
        path = out / name / "test.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(row, ensure_ascii=False, default=str) + "\n" for row in rows), "utf-8")
        line += f" -> {path}"
    return line


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m scmoe_eval.tasks.fetch", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="also write DIR/<task>/test.jsonl (paper layout)")
    parser.add_argument("tasks", nargs="*", default=list(BENCHMARKS), choices=[[], *BENCHMARKS])
    args = parser.parse_args(argv)
    for name in args.tasks:
        try:
            print(fetch(name, args.out), flush=True)
        except TaskDataError as err:
            print(f"{name}: {err}", file=sys.stderr)
            raise SystemExit(2) from None


if __name__ == "__main__":
    main()
