"""Command-line entry points: `scmoe-eval` (Hydra app), `scmoe-eval-score`, `scmoe-eval-table`.

Bad settings exit with status 2 and one line naming the key, before any model loads.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import logging
import math
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

import hydra
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from scmoe_eval import catalog
from scmoe_eval.config import ConfigError, ExperimentConfig, register_configs, to_experiment


def _config_dir() -> str:
    """`conf/` beside the package in a wheel install, else the source tree's (editable install)."""
    here = Path(__file__).resolve().parent
    shipped = here / "conf"
    return str(shipped if (shipped / "config.yaml").is_file() else here.parent / "conf")


CONFIG_DIR = _config_dir()
EXIT_BAD_CONFIG = 2
log = logging.getLogger("scmoe_eval")

register_configs()
# `${scmoe_groups:}` in conf/config.yaml's help template: the group options without the base_* schemas
OmegaConf.register_new_resolver("scmoe_groups", lambda: catalog.groups_help(CONFIG_DIR), replace=True)


def _fail(err: Exception) -> None:
    """Print a config error without a traceback and exit non-zero (also inside Hydra jobs)."""
    print(f"scmoe-eval: error: {err}", file=sys.stderr)
    raise SystemExit(EXIT_BAD_CONFIG)


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="config")
def _app(cfg: DictConfig) -> None:
    """One Hydra job = one run config: check, generate, score, metrics."""
    from scmoe_eval.pipeline import run_experiment

    try:
        _refuse_schema_choices()
        run_dir = run_experiment(to_experiment(cfg))
    except ConfigError as err:
        _fail(err)
    print(run_dir)


EXIT_INTERRUPTED = 130


def _refuse_schema_choices() -> None:
    """`strategy=base_strategy` (any base_*) picks the bare schema, not an option: say so."""
    from hydra.core.hydra_config import HydraConfig

    for group, choice in HydraConfig.get().runtime.choices.items():
        if isinstance(choice, str) and choice.startswith("base_") and group in catalog.GROUPS:
            valid = ", ".join(catalog.options(CONFIG_DIR, group))
            raise ConfigError(group, f"{choice} is the schema behind every {group} option, not an option; "
                                     f"choose one of: {valid} (scmoe-eval --list)")


def main() -> None:
    """`scmoe-eval [overrides...]`: Hydra parses argv (use -m for sweeps, --help for groups, --list for options)."""
    if "--list" in sys.argv[1:]:
        print(catalog.listing(CONFIG_DIR))
        return
    try:
        from scmoe_eval.sweep import check_sweep

        check_sweep(sys.argv[1:], CONFIG_DIR)  # a multirun: every job's config before the first job runs
    except ConfigError as err:
        _fail(err)
    try:
        _app()
    except KeyboardInterrupt as err:  # one line, no traceback: what was saved and how to resume
        print(f"scmoe-eval: {err or 'interrupted; saved items are kept, run the same command again to resume'}",
              file=sys.stderr)
        raise SystemExit(EXIT_INTERRUPTED) from None


def _load_run_config(run_dir: Path, overrides: Sequence[str]) -> ExperimentConfig:
    """The config a run directory was made with, plus `key=value` overrides (e.g. task.data_dir)."""
    schema = OmegaConf.structured(ExperimentConfig)
    try:
        merged = OmegaConf.merge(schema, OmegaConf.load(run_dir / "config.yaml"), OmegaConf.from_dotlist(list(overrides)))
    except OmegaConfBaseException as err:
        raise ConfigError(str(getattr(err, "full_key", "") or "override"), str(err).splitlines()[0]) from None
    return to_experiment(merged)


