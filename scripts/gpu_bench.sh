#!/usr/bin/env bash
# One prepared GPU session for the decode benchmark (one H200, Mixtral-8x7B shape, random bf16, built on
# the GPU). Parts, in order of value (each a separate bench_decode.py run; pass the ones to run, default all):
#   compiled  greedy and batched SCMoE, eager vs compiled (DecodeEngine(compile=True): static cache +
#             torch.compile mode reduce-overhead = CUDA graphs), batch 1 and 8, with the traffic count
#             -> $OUT/h200_compiled.json. The warm-up run of each compiled method compiles it (minutes).
#             The compiled decode becomes the GPU default only if this measures it faster.
#   compiled_grouped  the compiled methods with the decode experts forced to grouped_mm (zero-size groups
#             read no weights, so SCMoE reads the union of its rows' experts; batched_mm, the default for
#             few slots, gathers one expert copy per (row, slot): 4 at batch-1 SCMoE against greedy's 2)
#             -> $OUT/h200_compiled_grouped_mm.json. Not in the default parts: run it if time remains.
#   eager     every eager method with the engine's own decode-kernel choice, batch 1 and 8, with the
#             traffic count -> $OUT/h200.json
#   kernels   greedy vs batched SCMoE at batch 1 with the decode experts forced to grouped_mm, eager,
#             dense_hit -> $OUT/h200_b1_<impl>.json (batched_mm copies one expert per (row, slot))
# At the end every JSON's SCMoE/greedy ratio is printed with the traffic floor and measured/floor
# (targets, issue 9: batch 1 <= 1.25, batch 8 <= 1.10; floor ~1.20 on real Mixtral routing).
# The device image may carry an older transformers: put the pinned wheel in .whl/ first
# (pip download --no-deps -d .whl transformers==5.24.0) and it is installed into /tmp/site here.
#   scripts/gpu_bench.sh                 # all parts (about 12 minutes: run parts separately on a 10-minute limit)
#   scripts/gpu_bench.sh compiled        # the compiled-vs-eager part only
set -euo pipefail
OUT=${OUT:-results/bench}
PARTS=${*:-compiled eager kernels}
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
else
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__, torch.cuda.get_device_name())"
for part in $PARTS; do
  case "$part" in
    compiled) python3 scripts/bench_decode.py --device cuda --batch 1 8 --traffic --rounds 5 \
                --methods greedy scmoe_batched greedy_compiled scmoe_compiled --out "$OUT/h200_compiled.json" ;;
    compiled_grouped) python3 scripts/bench_decode.py --device cuda --batch 1 8 --traffic --rounds 5 \
                --methods greedy_compiled scmoe_compiled --decode-experts grouped_mm --out "$OUT/h200_compiled_grouped_mm.json" ;;
    eager) python3 scripts/bench_decode.py --device cuda --batch 1 8 --traffic --out "$OUT/h200.json" ;;
    kernels) for impl in grouped_mm eager dense_hit; do
               python3 scripts/bench_decode.py --device cuda --batch 1 --traffic --methods greedy scmoe_batched \
                 --decode-experts "$impl" --out "$OUT/h200_b1_$impl.json"
             done ;;
    *) echo "unknown part $part (compiled | compiled_grouped | eager | kernels)" >&2; exit 2 ;;
  esac
done
python3 - "$OUT" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
nan = float("nan")
for path in sorted(out.glob("h200*.json")):
    for key, s in json.loads(path.read_text())["summary"].items():
        line = (f"{path.name:24} {key:28} SCMoE/greedy {s.get('scmoe_batched_over_greedy', nan):.3f}"
                f"  floor {s.get('floor_ratio', nan):.3f}  measured/floor {s.get('measured_over_floor', nan):.3f}")
        if "scmoe_compiled_over_greedy_compiled" in s:
            line += (f" | compiled: SCMoE/greedy {s['scmoe_compiled_over_greedy_compiled']:.3f}"
                     f"  measured/floor {s.get('compiled_measured_over_floor', nan):.3f}"
                     f"  greedy compiled/eager {s.get('greedy_compiled_over_eager', nan):.3f}"
                     f"  SCMoE compiled/eager {s.get('scmoe_compiled_over_eager', nan):.3f}")
        print(line + "  (targets: B1 <= 1.25, B8 <= 1.10)")
PY
