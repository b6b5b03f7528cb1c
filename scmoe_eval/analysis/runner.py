"""Run one analysis config: check, forward what is missing, summarise, write tables and PNGs.

The run store is scmoe_eval.store.RunStore: a directory per config hash
(`analysis-<name>__gsm8k-<split>__<model>__<hash8>`) with config.json/config.yaml, one fsync'd JSON
record per item in generations.jsonl (so a run killed with kill -9 resumes at the item level, losing
at most the batch in flight), environment.json and run.log. The summary is summary.json (not
metrics.json, so `scmoe-eval-table` never mistakes an analysis for a scored run); tables and PNGs sit
beside it, and are copied to `analysis.tables_dir` when set.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from tqdm.auto import tqdm

from scmoe_eval.analysis import heatmap, kld, routing_stats, unchosen  # noqa: F401 - register the analyses
from scmoe_eval.analysis.base import ANALYSES, Batch
from scmoe_eval.analysis.config import AnalyzeConfig, parse_weak, validate_analysis
from scmoe_eval.analysis.data import TextItem, load_texts
from scmoe_eval.analysis.forward import encode, multi_routing_forward, plain_forward
from scmoe_eval.analysis.report import write_report
from scmoe_eval.config import ConfigError
from scmoe_eval.pipeline import run_log
from scmoe_eval.identity import items_fingerprint, model_identity
from scmoe_eval.runlock import RunLock
from scmoe_eval.store import IDENTITY_KEY, RunStore, _atomic_write, _safe, config_hash

log = logging.getLogger(__name__)


def store_name(cfg: dict[str, Any]) -> str:
    a = cfg["analysis"]
    return "__".join([f"analysis-{_safe(a['name'])}", f"gsm8k-{_safe(a['split'])}", _safe(cfg["model"]["name"]),
                      config_hash(cfg)[:8]])


def identity(resolved: AnalyzeConfig, items: list[TextItem]) -> dict[str, str]:
    """What is analysed, not where it lies (scmoe_eval/identity.py's rule for runs): texts and checkpoints."""
    texts = (SimpleNamespace(id=it.id, prompt=it.prefix, gold=it.answer) for it in items)
    block = {"data": items_fingerprint(texts), "model": model_identity(resolved.model.path, resolved.model.revision)}
    if resolved.analysis.amateur:
        block["amateur"] = model_identity(resolved.analysis.amateur, None)
    return block


def open_store(cfg: AnalyzeConfig, resolved: AnalyzeConfig, items: list[TextItem]) -> RunStore:
    """The run directory of `cfg`, hashed by its settings and `identity` (the paths go to environment.json)."""
    cfg_dict = dataclasses.asdict(cfg)
    cfg_dict["analysis"].pop("tables_dir")  # where copies go, not what is computed (environment.json keeps it)
    cfg_dict[IDENTITY_KEY] = identity(resolved, items)
    return RunStore(Path(cfg.run.output_dir), cfg_dict, name=store_name(cfg_dict))


def check(cfg: AnalyzeConfig) -> tuple[AnalyzeConfig, list[TextItem]]:
    """Every check before the model loads; returns the config with model.path resolved and the items."""
    from scmoe_eval.preflight import _check_gpu, check_local_path, num_experts, read_model_config, resolve_model_path

    validate_analysis(cfg)
    resolved = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, path=resolve_model_path(cfg.model)))
    check_local_path(resolved.model)
    _check_gpu(resolved.model)
    validate_analysis(resolved, num_experts=num_experts(read_model_config(resolved.model)))
    if cfg.analysis.amateur:
        amateur = dataclasses.replace(cfg.model, path=cfg.analysis.amateur)
        try:
            amateur_path = resolve_model_path(amateur)
            read_model_config(dataclasses.replace(amateur, path=amateur_path))
        except ConfigError as err:
            raise ConfigError("analysis.amateur", str(err).removeprefix(f"{err.key}: ")) from None
        resolved = dataclasses.replace(resolved, analysis=dataclasses.replace(resolved.analysis, amateur=amateur_path))
    return resolved, load_texts(cfg.task, cfg.analysis, cfg.run.limit)


