#!/usr/bin/env bash
# One prepared GPU session for the decode benchmark (about 8 minutes on one H200, model builds included):
#   1. every method with the engine's own decode-kernel choice, batch 1 and 8, with the traffic count
#      (experts touched, bytes per step: floor ratio and measured/floor, printed at the end) -> $OUT/h200.json
#   2-4. greedy vs batched SCMoE at batch 1 with the decode experts forced to
#        grouped_mm, eager and dense_hit -> $OUT/h200_b1_<impl>.json (h200_decode_*.json hold older B1+B8 runs)
# Why 2-4: at batch 1 `batched_mm` copies one expert per (row, slot), so batched SCMoE moves 4 expert
# copies per layer against greedy's 2; the other three read each distinct expert once (<= 3 here).
# If one brings scmoe_batched_over_greedy under 1.15, DecodeEngine._decode_kernels should pick it
# for batch-1 SCMoE (docs/decode-cost.md).
# The device image may carry an older transformers: put the pinned wheel in .whl/ first
# (pip download --no-deps -d .whl transformers==5.24.0) and it is installed into /tmp/site here.
set -euo pipefail
OUT=${OUT:-results/bench}
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
else
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__, torch.cuda.get_device_name())"
python3 scripts/bench_decode.py --device cuda --batch 1 8 --traffic --out "$OUT/h200.json"
for impl in grouped_mm eager dense_hit; do
  python3 scripts/bench_decode.py --device cuda --batch 1 --traffic --methods greedy scmoe_batched \
    --decode-experts "$impl" --out "$OUT/h200_b1_$impl.json"
done
python3 - "$OUT" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
for name in ["h200.json"] + sorted(p.name for p in out.glob("h200_b1_*.json")):
    for key, s in json.loads((out / name).read_text())["summary"].items():
        print(f"{name:24} {key:28} SCMoE/greedy {s.get('scmoe_batched_over_greedy', float('nan')):.3f}"
              f"  floor {s.get('floor_ratio', float('nan')):.3f}  measured/floor {s.get('measured_over_floor', float('nan')):.3f}"
              f"  (targets: B1 <= 1.25, B8 <= 1.10)")
PY