def score_main(argv: Optional[Sequence[str]] = None) -> None:
    """`scmoe-eval-score RUN_DIR|FILE... [key=value...]`: re-score saved generations, no model needed.

    A FILE is another tool's generations (human-eval samples.jsonl, bigcode generations.json, lm-eval
    --log_samples JSONL, or a plain {id, completion} JSONL; docs/tasks.md): it becomes a new run directory."""
    from scmoe_eval import imports

    parser = argparse.ArgumentParser(prog="scmoe-eval-score", description=score_main.__doc__)
    parser.add_argument("args", nargs="+", metavar="RUN_DIR|FILE|key=value")
    parser.add_argument("--format", choices=imports.FORMATS.names(), default=None,
                        help="format of a FILE (default: detected)")
    parser.add_argument("--task", choices=imports.OUR_TASKS, default=None, help="task of a FILE (default: detected)")
    parser.add_argument("--model", default=None, help="model name recorded for a FILE's run (default: <format>-import)")
    parser.add_argument("--output-dir", type=Path, default=Path("results/runs"), help="where a FILE's run directory goes")
    parser.add_argument("--allow-empty", action="store_true", help="score empty completions in a FILE as wrong")
    args = parser.parse_args(argv)
    overrides = [a for a in args.args if "=" in a]
    run_dirs = [Path(a) for a in args.args if "=" not in a]
    if not run_dirs:
        parser.error("give at least one RUN_DIR or FILE")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from scmoe_eval.pipeline import rescore

    for run_dir in run_dirs:
        try:
            if run_dir.is_file():
                run_dir, metrics = imports.import_and_score(
                    run_dir, fmt=args.format, task=args.task, model=args.model, output_dir=args.output_dir,
                    overrides=overrides, allow_empty=args.allow_empty)
            elif not (run_dir / "config.yaml").is_file():
                raise ConfigError("RUN_DIR", f"{run_dir} is not a run directory (no config.yaml) nor a file")
            elif imports.is_imported_run(OmegaConf.to_container(OmegaConf.load(run_dir / "config.yaml"))):
                metrics = imports.rescore_imported(run_dir, _load_run_config(run_dir, overrides))
            else:
                metrics = rescore(run_dir, _load_run_config(run_dir, overrides))
        except (ConfigError, imports.ImportFileError) as err:
            _fail(err)
        if metrics is None:
            print(f"{run_dir}: not scored yet (records missing; see the log above)")
        else:
            from scmoe_eval.report import summary_table

            print(f"{run_dir}\n{summary_table(metrics)}")


TABLE_FORMATS = ("md", "csv", "latex", "json")


def _table_fail(message: str) -> None:
    print(f"scmoe-eval-table: error: {message}", file=sys.stderr)
    raise SystemExit(EXIT_BAD_CONFIG)


