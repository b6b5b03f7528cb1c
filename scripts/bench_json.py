"""What every benchmark JSON records about its run conditions, and how it is written (scripts/ import it
as a sibling module: `python scripts/<bench>.py` puts scripts/ first on sys.path)."""

from __future__ import annotations

import argparse
import json
import os
import platform
from pathlib import Path
from typing import Any

import torch
import transformers


def conditions(load_start: tuple[float, float, float]) -> dict[str, Any]:
    """Machine, library versions and the load average before and after: timings on a shared machine
    mean little without them."""
    return dict(device=platform.processor() or platform.machine(), threads=torch.get_num_threads(),
                torch=torch.__version__, transformers=transformers.__version__,
                loadavg_start=load_start, loadavg_end=os.getloadavg())


def write_report(out: Path, report: dict[str, Any]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")


def cpu_args(parser: argparse.ArgumentParser, out: str) -> None:
    """--threads (1: the dev machine is shared) and --out (default `out`), common to the CPU benches."""
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path(out))


def begin(args: argparse.Namespace) -> tuple[float, float, float]:
    """Pin torch to --threads; the load average at the start, for `conditions`."""
    torch.set_num_threads(args.threads)
    return os.getloadavg()


def fixture_engine(size: str) -> Any:
    """A DecodeEngine over the cached Mixtral fixture of `size`, float32 on CPU."""
    from scmoe_eval.config import ModelConfig
    from scmoe_eval.decoding.engine import DecodeEngine
    from scmoe_eval.models.fixtures import fixture_path
    from scmoe_eval.models.loading import load_model

    return DecodeEngine(load_model(ModelConfig(path=str(fixture_path("mixtral", size)), dtype="float32", device="cpu")))
