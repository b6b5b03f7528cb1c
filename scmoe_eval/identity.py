"""What a run evaluates, independent of where it lies: the identity behind a run directory's hash.

The same GSM8K files under `../shared/data/gsm8k`, an absolute path or another cluster mount must
give one run directory (so runs resume across machines), and changed data must give a new one:

- data: a fingerprint of the items actually evaluated (id, prompt, gold after `run.limit`), so the
  paper's files, the pinned Hub dataset and the demo subset agree wherever their content does;
- model: a local checkpoint by a fingerprint of its config, generation config, tokenizer files and
  weight layout (the weight index or each weight file's size, safetensors header and sampled
  blocks); a Hub id by id + revision;
- the local paths themselves are recorded in environment.json (`local_paths`), not hashed.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterable

# Files that define a checkpoint besides its weights; each is hashed whole when present.
MODEL_FILES = (
    "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
    "tokenizer.model", "vocab.json", "merges.txt", "model.safetensors.index.json", "pytorch_model.bin.index.json",
)
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
BLOCK = 1 << 16  # bytes per sampled block of a weight file
BLOCKS_PER_FILE = 16  # evenly spaced over the file: a changed fine-tune differs in them, reading stays ~1 MiB


def _sha() -> Any:
    return hashlib.sha256()


def items_fingerprint(items: Iterable[Any]) -> str:
    """sha256 over the evaluated items' (id, prompt, gold), in order."""
    digest = _sha()
    for item in items:
        row = {"id": item.id, "prompt": item.prompt, "gold": item.gold}
        digest.update(json.dumps(row, sort_keys=True, ensure_ascii=False, default=str).encode("utf-8") + b"\n")
    return "items-sha256:" + digest.hexdigest()[:16]


def _hash_file(digest: Any, path: Path) -> None:
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)


def _hash_weight_file(digest: Any, path: Path) -> None:
    """Size, the safetensors header (names, dtypes, shapes, offsets) and evenly spaced blocks."""
    size = path.stat().st_size
    digest.update(f"{path.name}:{size}\n".encode())
    with open(path, "rb") as fh:
        if path.suffix == ".safetensors" and size >= 8:
            header = int.from_bytes(fh.read(8), "little")
            if 0 < header <= size - 8:
                digest.update(fh.read(header))
        step = max(size // BLOCKS_PER_FILE, 1)
        for offset in [*range(0, size, step)[:BLOCKS_PER_FILE], max(size - BLOCK, 0)]:
            fh.seek(offset)
            digest.update(fh.read(BLOCK))


def checkpoint_fingerprint(directory: str | os.PathLike) -> str:
    """Fingerprint of a local checkpoint directory's content (see the module docstring)."""
    root = Path(directory).expanduser()
    digest = _sha()
    for name in MODEL_FILES:
        path = root / name
        if path.is_file():
            digest.update(f"{name}\n".encode())
            _hash_file(digest, path)
    for path in sorted(p for p in root.iterdir() if p.is_file() and p.suffix in WEIGHT_SUFFIXES):
        _hash_weight_file(digest, path)
    return "ckpt-sha256:" + digest.hexdigest()[:16]


def model_identity(path: str, revision: str | None) -> str:
    """A local directory by content; anything else is a Hub id, named with its revision."""
    local = Path(path).expanduser()
    if local.is_dir():
        return checkpoint_fingerprint(local)
    return f"hub:{path}@{revision or 'default'}"


def run_identity(checked: Any) -> dict[str, str]:
    """The identity block of a checked config (preflight.Checked): data, model, CD's amateur."""
    cfg = checked.cfg
    identity = {"data": items_fingerprint(checked.items), "model": model_identity(cfg.model.path, cfg.model.revision)}
    if cfg.strategy.name == "cd" and cfg.strategy.amateur:
        identity["amateur"] = model_identity(cfg.strategy.amateur, None)
    return identity


def local_paths(cfg: Any, checked: Any) -> dict[str, Any]:
    """Where the data and model lay on this machine (for environment.json; not part of the hash)."""
    paths = {
        "task.data_dir": cfg.task.data_dir, "task.path": cfg.task.path, "task.demo": cfg.task.demo,
        "model.path": cfg.model.path, "model.resolved_path": checked.cfg.model.path,
    }
    if cfg.strategy.amateur:
        paths["strategy.amateur"] = checked.cfg.strategy.amateur
    return {key: str(Path(value).expanduser().resolve()) if isinstance(value, str) and Path(value).expanduser().exists()
            else value for key, value in paths.items()}