def run_analysis(cfg: AnalyzeConfig) -> Path:
    """Resumable: items already in the store are not recomputed. Returns the run directory."""
    resolved, items = check(cfg)
    store = open_store(cfg, resolved, items)
    analysis = ANALYSES.get(cfg.analysis.name)()
    with run_log(store.path / "run.log"), RunLock(store.lock_path()):
        log.info("analysis dir %s", store.path)
        done = store.done_keys()
        todo = [it for it in items if (it.index, 0) not in done]
        stats: dict[str, Any] = {"items_total": len(items), "items_computed": len(todo)}
        if todo:
            stats |= _compute(resolved, analysis, todo, store)
        else:
            log.info("all %d items already computed", len(items))
        wanted = {it.index for it in items}
        records = [r for r in store.read_generations() if r["index"] in wanted]
        summary = analysis.summarize(records, list(cfg.analysis.weak))
        _atomic_write(store.path / "summary.json", json.dumps(summary, indent=2) + "\n")
        paths = write_report(cfg.analysis.name, summary, records, store.path)
        if cfg.analysis.tables_dir:
            target = Path(cfg.analysis.tables_dir)
            target.mkdir(parents=True, exist_ok=True)
            for path in paths:
                shutil.copy2(path, target / path.name)
        paths_here = {"task.data_dir": cfg.task.data_dir, "model.path": cfg.model.path,
                      "model.resolved_path": resolved.model.path, "analysis.amateur": resolved.analysis.amateur}
        store.write_environment({**stats, "tables_dir": cfg.analysis.tables_dir, "local_paths": paths_here})
        log.info("wrote %s", ", ".join(p.name for p in paths))
    return store.path


def _compute(cfg: AnalyzeConfig, analysis: Any, todo: list[TextItem], store: RunStore) -> dict[str, Any]:
    from scmoe_eval.models.loading import load_model
    from scmoe_eval.models.routing import RoutingPolicy

    log.info("loading %s from %s", cfg.model.name, cfg.model.path)
    loaded = load_model(cfg.model)
    a = cfg.analysis
    policies = [RoutingPolicy.from_config(a.strong), *(RoutingPolicy.from_config(parse_weak(w)) for w in a.weak)]
    for policy in policies:
        loaded.controller.check(policy)
    amateur = None
    if a.amateur:
        from scmoe_eval.decoding.baselines import load_amateur

        log.info("loading the amateur from %s", a.amateur)
        amateur = load_amateur(a.amateur, cfg.model)
    start, tokens = time.perf_counter(), 0
    with tqdm(total=len(todo), unit="item", desc=store.path.name[:40], dynamic_ncols=True) as bar:
        for lo in range(0, len(todo), cfg.run.batch_size):
            items = todo[lo : lo + cfg.run.batch_size]
            enc = encode(loaded.tokenizer, items, a.span)
            logits, routes = multi_routing_forward(loaded, enc, policies, record=analysis.records_routes)
            amateur_logits = None
            if amateur is not None:
                amateur_logits = plain_forward(amateur, enc)
                if amateur_logits.shape[-1] != logits.shape[-1]:
                    raise ConfigError("analysis.amateur", f"vocabulary {amateur_logits.shape[-1]} != the model's "
                                      f"{logits.shape[-1]}; KL needs the same vocabulary")
            store.append(analysis.records(Batch(items, enc, list(a.weak), logits, routes, amateur_logits)))
            tokens += int(enc.scored.sum())
            bar.update(len(items))
    seconds = time.perf_counter() - start
    log.info("%d items, %d scored tokens in %.1f s", len(todo), tokens, seconds)
    return {"scored_tokens": tokens, "seconds": round(seconds, 3), "items_per_s": round(len(todo) / seconds, 3)}
