"""Run lm-eval tasks with the `scmoe` backend and file each task as an ordinary run directory.

One config (a `model_args` dict) x one lm-eval task (or group) = one run dir in our store, named and
hashed like any other (`lmeval-<task>__<model>__<strategy>__<hash>`), holding config.json/.yaml,
metrics.json in our schema (so `scmoe-eval-table` sets lm-eval tasks beside ours),
lmeval_results.json, lmeval_samples.jsonl, lmeval_generations.jsonl and environment.json.
A task whose run dir already has metrics.json is skipped; every config is checked before any model
loads, and configs that share a model section share one loaded model.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence

from scmoe_eval.config import TaskConfig
from scmoe_eval.lmeval.args import Parsed, check, parse_model_args
from scmoe_eval.store import RunStore

log = logging.getLogger(__name__)
TASK_PREFIX = "lmeval:"  # task.name of an lm-eval run dir: the table column is "lmeval:<task>"
PER_TASK_KEYS = ("results", "groups", "group_subtasks", "configs", "versions", "n-shot", "higher_is_better", "n-samples")


@dataclass(frozen=True)
class EvalSettings:
    """lm-eval's own settings of a run (they enter the run dir's hash: they change the numbers)."""

    num_fewshot: Optional[int] = None
    limit: Optional[float] = None
    gen_kwargs: Optional[dict] = None
    apply_chat_template: bool = False
    fewshot_seed: int = 1234  # lm-eval's default fewshot_random_seed


def lm_eval_version() -> str:
    from importlib.metadata import version

    return version("lm_eval")


def run_config(parsed: Parsed, task: str, settings: EvalSettings, output_dir: Path) -> dict:
    """The config dict a run dir is hashed and named by: ours (task = lmeval:<task>) plus an `lmeval` block."""
    cfg = dataclasses.asdict(parsed.cfg)
    cfg["task"] = dataclasses.asdict(TaskConfig(name=TASK_PREFIX + task))
    limit = settings.limit
    cfg["run"].update(output_dir=str(output_dir), limit=int(limit) if limit is not None and limit >= 1 else None)
    cfg["lmeval"] = {
        "task": task, **dataclasses.asdict(settings), **dataclasses.asdict(parsed.options),
        "lm_eval_version": lm_eval_version(),
    }
    return cfg


def _leaves(name: str, group_subtasks: Mapping[str, list]) -> list[str]:
    """The tasks under a group (recursively); [name] for a task."""
    if name not in group_subtasks:
        return [name]
    return [leaf for sub in group_subtasks[name] for leaf in _leaves(sub, group_subtasks)]


def _primary_key(block: Mapping[str, Any]) -> str:
    """The task's first reported '<metric>,<filter>' (lm-eval lists metrics in metric_list order)."""
    for key, value in block.items():
        if "," in key and "_stderr" not in key and isinstance(value, (int, float)):
            return key
    raise ValueError(f"no numeric metric in lm-eval's results {sorted(block)}")


def task_metrics(name: str, results: Mapping[str, Any]) -> dict:
    """metrics.json in our schema for one lm-eval task or group (docs/lmeval.md)."""
    from scmoe_eval.scoring.metrics import bootstrap_ci

    block = results["results"][name]
    key = _primary_key(block)
    metric, filter_name = key.split(",", 1)
    docs = [
        s for task in _leaves(name, results.get("group_subtasks", {}))
        for s in results.get("samples", {}).get(task, []) if s.get("filter", "none") == filter_name
    ]
    values = [float(s[metric]) for s in docs if isinstance(s.get(metric), (int, float))]
    binary = bool(values) and all(v in (0.0, 1.0) for v in values)
    rate = bool(values) and all(0.0 <= v <= 1.0 for v in values)  # perplexities have no per-item scalar
    mode = {
        metric: float(block[key]),
        "n_correct": int(sum(values)) if binary else None,
        "n_unparseable": None,
        "ci95": bootstrap_ci(values) if values else [math.nan, math.nan],
    }
    return {
        "task": TASK_PREFIX + name, "n_items": len(values) or None, "n_samples": 1, "primary": metric,
        "percent": rate,  # tables show rates x100 (like the paper) and other metrics as they are
        "official": mode, "strict": dict(mode),  # lm-eval has one scoring: both modes carry it
        "lmeval": {"metric_key": key, "results": dict(block), "n-shot": results.get("n-shot", {}).get(name),
                   "higher_is_better": results.get("higher_is_better", {}).get(name)},
    }


