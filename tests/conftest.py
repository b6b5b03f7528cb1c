"""Shared test fixtures: paths to ../shared data and tiny MoE checkpoints built offline."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SCMOE_SHARED_DIR", REPO.parent / "shared"))
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    path = SHARED / "data"
    if not path.is_dir():
        pytest.fail(f"benchmark data not found at {path}; set SCMOE_SHARED_DIR")
    return path


@pytest.fixture(scope="session")
def tiny_mixtral_path() -> Path:
    """Random-weight Mixtral (hidden 64, 4 layers, 8 experts, top-2) + tokenizer, cached across runs."""
    from scmoe_eval.models.fixtures import fixture_path

    return fixture_path("mixtral")


@pytest.fixture(scope="session")
def tiny_mixtral(tiny_mixtral_path: Path):
    """The tiny Mixtral as a LoadedModel: float32, CPU, eval mode, routing hooks installed (stock until set)."""
    from scmoe_eval.config import ModelConfig
    from scmoe_eval.models.loading import load_model

    return load_model(ModelConfig(name="tiny-mixtral", path=str(tiny_mixtral_path), dtype="float32", device="cpu"))


@pytest.fixture(scope="module")
def one_thread():
    """Bit-exactness tests compare GEMMs: pin torch to one intra-op thread for the module."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
