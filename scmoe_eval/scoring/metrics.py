"""Task metrics from scored records: accuracy / pass@k, majority vote, bootstrap CIs.

Every value is a fraction in [0, 1]. Both scoring modes ("official", the paper's
scorers; "strict", lm-eval style) get the same set of metrics side by side.
"""

from __future__ import annotations

from bisect import bisect_right
from collections import defaultdict
from decimal import Decimal, InvalidOperation
from math import comb
from typing import TYPE_CHECKING, Hashable, Sequence

import numpy as np

if TYPE_CHECKING:
    from scmoe_eval.tasks import Task

MODES = ("official", "strict")
PASS_KS = (1, 5, 10, 20, 50, 100)
MAJ_KS = (1, 5, 10, 15, 20)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k, 1 - C(n-c, k) / C(n, k), as a stable running product."""
    if n - c < k:
        return 1.0
    return 1.0 - float(np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def majority_vote(answers: Sequence[Hashable | None]) -> Hashable | None:
    """Most frequent non-None answer; ties go to the answer reached first.

    None (unparseable) never votes; the result is None only if every answer is None.
    """
    counts: dict[Hashable, int] = {}
    for answer in answers:
        if answer is not None:
            counts[answer] = counts.get(answer, 0) + 1
    if not counts:
        return None
    best = max(counts.values())
    return next(a for a, c in counts.items() if c == best)  # dicts keep first-seen order


def expected_majority_correct(answers: Sequence[Hashable | None], correct: set[Hashable],
                              k: int) -> float:
    """Exact mean, over all C(n, k) subsets of the samples, of "the vote is correct".

    Combinatorial, no enumeration: for each correct answer a, its count t in the
    subset and its first chosen sample p, the other answers must either appear fewer
    than t times or exactly t times all after p (the first-reached tie rule). Counting
    those choices is a product of per-answer generating polynomials; the i-th row of
    each array below is the case "a's first chosen sample is its i-th occurrence".
    """
    n = len(answers)
    if not 1 <= k <= n:
        raise ValueError(f"k={k} must lie in 1..{n}")
    positions: dict[Hashable, list[int]] = defaultdict(list)
    for pos, answer in enumerate(answers):
        if answer is not None:
            positions[answer].append(pos)
    n_none = n - sum(len(p) for p in positions.values())
    total = 0.0
    for winner in correct & positions.keys():
        own = positions[winner]
        others = [p for a, p in positions.items() if a != winner]
        for t in range(1, min(k, len(own)) + 1):
            deg = k - t  # samples left for the other answers and the unparseable ones
            rows = len(own) - t + 1  # first chosen occurrence i with t-1 later ones left
            ways_own = np.array([comb(len(own) - 1 - i, t - 1) for i in range(rows)], float)
            poly = np.tile([float(comb(n_none, y)) for y in range(deg + 1)], (rows, 1))
            for pos in others:
                below = np.array([comb(len(pos), y) if y < t else 0 for y in range(deg + 1)], float)
                factor = np.tile(below, (rows, 1))  # (rows, deg+1)
                if t <= deg:
                    later = [len(pos) - bisect_right(pos, own[i]) for i in range(rows)]
                    factor[:, t] = [comb(m, t) for m in later]
                poly = _multiply_rows(poly, factor)
            total += float(ways_own @ poly[:, deg])
    return total / comb(n, k)


def _multiply_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise polynomial product truncated to the input degree. a, b: (rows, deg+1)."""
    out = np.zeros_like(a)
    for e in range(a.shape[1]):
        out[:, e:] += a[:, : a.shape[1] - e] * b[:, e : e + 1]
    return out


def bootstrap_ci(values: Sequence[float], *, n_boot: int = 1000, seed: int = 0) -> list[float]:
    """Percentile 95% interval of the mean, resampling items with a seeded generator."""
    data = np.asarray(values, dtype=float)
    if data.size == 0:
        return [float("nan"), float("nan")]
    rng = np.random.default_rng(seed)
    means = data[rng.integers(0, data.size, size=(n_boot, data.size))].mean(axis=1)
    return [float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))]


def group_samples(scored: list[dict]) -> dict[str, list[dict]]:
    """Records per item id, each list ordered by sample number; all items equally sized."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for rec in scored:
        groups[rec["id"]].append(rec)
    for recs in groups.values():
        recs.sort(key=lambda r: r["sample"])
    sizes = {len(r) for r in groups.values()}
    if len(sizes) > 1:
        raise ValueError(f"items have different sample counts {sorted(sizes)}; "
                         "finish or trim the run before computing metrics")
    return dict(groups)


def _ks(standard: Sequence[int], n_samples: int) -> list[int]:
    """The standard k's up to n, plus n itself (a 3-sample run reports maj@3 / pass@3)."""
    return sorted({k for k in standard if k <= n_samples} | {n_samples})


def _vote_key(verdict: dict) -> Hashable | None:
    """The extracted answer a sample votes for; unparseable samples do not vote. Numbers vote by
    value, so "1,000", "1000" and "1000.0" (which the paper's extraction can all produce) are one vote."""
    answer = verdict["answer"]
    if verdict["unparseable"] and answer in (None, ""):
        return None
    if isinstance(answer, str):
        try:
            return str(Decimal(answer.replace(",", "")).normalize())
        except InvalidOperation:
            pass
    return answer


def mode_metrics(task_is_code: bool, primary: str, groups: list[list[dict]], mode: str,
                 n_samples: int, n_boot: int, seed: int) -> dict:
    """All metrics of one scoring mode."""
    verdicts = [[rec[mode] for rec in recs] for recs in groups]
    per_item = [sum(v["correct"] for v in vs) / len(vs) for vs in verdicts]
    out: dict = {
        primary: float(np.mean(per_item)) if per_item else float("nan"),
        "n_correct": sum(v["correct"] for vs in verdicts for v in vs),
        "n_unparseable": sum(bool(v.get("unparseable")) for vs in verdicts for v in vs),
        "ci95": bootstrap_ci(per_item, n_boot=n_boot, seed=seed),
    }
    if task_is_code:
        if n_samples > 1:
            out["pass@k"] = {
                str(k): float(np.mean([pass_at_k(len(vs), sum(v["correct"] for v in vs), k)
                                       for vs in verdicts]))
                for k in _ks(PASS_KS, n_samples)}
        return out
    ks = _ks(MAJ_KS, n_samples)
    first, expected = {}, {}
    for k in ks:
        hits, means = [], []
        for vs in verdicts:
            keys = [_vote_key(v) for v in vs]
            right = {key for key, v in zip(keys, vs) if key is not None and v["correct"]}
            hits.append(majority_vote(keys[:k]) in right)
            means.append(expected_majority_correct(keys, right, k))
        first[str(k)], expected[str(k)] = float(np.mean(hits)), float(np.mean(means))
    out["maj@k"], out["maj@k_expected"] = first, expected
    return out


def compute_metrics(task: Task, scored: list[dict], *, n_boot: int = 1000, seed: int = 0) -> dict:
    """The metrics dict of a scored run (contract in docs/tasks.md)."""
    groups = group_samples(scored)
    n_samples = len(next(iter(groups.values()))) if groups else 0
    out = {"task": task.name, "n_items": len(groups), "n_samples": n_samples,
           "primary": task.primary_metric}
    if task.primary_metric == "none":
        return out
    for mode in MODES:
        out[mode] = mode_metrics(task.is_code, task.primary_metric, list(groups.values()),
                                 mode, n_samples, n_boot, seed)
    return out
