"""Task adapters (installed as scmoe_eval.tasks): prompts, stops and scoring per benchmark.

Importing this package registers every task in `TASKS`.
"""

from .base import TASKS, Item, Task, get_task, write_prompts
from . import gsm8k, human_eval, mbpp, prompts, strategy_qa  # noqa: F401  (registration)

__all__ = ["TASKS", "Item", "Task", "get_task", "write_prompts"]
