"""generate -> score -> metrics for one config, resumable at the (item, sample) level.

Run directory = RunStore(run.output_dir, config). Generation appends one fsync'd batch at a
time (run.schedule=continuous: one row as it ends), so a killed run loses at most what is in
flight; the next run skips what is done.
Scoring runs once every shard's records are present (any shard may be the last one).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import time
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import numpy as np

from scmoe_eval.config import ConfigError, ExperimentConfig, RunConfig, used_policies
from scmoe_eval.preflight import Checked, check, check_task
from scmoe_eval.identity import local_paths, run_identity
from scmoe_eval.report import Progress, quiet_library_bars, summary_table
from scmoe_eval.runlock import RunLock
from scmoe_eval.store import IDENTITY_KEY, RunStore
from scmoe_eval.threads import default_threads
from scmoe_eval.tracking import Tracker, build_tracker

log = logging.getLogger(__name__)
LOG_FORMAT = "[%(asctime)s][%(name)s][%(levelname)s] %(message)s"


def item_seed(run_seed: int, index: int) -> int:
    """Seed of one item from (run.seed, item index): independent of batching and sharding."""
    return int(np.random.SeedSequence([run_seed, index]).generate_state(1, dtype=np.uint32)[0])


def shard_items(items: Sequence[Any], shard: int, num_shards: int) -> list[Any]:
    """Shard i takes the items with index % num_shards == i."""
    return [it for it in items if it.index % num_shards == shard]


@contextlib.contextmanager
def run_log(path: Path) -> Iterator[None]:
    """Copy every log record of this run into <run_dir>/run.log (appended across resumes)."""
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root = logging.getLogger()
    root.addHandler(handler)
    if root.level > logging.INFO or root.level == logging.NOTSET:
        root.setLevel(logging.INFO)
    try:
        yield
    finally:
        root.removeHandler(handler)
        handler.close()


def run_experiment(cfg: ExperimentConfig) -> Path:
    """Check, generate what is missing, then score if the run is complete. Returns the run dir."""
    checked = check(cfg)
    quiet_library_bars()
    cfg_dict = dataclasses.asdict(cfg)  # as given; the hash uses the identity block, not the paths
    cfg_dict[IDENTITY_KEY] = run_identity(checked)
    store = RunStore(Path(cfg.run.output_dir), cfg_dict)
    with run_log(store.path / "run.log"), RunLock(store.lock_path(cfg.run.shard, cfg.run.num_shards)):
        log.info("run dir %s (shard %d of %d)", store.path, cfg.run.shard, cfg.run.num_shards)
        try:
            stats = generate(checked, store)
        except KeyboardInterrupt:
            done, total = _items_done(store, checked)
            raise RunInterrupted(
                f"interrupted: {done}/{total} items saved in {store.path}; run the same command again to resume"
            ) from None
        tracker = build_tracker(cfg.logger, store.path, cfg_dict)
        try:
            metrics = score_store(store, checked.task, checked.items, checked.cfg, tracker)
            store.write_environment({**stats, "num_experts": checked.num_experts, "scored": metrics is not None,
                                     "local_paths": local_paths(cfg, checked)})
            if metrics is not None:
                log.info("results (%s):\n%s", store.path / "metrics.json", summary_table(metrics, stats))
            if metrics is not None and cfg.logger is not None:
                _log_comparison(tracker, Path(cfg.run.output_dir))
        finally:
            tracker.finish()
    return store.path


def _items_done(store: RunStore, checked: Checked) -> tuple[int, int]:
    """(items of this shard with every sample saved, items of this shard)."""
    run = checked.cfg.run
    done = store.done_keys(run.shard, run.num_shards)
    mine = shard_items(checked.items, run.shard, run.num_shards)
    samples = checked.cfg.strategy.num_samples
    return sum(all((it.index, j) in done for j in range(samples)) for it in mine), len(mine)


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C while generating; its one-line message says what is saved and how to resume."""


