"""Census of the installed transformers' MoE families: write docs/families.md, optionally run the checks.

    python scripts/census_families.py            # regenerate docs/families.md from the catalog + transformers
    python scripts/census_families.py --check    # also run the equivalence core on every supported family
    python scripts/census_families.py --check-compiled --json results/bench/census_compiled.json
                                                 # compiled decode vs eager on every supported family (~10 min)

Exits 1 when a family is missing from scmoe_eval/models/catalog.py (or gone from transformers), or,
with --check / --check-compiled, when a supported family fails its checks (a family the engine refuses to
compile, naming run.compile, is reported as refused, and graph breaks in a family's own code as notes, not
failures); --json writes per-family results and times.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from scmoe_eval.models.census import census, check_compiled, check_family, render  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "families.md")
    parser.add_argument("--check", action="store_true", help="run the equivalence core on every supported family")
    parser.add_argument("--check-compiled", action="store_true",
                        help="run the compiled decode against the eager one on every supported family")
    parser.add_argument("--json", type=Path, default=None, help="write per-family check results and seconds here")
    args = parser.parse_args(argv)
    rows = census()
    args.out.write_text(render(rows))
    bad = [r for r in rows if r.status in ("unknown", "missing")]
    supported = [r for r in rows if r.status == "supported"]
    print(f"{len(supported)} of {len([r for r in rows if r.status != 'missing'])} families supported -> {args.out}")
    for r in bad:
        print(f"  {r.module}: {r.status}: {r.reason}")
    results = {}
    check = check_family if args.check else check_compiled if args.check_compiled else None
    if check is not None:
        import torch

        torch.set_num_threads(1)
        for r in supported:
            start = time.perf_counter()
            try:
                failures = check(r.module)
            except Exception as err:  # one family's crash is its failure, not the end of the census
                failures = [f"error: {type(err).__name__}: {str(err)[:300]}"]
            results[r.module] = {"failures": failures, "seconds": round(time.perf_counter() - start, 2)}
            real = [f for f in failures if not f.startswith(("refused:", "note:"))]
            verdict = "FAIL" if real else "REFUSED" if failures and failures[0].startswith("refused:") else "ok  "
            print(f"  {verdict} {r.module} {results[r.module]['seconds']}s {failures or ''}", flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"loadavg": os.getloadavg(), "families": results}, indent=1))
    failed = [v for v in results.values() if any(not f.startswith(("refused:", "note:")) for f in v["failures"])]
    return 1 if bad or failed else 0


if __name__ == "__main__":
    sys.exit(main())
