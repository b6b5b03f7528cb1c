"""Command-line entry points: `scmoe-eval` (Hydra app), `scmoe-eval-score`, `scmoe-eval-table`.

Bad settings exit with status 2 and one line naming the key, before any model loads.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Optional, Sequence

import hydra
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

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


def _fail(err: Exception) -> None:
    """Print a config error without a traceback and exit non-zero (also inside Hydra jobs)."""
    print(f"scmoe-eval: error: {err}", file=sys.stderr)
    raise SystemExit(EXIT_BAD_CONFIG)


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="config")
def _app(cfg: DictConfig) -> None:
    """One Hydra job = one run config: check, generate, score, metrics."""
    from scmoe_eval.pipeline import run_experiment

    try:
        run_dir = run_experiment(to_experiment(cfg))
    except ConfigError as err:
        _fail(err)
    print(run_dir)


def main() -> None:
    """`scmoe-eval [overrides...]`: Hydra parses argv (use -m for sweeps, --help for groups)."""
    _app()


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
        print(f"{run_dir}: {metrics}")


def table_main(argv: Optional[Sequence[str]] = None) -> None:
    """`scmoe-eval-table [ROOT...] [--paper] [--out DIR]`: compare every scored run under ROOTs."""
    from scmoe_eval import tables

    parser = argparse.ArgumentParser(prog="scmoe-eval-table", description=table_main.__doc__)
    parser.add_argument("roots", nargs="*", type=Path, default=[Path("results/runs")])
    parser.add_argument("--out", type=Path, default=None, help="also write the tables (.md/.csv/.tex) and plots here")
    parser.add_argument("--mode", default="official", choices=("official", "strict"), help="answer extraction")
    parser.add_argument("--paper", action="store_true", help="add the paper's tables (ours / paper / delta) and plots")
    parser.add_argument("--paper-model", default="mixtral", choices=("mixtral", "deepseek"))
    parser.add_argument("--ours-model", default=None, help="compare runs of this model.name (e.g. tiny-mixtral)")
    args = parser.parse_args(argv)
    runs = tables.load_runs(args.roots)
    try:
        if runs.empty:
            raise ConfigError("ROOT", f"no scored runs (metrics.json) under {', '.join(map(str, args.roots))}")
        built = {"comparison": tables.comparison_table(runs, mode=args.mode, index=["model", "method"])}
    except (ConfigError, ValueError) as err:
        _fail(err)
    if args.paper:
        kw = dict(mode=args.mode, ours_model=args.ours_model)
        if args.paper_model == "deepseek":
            built["paper_table4"] = tables.paper_table1(runs, "deepseek", **kw)
        else:  # Tab.8, Tab.9 and §4.3 exist for Mixtral only
            built["paper_table1"] = tables.paper_table1(runs, "mixtral", **kw)
            built["paper_beta_rank"] = tables.paper_beta_rank_table(runs, model="mixtral", **kw)
            built["paper_ideal_strong"] = tables.paper_ideal_strong_table(runs, model="mixtral", **kw)
            built["paper_self_consistency"] = tables.paper_self_consistency_table(
                runs, model="mixtral", ours_model=args.ours_model
            )
    for name, frame in built.items():
        print(f"\n## {name}\n\n{tables.markdown(frame)}")
        if args.out is not None:
            tables.write_table(frame, args.out / name)
    if args.paper and args.out is not None:
        from scmoe_eval.plots import plot_beta_sweep, plot_topk

        # the same runs the paper tables compare: the paper's checkpoint, or --ours-model
        ours = runs[runs["model"] == args.ours_model] if args.ours_model else runs[runs["paper_model"] == args.paper_model]
        for plot, name in ((plot_beta_sweep, "beta_sweep"), (plot_topk, "topk")):
            plot(ours, args.out / f"{name}.png", mode=args.mode, paper_model=args.paper_model)