def _log_comparison(tracker: Tracker, root: Path) -> None:
    """Every scored run under the output root, methods x tasks (what `scmoe-eval-table` prints)."""
    from scmoe_eval.tables import comparison_table, load_runs, pick_runs

    try:
        table = comparison_table(pick_runs(load_runs(root))[0], index=["model", "method"])
    except ValueError as err:  # two runs in one cell (e.g. different run.limit): no single table
        log.warning("comparison table not logged: %s", err)
        return
    tracker.log_table("comparison", table)


def generate(checked: Checked, store: RunStore) -> dict[str, Any]:
    """Generate this shard's missing (index, sample) records; returns timing stats for environment.json."""
    from scmoe_eval.decoding.strategies import build_strategy

    cfg, run = checked.cfg, checked.cfg.run
    strategy = build_strategy(cfg.strategy)
    done = store.done_keys(run.shard, run.num_shards)
    mine = shard_items(checked.items, run.shard, run.num_shards)
    todo = [it for it in mine if any((it.index, j) not in done for j in range(strategy.num_samples))]
    stats: dict[str, Any] = {"items_total": len(mine), "items_generated": len(todo), "batch_size": run.batch_size,
                             "schedule": run.schedule, "compile": run.compile}
    if done and todo:
        log.info("resuming: %d/%d items done", len(mine) - len(todo), len(mine))
    if not todo:
        log.info("all %d items of this shard already generated", len(mine))
        return stats

    stats |= _cpu_threads(cfg.model.device)
    engine, tokenizer = _engine(checked)
    if cfg.strategy.name == "cd":
        strategy = _with_amateur(strategy, checked)
    lengths = {it.index: len(tokenizer(it.prompt).input_ids) for it in todo}
    todo.sort(key=lambda it: (-lengths[it.index], it.index))  # longest first: padding and OOMs show up early
    stops = checked.task.stop_sequences(cfg.task)
    tokens, start = 0, time.perf_counter()
    with Progress(len(todo), store.path.name) as bar:
        if run.schedule == "continuous":
            tokens = _generate_continuous(strategy, engine, todo, stops, store, run, bar)
        else:
            tokens = _generate_static(strategy, engine, todo, stops, store, run, bar, done)
    seconds = time.perf_counter() - start
    log.info("generated %d items, %d tokens in %.1f s (%.1f tok/s)", len(todo), tokens, seconds, tokens / seconds)
    return {**stats, "generated_tokens": tokens, "generation_seconds": round(seconds, 3)}


def _generate_static(strategy: Any, engine: Any, todo: list, stops: Sequence[str], store: RunStore,
                     run: RunConfig, bar: Progress, done: set) -> int:
    """Static batches of run.batch_size items, each appended (fsync'd) once its longest row ends. Returns tokens."""
    tokens = 0
    for lo in range(0, len(todo), run.batch_size):
        batch = todo[lo : lo + run.batch_size]
        seeds = [item_seed(run.seed, it.index) for it in batch]
        gens = strategy.generate(
            engine, [it.prompt for it in batch], stops=stops, max_new_tokens=run.max_new_tokens, seeds=seeds
        )
        records = [
            {"id": it.id, "index": it.index, "sample": j, "seed": sample_seed, **gen.to_record()}
            for it, seed, row in zip(batch, seeds, gens)
            for j, (sample_seed, gen) in enumerate(zip(strategy.sample_seeds(seed), row))
            if (it.index, j) not in done
        ]
        store.append(records, run.shard, run.num_shards)
        new_tokens = sum(r["num_tokens"] for r in records)
        tokens += new_tokens
        bar.update(len(batch), new_tokens)
    return tokens


def _generate_continuous(strategy: Any, engine: Any, todo: list, stops: Sequence[str], store: RunStore,
                         run: RunConfig, bar: Progress) -> int:
    """Continuous batching (run.schedule=continuous, one sample per item): each record is appended
    (fsync'd) as its row finishes, so a killed run loses only the rows in flight. Returns tokens."""
    seeds = [item_seed(run.seed, it.index) for it in todo]
    tokens = 0

    def save(i: int, gen: Any) -> None:
        nonlocal tokens
        it = todo[i]
        store.append([{"id": it.id, "index": it.index, "sample": 0, "seed": seeds[i], **gen.to_record()}],
                     run.shard, run.num_shards)
        tokens += gen.num_tokens
        bar.update(1, gen.num_tokens)

    strategy.generate_continuous(engine, [it.prompt for it in todo], batch_size=run.batch_size, stops=stops,
                                 max_new_tokens=run.max_new_tokens, seeds=seeds, on_finish=save)
    return tokens