def _writable_dir(out: Path) -> None:
    """Fail now, in one line, if --out cannot hold files (not after every table is built)."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".scmoe-eval-table.probe"
        probe.write_text("", encoding="utf-8")
        probe.unlink()
    except OSError as err:
        _table_fail(f"--out {out}: cannot write there ({err.strerror or err})")


def _filter_runs(runs: Any, args: argparse.Namespace) -> Any:
    """Keep the runs matching every --task/--model/--method (comma lists and shell wildcards allowed)."""
    for column in ("task", "model", "method"):
        given = getattr(args, column)
        if not given:
            continue
        patterns = [p for value in given for p in value.split(",") if p]
        runs = runs[runs[column].map(lambda v: any(fnmatch.fnmatchcase(str(v), p) for p in patterns))]
    return runs


def _run_record(row: Any) -> dict[str, Any]:
    """A run as the summary JSON lists it (numbers in percent, as in the tables)."""

    def num(x: Any) -> Any:
        return None if x is None or (isinstance(x, float) and math.isnan(x)) else x

    return {
        "task": row["task"], "model": row["model"], "method": row["method"], "n_items": int(row["n_items"]),
        "complete": bool(row["complete"]), "primary": row["primary"], "official": num(float(row["official"])),
        "strict": num(float(row["strict"])), "ci95": [num(float(row["ci95_lo"])), num(float(row["ci95_hi"]))],
        "scored_at": row["scored_at"], "run_dir": row["run_dir"],
    }


def table_main(argv: Optional[Sequence[str]] = None) -> None:
    """`scmoe-eval-table [ROOT...] [--paper] [--out DIR]`: compare every scored run under ROOTs.

    Runs that share model, method and task (reruns, another run.limit) are resolved: a complete run
    beats a partial one, then the most items, then the newest; the runs set aside are named on stderr.
    """
    from scmoe_eval import tables

    parser = argparse.ArgumentParser(prog="scmoe-eval-table", description=table_main.__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("roots", nargs="*", type=Path, default=[Path("results/runs")])
    parser.add_argument("--out", type=Path, default=None,
                        help="also write the tables (.md/.csv/.tex/.json), summary.json and plots here")
    parser.add_argument("--mode", default="official", choices=("official", "strict"), help="answer extraction")
    parser.add_argument("--paper", action="store_true", help="add the paper's tables (ours / paper / delta) and plots")
    parser.add_argument("--paper-model", default="mixtral", choices=("mixtral", "deepseek"))
    parser.add_argument("--ours-model", default=None, help="compare runs of this model.name (e.g. tiny-mixtral)")
    parser.add_argument("--index", action="store_true", help="list the runs found (used or set aside) and exit")
    for column in ("task", "model", "method"):
        parser.add_argument(f"--{column}", action="append", metavar="NAME",
                            help=f"only runs of this {column} (repeatable, comma list, wildcards like 'scmoe*')")
    parser.add_argument("--format", default="md", choices=TABLE_FORMATS, help="format of what is printed (default md)")
    args = parser.parse_args(argv)
    if args.out is not None and not args.index:
        _writable_dir(args.out)
    found = tables.load_runs(args.roots)
    if found.empty:
        _table_fail(f"no scored runs (metrics.json) under {', '.join(map(str, args.roots))}")
    runs = _filter_runs(found, args)
    if runs.empty:
        _table_fail(f"none of the {len(found)} runs under {', '.join(map(str, args.roots))} match the filters")
    used, aside = tables.pick_runs(runs)
    if args.index:
        print(tables.render(tables.runs_index(runs, aside), args.format))
        return
    for _, row in aside.iterrows():
        print(f"scmoe-eval-table: set aside {row['run_dir']}: {row['reason']}; using {row['chosen_run']}",
              file=sys.stderr)
    try:
        built = {"comparison": tables.comparison_detail(used, mode=args.mode, index=["model", "method"])}
    except ValueError as err:
        _table_fail(str(err))
    if args.paper:
        kw = dict(mode=args.mode, ours_model=args.ours_model)
        if args.paper_model == "deepseek":
            built["paper_table4"] = tables.paper_table1(used, "deepseek", **kw)
        else:  # Tab.8, Tab.9 and §4.3 exist for Mixtral only
            built["paper_table1"] = tables.paper_table1(used, "mixtral", **kw)
            built["paper_beta_rank"] = tables.paper_beta_rank_table(used, model="mixtral", **kw)
            built["paper_ideal_strong"] = tables.paper_ideal_strong_table(used, model="mixtral", **kw)
            built["paper_self_consistency"] = tables.paper_self_consistency_table(
                used, model="mixtral", ours_model=args.ours_model
            )
    if args.format == "json":  # one JSON document: {table name: rows}
        print(json.dumps({name: json.loads(tables.render(frame, "json")) for name, frame in built.items()},
                         indent=1, ensure_ascii=False))
    else:
        heading = {"md": "\n## {}\n", "csv": "# {}", "latex": "% {}"}[args.format]
        for name, frame in built.items():
            print(heading.format(name))
            print(tables.render(frame, args.format))
    if args.out is None:
        return
    try:
        written = {name: [str(p) for p in tables.write_table(frame, args.out / name, ("md", "csv", "tex", "json"))]
                   for name, frame in built.items()}
        plots: list[str] = []
        if args.paper:
            from scmoe_eval.plots import plot_alpha_sweep, plot_beta_sweep, plot_topk

            # the same runs the paper tables compare: the paper's checkpoint, or --ours-model
            ours = used[used["model"] == args.ours_model] if args.ours_model else used[used["paper_model"] == args.paper_model]
            pngs = [plot(ours, args.out / f"{name}.png", mode=args.mode, paper_model=args.paper_model)
                    for plot, name in ((plot_beta_sweep, "beta_sweep"), (plot_topk, "topk"))]
            pngs.append(plot_alpha_sweep(ours, args.out / "alpha_sweep.png", mode=args.mode))
            plots = [str(png) for png in pngs if png is not None]
        summary = {
            "roots": [str(r) for r in args.roots], "mode": args.mode,
            "filters": {c: getattr(args, c) for c in ("task", "model", "method") if getattr(args, c)},
            "paper_model": args.paper_model if args.paper else None, "ours_model": args.ours_model,
            "runs_found": len(found), "runs_matching": len(runs),
            "runs_used": [_run_record(row) for _, row in used.iterrows()],
            "set_aside": [_run_record(row) | {"reason": row["reason"], "chosen_run": row["chosen_run"]}
                          for _, row in aside.iterrows()],
            "tables": written, "plots": plots,
        }
        (args.out / "summary.json").write_text(json.dumps(summary, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    except OSError as err:
        _table_fail(f"--out {args.out}: cannot write there ({err.strerror or err})")
