"""`scmoe-eval-lmeval`: lm-eval tasks with the scmoe backend, filed in our run store.

    scmoe-eval-lmeval --tasks mmlu,arc_easy --model_args model=mixtral-8x7b,strategy=scmoe,loglikelihood=scmoe \\
        --model_args model=mixtral-8x7b,strategy=greedy        # one --model_args per config: one multirun

Each config x task becomes one run dir under --output_dir; the model loads once for configs that share
it. Bad settings exit with status 2 and one line naming the key, before any model loads.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Optional, Sequence

from scmoe_eval.config import ConfigError

EXIT_BAD_CONFIG = 2


def _kv(text: str) -> dict:
    """lm-eval's `k=v,k2=v2` syntax, values typed as lm-eval types them."""
    from lm_eval.utils import simple_parse_args_string

    for part in filter(None, text.split(",")):
        if "=" not in part:
            raise ConfigError(part, "expected key=value")
    return simple_parse_args_string(text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="scmoe-eval-lmeval", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", required=True, help="comma-separated lm-eval tasks or groups")
    parser.add_argument("--model_args", action="append", required=True, metavar="K=V,...",
                        help="our config keys (model=, model.path=, strategy=, strategy.beta=, run.batch_size=, "
                             "loglikelihood=routing|scmoe, max_length=); repeat for several configs")
    parser.add_argument("--num_fewshot", type=int, default=None)
    parser.add_argument("--limit", type=float, default=None, help="documents per task (testing only, as in lm-eval)")
    parser.add_argument("--gen_kwargs", default=None, metavar="K=V,...", help="override every generate_until task's")
    parser.add_argument("--include_path", default=None, help="folder of extra task YAMLs")
    parser.add_argument("--no_default_tasks", action="store_true", help="index only --include_path (faster start)")
    parser.add_argument("--apply_chat_template", action="store_true")
    parser.add_argument("--confirm_run_unsafe_code", action="store_true", help="lm-eval's gate for code tasks")
    parser.add_argument("--output_dir", type=Path, default=Path("results/runs"), help="root of the run store")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from scmoe_eval.lmeval import backend  # noqa: F401  (registers `scmoe`; a clear error without the extra)
    from scmoe_eval.lmeval.runner import EvalSettings, run_lmeval

    try:
        configs = [_kv(text) for text in args.model_args]
        settings = EvalSettings(
            num_fewshot=args.num_fewshot, limit=args.limit, apply_chat_template=args.apply_chat_template,
            gen_kwargs=_kv(args.gen_kwargs) if args.gen_kwargs else None,
        )
        tasks = [t for t in args.tasks.split(",") if t]
        done = run_lmeval(configs, tasks, output_dir=args.output_dir, settings=settings,
                          include_path=args.include_path, include_defaults=not args.no_default_tasks,
                          confirm_run_unsafe_code=args.confirm_run_unsafe_code)
    except ConfigError as err:
        print(f"scmoe-eval-lmeval: error: {err}", file=sys.stderr)
        raise SystemExit(EXIT_BAD_CONFIG)
    _print_summary(done)


def _print_summary(done: list[tuple[Path, Optional[dict]]]) -> None:
    """lm-eval's table of each evaluation, the run dirs, then the comparison table over them."""
    from scmoe_eval import tables
    from scmoe_eval.lmeval.runner import results_table

    printed: set[int] = set()
    for _, results in done:
        if results is not None and id(results) not in printed:
            printed.add(id(results))
            print(results_table(results) + "\n")
    run_dirs = [run_dir for run_dir, _ in done]
    for run_dir in run_dirs:
        print(run_dir)
    runs = tables.load_runs(run_dirs)
    try:
        print("\n" + tables.markdown(tables.comparison_table(runs, index=["model", "method"])))
    except ValueError as err:  # two runs in one cell: the dirs above are still complete
        print(f"(no single table: {err})")
