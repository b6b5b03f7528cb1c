"""Metrics against brute-force references: pass@k, maj@k (first k and expected), CIs."""

from __future__ import annotations

import itertools
import random
from math import comb

import pytest

from scmoe_eval.scoring.metrics import (
    bootstrap_ci,
    compute_metrics,
    expected_majority_correct,
    majority_vote,
    pass_at_k,
)
from scmoe_eval.tasks import get_task


def brute_pass_at_k(n: int, c: int, k: int) -> float:
    """Share of k-subsets of n samples (c correct) that contain a correct one."""
    samples = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(samples, k))
    return sum(any(s) for s in subsets) / len(subsets)


def brute_expected_majority(answers, correct, k) -> float:
    subsets = list(itertools.combinations(answers, k))
    return sum(majority_vote(s) in correct for s in subsets) / len(subsets)


@pytest.mark.parametrize("n", [1, 2, 5, 8, 10])
def test_pass_at_k_matches_enumeration(n):
    for c in range(n + 1):
        for k in range(1, n + 1):
            assert pass_at_k(n, c, k) == pytest.approx(brute_pass_at_k(n, c, k), abs=1e-12)


def test_pass_at_k_stable_for_large_n():
    assert pass_at_k(200, 1, 1) == pytest.approx(1 / 200)
    assert pass_at_k(1000, 3, 100) == pytest.approx(1 - comb(997, 100) / comb(1000, 100), rel=1e-9)


def test_majority_vote_tie_rule_and_none():
    assert majority_vote(["b", "a", "a", "b"]) == "b"  # tie: the answer reached first wins
    assert majority_vote([None, None, "a"]) == "a"  # unparseable samples never vote
    assert majority_vote([None, "c", None, "d", "d"]) == "d"
    assert majority_vote([None, None]) is None
    assert majority_vote(["x"]) == "x"


def test_expected_majority_matches_subset_enumeration():
    rng = random.Random(0)
    for _ in range(250):
        n = rng.randint(1, 9)
        pool = ["a", "b", "c", "d", None][: rng.randint(1, 5)]
        answers = [rng.choice(pool) for _ in range(n)]
        correct = {"a"} if rng.random() < 0.8 else {"a", "b"}
        for k in range(1, n + 1):
            got = expected_majority_correct(answers, correct, k)
            assert got == pytest.approx(brute_expected_majority(answers, correct, k), abs=1e-12)


def test_expected_majority_edge_cases():
    assert expected_majority_correct(["a"] * 4, {"a"}, 2) == 1.0
    assert expected_majority_correct(["a", None, None], {"a"}, 2) == pytest.approx(2 / 3)
    assert expected_majority_correct(["b", "a"], {"a"}, 2) == 0.0  # tie, "b" comes first
    assert expected_majority_correct(["a", "b"], set(), 1) == 0.0
    with pytest.raises(ValueError):
        expected_majority_correct(["a"], {"a"}, 2)


def test_bootstrap_ci_seeded_and_sane():
    values = [1.0] * 60 + [0.0] * 40
    lo, hi = bootstrap_ci(values, n_boot=500, seed=3)
    assert (lo, hi) == tuple(bootstrap_ci(values, n_boot=500, seed=3))
    assert lo < 0.6 < hi and 0.45 < lo and hi < 0.75
    assert bootstrap_ci([1.0, 1.0], n_boot=50) == [1.0, 1.0]


def _rec(item: int, sample: int, answer, correct: bool, unparseable: bool = False) -> dict:
    verdict = {"answer": answer, "correct": correct, "unparseable": unparseable,
               "reason": None if correct else "wrong answer"}
    return {"id": f"gsm8k/{item}", "index": item, "sample": sample, "official": verdict,
            "strict": dict(verdict)}


