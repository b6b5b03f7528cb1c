"""Dry run: `python -m scmoe_eval.tasks TASK OUT.jsonl [--data-dir DIR] [--limit N]` (or `scmoe-eval-prompts`).

Writes every prompt of a task with its stop strings, exactly as a run would feed them, without a model.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional, Sequence

from scmoe_eval.config import TaskConfig

from . import TASKS, write_prompts
from .source import TaskDataError


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="scmoe-eval-prompts", description=__doc__.splitlines()[0])
    parser.add_argument("task", choices=TASKS.names())
    parser.add_argument("out", type=Path, help="JSONL to write: {id, index, prompt, stop} per line")
    parser.add_argument("--data-dir", help="paper-layout folder with test.jsonl (default: the pinned Hub dataset)")
    parser.add_argument("--path", help="`prompts` task: the JSONL of {id, prompt}")
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--no-paper-stops", action="store_true", help="MBPP: only [DONE], not the blank-line stop")
    args = parser.parse_args(argv)
    cfg = TaskConfig(name=args.task, data_dir=args.data_dir, path=args.path, paper_stops=not args.no_paper_stops)
    try:
        count = write_prompts(args.task, cfg, args.out, limit=args.limit)
    except TaskDataError as err:
        message = str(err).replace("task.data_dir=", "--data-dir ").replace("task.path=", "--path ")  # this CLI's flags
        raise SystemExit(f"scmoe-eval-prompts: error: {message}") from None
    print(f"wrote {count} prompts to {args.out}")


if __name__ == "__main__":
    main()
