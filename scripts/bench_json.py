"""What every benchmark JSON records about its run conditions, and how it is written (scripts/ import it
as a sibling module: `python scripts/<bench>.py` puts scripts/ first on sys.path)."""

from __future__ import annotations

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