def test_compute_metrics_answer_task():
    # item 0: samples 18, 17, 18 (gold 18); item 1: None, 5, 4, with 4 correct.
    scored = [_rec(0, 2, "18", True), _rec(0, 0, "18", True), _rec(0, 1, "17", False),
              _rec(1, 0, None, False, True), _rec(1, 1, "5", False), _rec(1, 2, "4", True)]
    m = compute_metrics(get_task("gsm8k"), scored, n_boot=200)
    assert (m["task"], m["n_items"], m["n_samples"], m["primary"]) == ("gsm8k", 2, 3, "accuracy")
    for mode in ("official", "strict"):
        part = m[mode]
        assert part["accuracy"] == pytest.approx((2 / 3 + 1 / 3) / 2)
        assert part["n_correct"] == 3 and part["n_unparseable"] == 1
        assert set(part["maj@k"]) == {"1", "3"}  # the standard k <= n_samples, plus n itself
        assert part["maj@k"]["3"] == 0.5  # item 0 votes 18 (right); item 1's 5 and 4 tie, 5 came first
        assert part["maj@k"]["1"] == 0.5  # first samples: 18 right, None wrong
        assert part["maj@k_expected"]["1"] == pytest.approx(part["accuracy"])
        assert part["ci95"][0] <= part["accuracy"] <= part["ci95"][1]
        assert "pass@k" not in part


def test_compute_metrics_maj5_first_and_expected():
    answers = ["7", "8", "8", "7", "7"]  # first 5 -> "7" wins 3:2
    scored = [_rec(0, s, a, a == "7") for s, a in enumerate(answers)]
    part = compute_metrics(get_task("gsm8k"), scored, n_boot=10)["official"]
    assert part["maj@k"] == {"1": 1.0, "5": 1.0}
    assert part["maj@k_expected"]["5"] == 1.0
    assert part["maj@k_expected"]["1"] == pytest.approx(0.6)


def test_numbers_vote_by_value():
    """The paper's extraction yields "1,000" or "1000" for the same number: one vote, not two."""
    answers = ["1,000", "999", "1000.0", "999", "1000"]  # by string "999" would win 2:1:1:1
    scored = [_rec(0, s, a, a != "999") for s, a in enumerate(answers)]
    part = compute_metrics(get_task("gsm8k"), scored, n_boot=10)["official"]
    assert part["maj@k"]["5"] == 1.0 and part["maj@k_expected"]["5"] == 1.0
    yes_no = [_rec(0, s, a, a == "yes") for s, a in enumerate(["yes", "no", "yes", "no", "no"])]
    assert compute_metrics(get_task("strategy_qa"), yes_no, n_boot=10)["official"]["maj@k"]["5"] == 0.0


def test_compute_metrics_code_task_pass_at_k():
    scored = []
    for item, n_ok in enumerate([0, 3, 10, 6]):
        for s in range(10):
            ok = s < n_ok
            verdict = {"answer": "code", "correct": ok, "unparseable": False,
                       "reason": None if ok else "failed"}
            scored.append({"id": f"HumanEval/{item}", "index": item, "sample": s,
                           "official": verdict, "strict": verdict})
    m = compute_metrics(get_task("human_eval"), scored, n_boot=100)
    part = m["official"]
    assert m["primary"] == "pass@1" and part["pass@1"] == pytest.approx(19 / 40)
    assert set(part["pass@k"]) == {"1", "5", "10"}
    want5 = sum(brute_pass_at_k(10, c, 5) for c in [0, 3, 10, 6]) / 4
    assert part["pass@k"]["5"] == pytest.approx(want5)
    assert part["pass@k"]["10"] == 0.75
    assert "maj@k" not in part


def test_compute_metrics_prompts_and_uneven_samples():
    recs = [{"id": "a", "index": 0, "sample": 0, "completion": "x"}]
    assert compute_metrics(get_task("prompts"), recs) == {
        "task": "prompts", "n_items": 1, "n_samples": 1, "primary": "none"}
    uneven = [_rec(0, 0, "1", True), _rec(0, 1, "1", True), _rec(1, 0, "1", True)]
    with pytest.raises(ValueError, match="different sample counts"):
        compute_metrics(get_task("gsm8k"), uneven)