@functools.cache
def _process_threads() -> tuple[int, str]:
    """Decided once per process: later jobs of an in-process sweep would count the first one's load as busy."""
    return default_threads()


def _cpu_threads(device: str) -> dict[str, Any]:
    """Set torch's intra-op threads for a CPU run (threads.default_threads); the count goes to environment.json."""
    import torch

    from scmoe_eval.models.loading import resolve_device

    with contextlib.suppress(ValueError):  # a CUDA request without CUDA is load_model's error to report
        if resolve_device(device).type != "cpu":
            return {"torch_threads": torch.get_num_threads(), "torch_threads_source": "torch default (model on GPU)"}
    threads, why = _process_threads()
    torch.set_num_threads(threads)
    hint = "" if why == "OMP_NUM_THREADS" else "; OMP_NUM_THREADS=N sets it"
    log.info("CPU run: %d torch threads (%s%s)", threads, why, hint)
    return {"torch_threads": threads, "torch_threads_source": why}


def _engine(checked: Checked) -> tuple[Any, Any]:
    """Load the model (the only slow step), check routing policies against it, wrap it in an engine."""
    from scmoe_eval.decoding.engine import DecodeEngine
    from scmoe_eval.models.loading import load_model
    from scmoe_eval.models.routing import RoutingPolicy

    log.info("loading %s from %s", checked.cfg.model.name, checked.cfg.model.path)
    loaded = load_model(checked.cfg.model)
    for policy in used_policies(checked.cfg.strategy).values():
        loaded.controller.check(RoutingPolicy.from_config(policy))
    return DecodeEngine(loaded, compile=checked.cfg.run.compile), loaded.tokenizer


def _with_amateur(strategy: Any, checked: Checked) -> Any:
    """The cd strategy with its amateur loaded like the expert (same dtype and placement settings)."""
    from scmoe_eval.decoding.baselines import attach_amateur, load_amateur

    log.info("loading the CD amateur from %s", checked.cfg.strategy.amateur)
    return attach_amateur(strategy, load_amateur(checked.cfg.strategy.amateur, checked.cfg.model))


def rescore(run_dir: Path, cfg: ExperimentConfig) -> Optional[dict[str, Any]]:
    """Score a run directory's saved generations again (`scmoe-eval-score`); no model is loaded.

    `cfg` is the saved config plus user overrides (data dir, execution gate); the store is opened
    with the saved config itself so such overrides cannot point at another run directory.
    """
    saved = json.loads((run_dir / "config.json").read_text(encoding="utf-8"))
    store = RunStore(run_dir.parent, saved)
    if store.path.resolve() != run_dir.resolve():
        raise ConfigError("RUN_DIR", f"{run_dir} was renamed; its config names {store.path.name}")
    task, items = check_task(cfg)
    with run_log(store.path / "run.log"):
        return score_store(store, task, items, cfg)


def score_store(
    store: RunStore, task: Any, items: list, cfg: ExperimentConfig, tracker: Optional[Tracker] = None
) -> Optional[dict[str, Any]]:
    """Score all records if every (item, sample) is present; write scored.jsonl + metrics.json."""
    from scmoe_eval.scoring.metrics import compute_metrics

    records = store.read_generations()
    num_samples = cfg.strategy.num_samples
    present = {(r["index"], r["sample"]) for r in records}
    missing = sum((it.index, j) not in present for it in items for j in range(num_samples))
    if missing:
        log.info("%d (item, sample) records still missing (other shards?); scoring waits for them", missing)
        return None
    scored = task.score(items, records, cfg.task)
    metrics = compute_metrics(task, scored)
    store.write_scored(scored)
    store.write_metrics(metrics)
    log.info("scored %d records of %d items -> %s", len(scored), len(items), store.path / "metrics.json")
    if tracker is not None:
        tracker.log_metrics(metrics)
        tracker.log_samples(scored)
    return metrics
