#!/usr/bin/env bash
# One prepared GPU session for the decode benchmark (about 8-9 minutes on one H200, model build included):
#   1. the engine's own decode-kernel choice, batch 1 and 8   -> $OUT/h200.json
#   2. every method with grouped_mm forced, batch 1           -> $OUT/h200_decode_grouped_mm.json
#   3. every method with eager experts forced, batch 1        -> $OUT/h200_decode_eager.json
# Why 2 and 3: at batch 1 batched_mm copies one expert per (row, slot), so batched SCMoE moves 4 expert
# copies per layer against greedy's 2; grouped_mm and eager read each distinct expert once (<= 3).
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
python3 scripts/bench_decode.py --device cuda --batch 1 8 --out "$OUT/h200.json"
python3 scripts/bench_decode.py --device cuda --batch 1 --decode-experts grouped_mm --out "$OUT/h200_decode_grouped_mm.json"
python3 scripts/bench_decode.py --device cuda --batch 1 --decode-experts eager --out "$OUT/h200_decode_eager.json"
