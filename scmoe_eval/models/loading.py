"""Load an MoE checkpoint (Hub id or local directory) with its tokenizer, family adapter and router hooks."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import transformers
from huggingface_hub.errors import HFValidationError, OfflineModeIsEnabled
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from scmoe_eval.models.families import FAMILIES, FamilyAdapter, detect_family
from scmoe_eval.models.routing import RoutingController

if TYPE_CHECKING:
    from scmoe_eval.config import ModelConfig

DTYPES: dict[str, Any] = {
    "auto": "auto",
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}
OVERRIDE_HINT = (
    "download the checkpoint elsewhere and point to it with the override `model.path=/path/to/checkpoint` "
    "(or `make ... MODEL=/path/to/checkpoint`)"
)


class ModelLoadError(OSError):
    """The checkpoint could not be resolved (offline Hub, missing repo or directory)."""


@dataclass
class LoadedModel:
    """Everything a decoder needs: eval-mode model, left-padding tokenizer, adapter and routing hooks."""

    model: nn.Module
    tokenizer: PreTrainedTokenizerBase
    adapter: FamilyAdapter
    controller: RoutingController
    device: torch.device  # where inputs go (the embedding's device under device_map="auto")


def resolve_device(device: str) -> torch.device:
    """`auto` -> cuda when present, else cpu; explicit cuda requests fail clearly without CUDA."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"model.device={device!r} but CUDA is not available; use model.device=cpu")
    return resolved


def _is_hub_failure(exc: BaseException) -> bool:
    """Errors that mean "the Hub (or the named repo) is unreachable", as raised through transformers."""
    hub_types = (OfflineModeIsEnabled, ConnectionError, TimeoutError, HFValidationError)
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, hub_types) or type(seen).__name__ in {
            "LocalEntryNotFoundError",
            "RepositoryNotFoundError",
            "GatedRepoError",
            "RevisionNotFoundError",
        }:
            return True
        seen = seen.__cause__ or seen.__context__
    return isinstance(exc, OSError) and not isinstance(exc, (FileNotFoundError, PermissionError))


def _load_config(cfg: "ModelConfig", common: dict[str, Any]) -> Any:
    """The checkpoint's config, with Hub failures turned into a message naming the override."""
    path = cfg.path
    if Path(path).expanduser().exists():
        return AutoConfig.from_pretrained(Path(path).expanduser(), **common)
    if path.startswith(("/", "./", "../", "~")):
        raise ModelLoadError(f"model.path={path!r} does not exist; {OVERRIDE_HINT}")
    try:
        return AutoConfig.from_pretrained(path, **common)
    except Exception as exc:  # noqa: BLE001 - re-raised with context below
        if not _is_hub_failure(exc):
            raise
        offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on")
        why = "HF_HUB_OFFLINE is set" if offline else f"{type(exc).__name__}: {exc}"
        raise ModelLoadError(
            f"cannot load {path!r} from the Hugging Face Hub ({why}); {OVERRIDE_HINT}"
        ) from exc


def _placement(cfg: "ModelConfig") -> tuple[dict[str, Any], torch.device | None]:
    """from_pretrained placement kwargs; device_map="auto" only when CUDA is present."""
    if cfg.device_map and torch.cuda.is_available() and cfg.device in ("auto", "cuda"):
        return {"device_map": cfg.device_map}, None
    device = resolve_device(cfg.device)
    return ({"device_map": str(device)} if device.type != "cpu" else {}), device


def load_tokenizer(path: str | Path, common: dict[str, Any]) -> PreTrainedTokenizerBase:
    """Tokenizer with left padding; eos doubles as pad when the checkpoint defines none."""
    tokenizer = AutoTokenizer.from_pretrained(path, **common)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(cfg: "ModelConfig") -> LoadedModel:
    """Model + tokenizer + family adapter + routing controller from a `ModelConfig`."""
    if cfg.dtype not in DTYPES:
        raise ValueError(f"model.dtype={cfg.dtype!r} is unknown; valid: {', '.join(DTYPES)}")
    common: dict[str, Any] = {
        "revision": cfg.revision,
        "trust_remote_code": cfg.trust_remote_code,
        "local_files_only": cfg.local_files_only,
    }
    path = str(Path(cfg.path).expanduser()) if Path(cfg.path).expanduser().exists() else cfg.path
    config = _load_config(cfg, common)
    adapter = FAMILIES.get(cfg.family)() if cfg.family else detect_family(config)
    placement, device = _placement(cfg)
    extra = {
        key: value
        for key, value in (
            ("attn_implementation", cfg.attn_implementation),
            ("experts_implementation", cfg.experts_implementation),
        )
        if value is not None
    }
    try:
        model = AutoModelForCausalLM.from_pretrained(
            path, config=config, dtype=DTYPES[cfg.dtype], **placement, **extra, **common
        )
    except ImportError as exc:
        if not cfg.trust_remote_code:
            raise
        raise ModelLoadError(
            f"the remote modeling code of {cfg.path!r} does not import under transformers {transformers.__version__} "
            f"({exc}); it was written for transformers 4.x (DeepSeekMoE-16B's imports "
            "transformers.modeling_attn_mask_utils, removed in 5.0). For DeepSeekMoE convert the checkpoint to "
            "native Qwen2-MoE: python -m scmoe_eval.models.convert_deepseek_moe SRC DST, then model.path=DST "
            "(docs/models.md)."
        ) from exc
    model.eval()
    tokenizer = load_tokenizer(path, common)
    controller = RoutingController(model, adapter)
    input_device = device if device is not None else model.get_input_embeddings().weight.device
    return LoadedModel(
        model=model, tokenizer=tokenizer, adapter=adapter, controller=controller, device=input_device
    )