def results_table(results: Mapping[str, Any]) -> str:
    """lm-eval's per-task table (task, version, filter, n-shot, metric, value, stderr) as markdown.

    lm-eval's own `make_table` prints A, B, C... as headers with the pytablewriter our pins allow (0.38).
    """
    from tabulate import tabulate

    rows = []
    for task, block in sorted(results["results"].items()):
        for key, value in block.items():
            if "," not in key or "_stderr" in key:
                continue
            metric, filter_name = key.split(",", 1)
            stderr = block.get(f"{metric}_stderr,{filter_name}")
            stderr = f"{stderr:.4f}" if isinstance(stderr, (int, float)) else stderr  # else lm-eval's "N/A"
            rows.append([task, results.get("versions", {}).get(task), filter_name, results.get("n-shot", {}).get(task),
                         metric, value, stderr])
    headers = ["task", "version", "filter", "n-shot", "metric", "value", "stderr"]
    return tabulate(rows, headers=headers, tablefmt="github", floatfmt=("", "", "", "", "", ".4f", ".4f"))


def _subset(results: Mapping[str, Any], names: set[str]) -> dict:
    """lm-eval's results dict restricted to `names` in its per-task sections, without samples."""
    out = {k: v for k, v in results.items() if k != "samples"}
    for key in PER_TASK_KEYS:
        if isinstance(out.get(key), dict):
            out[key] = {k: v for k, v in out[key].items() if k in names}
    return out


def _json(obj: Any) -> str:
    from lm_eval.utils import handle_non_serializable

    return json.dumps(obj, default=handle_non_serializable, ensure_ascii=False)


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def file_task(store: RunStore, name: str, results: Mapping[str, Any], generations: Sequence[dict], stats: dict) -> None:
    """Write one task's lm-eval results, samples, engine records, metrics.json and environment.json."""
    leaves = _leaves(name, results.get("group_subtasks", {}))
    names = {name, *leaves}
    _write(store.path / "lmeval_results.json", _json(_subset(results, names)) + "\n")
    samples = [{"task": t, **s} for t in leaves for s in results.get("samples", {}).get(t, [])]
    _write(store.path / "lmeval_samples.jsonl", "".join(_json(s) + "\n" for s in samples))
    records = [g for g in generations if g["task"] in names]
    _write(store.path / "lmeval_generations.jsonl", "".join(_json(g) + "\n" for g in records))
    store.write_metrics(task_metrics(name, results))
    store.write_environment({**stats, "lm_eval": lm_eval_version()})


def _model_key(parsed: Parsed) -> str:
    return json.dumps(dataclasses.asdict(parsed.cfg.model), sort_keys=True)


def run_lmeval(
    model_args: Iterable[Mapping[str, Any]],
    tasks: Sequence[str],
    *,
    output_dir: Path = Path("results/runs"),
    settings: EvalSettings = EvalSettings(),
    include_path: Optional[str] = None,
    include_defaults: bool = True,
    confirm_run_unsafe_code: bool = False,
) -> list[tuple[Path, Optional[dict]]]:
    """Evaluate every config on every task; returns (run dir, lm-eval results or None if resumed) per config x task.

    All configs are validated (schemas, preflight, config.json) before the first model loads.
    `include_defaults=False` skips indexing lm-eval's built-in tasks (seconds) when only `include_path` is used.
    """
    import lm_eval
    from lm_eval.tasks import TaskManager

    from scmoe_eval.lmeval.backend import SCMoELM
    from scmoe_eval.models.loading import load_model

    plans = []
    for given in model_args:
        parsed = parse_model_args(given)
        resolved, _ = check(parsed)
        stores = {t: RunStore(output_dir, run_config(parsed, t, settings, output_dir)) for t in tasks}
        plans.append((given, parsed, resolved, stores))
    manager = TaskManager(include_path=include_path, include_defaults=include_defaults)
    loaded: dict[str, Any] = {}
    out: list[tuple[Path, Optional[dict]]] = []
    for given, parsed, resolved, stores in plans:
        todo = [t for t, store in stores.items() if store.read_metrics() is None]
        for t in tasks:
            if t not in todo:
                log.info("%s: already evaluated (%s)", t, stores[t].path)
        if not todo:
            out += [(stores[t].path, None) for t in tasks]
            continue
        key = _model_key(parsed)
        if key not in loaded:
            loaded[key] = load_model(resolved.model)
        lm = SCMoELM(loaded=loaded[key], **given)
        start = time.perf_counter()
        results = lm_eval.simple_evaluate(
            model=lm, tasks=list(todo), task_manager=manager, num_fewshot=settings.num_fewshot,
            limit=settings.limit, gen_kwargs=settings.gen_kwargs, log_samples=True,
            apply_chat_template=settings.apply_chat_template, fewshot_random_seed=settings.fewshot_seed,
            confirm_run_unsafe_code=confirm_run_unsafe_code,
        )
        stats = {"seconds": round(time.perf_counter() - start, 3), "evaluated_together": todo,
                 "batch_size": resolved.run.batch_size}
        for t in tasks:
            if t in todo and t not in results["results"]:
                raise ValueError(f"lm-eval returned no results named {t!r} (a tag? list its tasks instead)")
            if t in todo:
                file_task(stores[t], t, results, lm.generations, stats)
            out.append((stores[t].path, results if t in todo else None))
    return out
