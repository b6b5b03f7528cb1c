"""Where benchmark rows come from: a pinned Hub dataset or a local paper-layout JSONL.

Errors name the file and line (or the Hub id) so a broken or truncated data file is
found at load time, before any model is loaded.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

from scmoe_eval.config import TaskConfig


class TaskDataError(ValueError):
    """Benchmark data is missing, malformed or has the wrong number of items."""


@dataclass(frozen=True)
class HubSource:
    """A dataset pinned by id, subset, split and revision; TaskConfig fields override."""

    dataset: str
    subset: str | None
    split: str
    revision: str

    def resolve(self, cfg: TaskConfig) -> HubSource:
        return replace(
            self,
            dataset=cfg.dataset or self.dataset,
            subset=cfg.subset if cfg.subset is not None else self.subset,
            split=cfg.split or self.split,
            revision=cfg.revision or self.revision,
        )

    def describe(self) -> str:
        subset = f"/{self.subset}" if self.subset else ""
        return f"{self.dataset}{subset} split={self.split} revision={self.revision}"


DATA_HINT = (
    "Run `make data` once with internet access (it caches the pinned datasets), or point "
    "task.data_dir=/path/to/<task> at a folder holding the paper's test.jsonl, or use task.demo=true "
    "for the few items shipped with the package."
)


def _offline_env() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on")


def _unreachable(source: HubSource) -> Exception | None:
    """One HEAD request without retries: the transport error when the Hub cannot be reached, else None."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url
    from huggingface_hub.errors import HfHubHTTPError

    url = hf_hub_url(source.dataset, "README.md", repo_type="dataset", revision=source.revision)
    try:
        get_hf_file_metadata(url, timeout=10)
    except HfHubHTTPError:
        return None  # the Hub answered (404, gated, ...): `datasets` says what it means
    except Exception as err:  # noqa: BLE001 - DNS, refused, timeout: all mean "not reachable"
        return err
    return None


def _cache_only(datasets_module: Any) -> None:
    """This process reads the Hub cache only: no retry storm against a Hub it cannot reach."""
    import huggingface_hub.constants

    os.environ["HF_HUB_OFFLINE"] = "1"
    huggingface_hub.constants.HF_HUB_OFFLINE = True
    datasets_module.config.HF_HUB_OFFLINE = True


def load_hub_rows(source: HubSource) -> list[dict]:
    """All rows of the pinned split via `datasets`; offline, the local cache only, failing once and fast."""
    import datasets

    reason = "HF_HUB_OFFLINE is set" if _offline_env() else None
    if reason is None:
        error = _unreachable(source)
        if error is not None:
            reason = f"the Hub is unreachable: {type(error).__name__}: {error}"
            _cache_only(datasets)
    try:
        ds = datasets.load_dataset(source.dataset, source.subset, split=source.split,
                                   revision=source.revision)
    except Exception as err:  # noqa: BLE001 - offline, missing, auth: all need the same advice
        why = f"{reason}, and it is not in the local cache" if reason else f"{type(err).__name__}: {err}"
        raise TaskDataError(f"could not load {source.describe()} from the Hugging Face Hub ({why}). {DATA_HINT}") from None
    return [dict(row) for row in ds]


def read_jsonl(path: Path, required: Sequence[str]) -> list[dict]:
    """Rows of a JSONL file; a malformed line or a missing field names file and line."""
    path = Path(path)
    if not path.is_file():
        raise TaskDataError(f"{path}: file not found")
    rows = []
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                raise TaskDataError(f"{path}:{lineno}: empty line")
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise TaskDataError(f"{path}:{lineno}: malformed JSON ({err.msg})") from None
            if not isinstance(row, dict):
                raise TaskDataError(f"{path}:{lineno}: expected a JSON object")
            missing = [key for key in required if key not in row]
            if missing:
                raise TaskDataError(f"{path}:{lineno}: missing field(s) {missing}")
            rows.append(row)
    return rows


def check_fields(rows: list[dict], required: Sequence[str], where: str) -> None:
    """Hub rows must carry the paper layout's fields; the first bad row is named."""
    for index, row in enumerate(rows):
        missing = [key for key in required if key not in row]
        if missing:
            raise TaskDataError(f"{where}: row {index} is missing field(s) {missing}")


def check_count(rows: list, expected: int, where: str) -> None:
    """A benchmark with the wrong size is an error, never a silently different score."""
    if len(rows) != expected:
        raise TaskDataError(f"{where}: expected {expected} items, found {len(rows)}")
