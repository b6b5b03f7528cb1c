"""Gold answers through the real scorers: 100% where it must be, explained where not."""

from __future__ import annotations

import json
import re

import pytest

from scmoe_eval.config import TaskConfig
from scmoe_eval.scoring.answers import paper_decode_cleanup
from scmoe_eval.scoring.execution import run_programs
from scmoe_eval.scoring.metrics import compute_metrics
from scmoe_eval.tasks import get_task


def paper_cfg(shared_data, name: str) -> TaskConfig:
    return TaskConfig(name=name, data_dir=str(shared_data / name))


def records(items, completion_of) -> list[dict]:
    return [{"id": it.id, "index": it.index, "sample": 0, "seed": 0,
             "completion": completion_of(it), "stop_reason": "stop", "stop": "\n\n"}
            for it in items]


def test_gsm8k_gold_scores_100_in_both_modes(shared_data):
    """Completions in the exemplars' style built from the gold solution and label."""
    task = get_task("gsm8k")
    cfg = paper_cfg(shared_data, "gsm8k")
    items = task.load(cfg)

    def completion(item):
        return f" The answer is {item.gold}."

    m = compute_metrics(task, task.score(items, records(items, completion), cfg), n_boot=10)
    for mode in ("official", "strict"):
        assert (m[mode]["accuracy"], m[mode]["n_correct"], m[mode]["n_unparseable"]) == (1.0, 1319, 0)


def test_gsm8k_gold_with_reasoning_in_front(shared_data):
    """The reference solution's own steps (with numbers) before the answer change nothing."""
    task = get_task("gsm8k")
    items = task.load(paper_cfg(shared_data, "gsm8k"))[:200]
    rows = [json.loads(line) for line in open(shared_data / "gsm8k" / "test.jsonl")][:200]
    steps = {f"gsm8k/{i}": " ".join(r["answer"].split("####")[0].split()) for i, r in enumerate(rows)}
    for item in items:
        text = f" {steps[item.id]} The answer is {item.gold}."
        assert task.official(text, item.gold)["correct"] and task.strict(text, item.gold)["correct"]


def test_strategy_qa_gold_scores_100_in_both_modes(shared_data):
    task = get_task("strategy_qa")
    cfg = paper_cfg(shared_data, "strategy_qa")
    items = task.load(cfg)

    facts = {f"strategy_qa/{r['qid']}": " ".join(r["facts"]) for r in
             map(json.loads, open(shared_data / "strategy_qa" / "test.jsonl"))}

    def completion(item):
        return f" {facts[item.id]} Thus, so the answer is {item.gold}."

    m = compute_metrics(task, task.score(items, records(items, completion), cfg), n_boot=10)
    for mode in ("official", "strict"):
        assert (m[mode]["accuracy"], m[mode]["n_correct"], m[mode]["n_unparseable"]) == (1.0, 2286, 0)
    flipped = [task.official(f" So the answer is {'no' if i.gold == 'yes' else 'yes'}.", i.gold)
               for i in items[:50]]
    assert not any(v["correct"] for v in flipped)


# The paper decodes with clean_up_tokenization_spaces=True, which rewrites code: " ' " -> "'" turns
# `' '.join` into `''.join` (15, 86) and `'I ' for` into `'I'for` (91); " 's" drops one indent space
# before `'six'` (19, IndentationError). These four canonical solutions fail the official path.
HUMAN_EVAL_CLEANUP_FAILURES = {"HumanEval/15", "HumanEval/19", "HumanEval/86", "HumanEval/91"}


def test_human_eval_canonical_solutions(shared_data, monkeypatch):
    monkeypatch.setenv("HF_ALLOW_CODE_EVAL", "1")
    task = get_task("human_eval")
    cfg = TaskConfig(name="human_eval", data_dir=str(shared_data / "human_eval"), timeout=10.0)
    items = task.load(cfg)
    scored = task.score(items, records(items, lambda it: it.meta["canonical_solution"]), cfg)
    m = compute_metrics(task, scored, n_boot=10)
    assert [(r["id"], r["strict"]["reason"]) for r in scored if not r["strict"]["correct"]] == []
    assert {r["id"] for r in scored if not r["official"]["correct"]} == HUMAN_EVAL_CLEANUP_FAILURES
    for item in items:
        code = item.meta["canonical_solution"]
        assert (paper_decode_cleanup(code) != code) or item.id not in HUMAN_EVAL_CLEANUP_FAILURES
    assert (m["official"]["n_correct"], m["strict"]["n_correct"]) == (160, 164)


# MBPP reference solutions (`code`) through the paper's post-processing. Every failure
# is a quirk of that post-processing, grouped by cause; each group's cause is checked
# on the reference code below, so a wrong explanation fails the test too.
MBPP_OFFICIAL_PASS = 399  # of the 499 tasks other than 123 (see MBPP_TIME_DEPENDENT)
MBPP_FAILURES = {
    # "import x" / "from x import y" above the first def is cut away -> NameError.
    "imports_dropped": [
        13, 15, 16, 27, 32, 39, 40, 43, 44, 55, 73, 82, 85, 87, 88, 94, 100, 108, 114, 124,
        157, 163, 173, 178, 180, 182, 186, 198, 208, 209, 210, 214, 218, 220, 232, 237, 244,
        252, 254, 255, 285, 293, 303, 305, 307, 312, 319, 330, 337, 372, 381, 403, 427, 434,
        440, 451, 453, 454, 459, 475, 478, 482, 488, 491, 493, 495, 496, 497],
    # Only the first function is kept (cut at the first unindented line); the tested
    # function comes after a helper -> NameError.
    "later_functions_dropped": [30, 45, 56, 70, 148, 151, 152, 181, 223, 323, 338, 348, 364,
                                466, 485, 486, 501],
    # Both of the above.
    "imports_and_later_functions_dropped": [61, 130, 164, 299, 326],
    # Module-level constants or a class before the first def are cut away (367: the
    # first "def" is Node.__init__, so only that method survives).
    "module_code_before_def_dropped": [18, 122, 342, 367, 396],
    # No unindented line after the first def: the fallback keeps "def " + the text after
    # the *last* "def ", a nested helper, which no longer indents -> IndentationError.
    "last_nested_def_only": [215, 317, 408],
    # The paper's decode clean-up turns the string literal ' ' into '' (HUMAN_EVAL_CLEANUP_FAILURES).
    "decode_cleanup_rewrites_code": [315, 500],
}
# Task 123's reference needs ~6 s of CPU here against the 3 s limit: it times out on a
# slow or loaded machine and may pass on a fast one.
MBPP_TIME_DEPENDENT = 123
_FIRST_FUNCTION = re.compile(r"def.*?\n[^\n\s#]", re.DOTALL)


def _structure(code: str) -> tuple[str, str, bool]:
    """(text before the kept part, text after it, whether the regex matched)."""
    code = code.replace("\r", "").strip()
    match = _FIRST_FUNCTION.search(code)
    if match:
        return code[:match.start()], code[match.end() - 1:], True
    return code[:code.rindex("def ")], "", False


def _has_import(text: str) -> bool:
    return re.search(r"^(import|from)\s", text, re.M) is not None


def test_mbpp_failure_explanations_match_the_code(shared_data):
    by_id = {it.meta["task_id"]: it.meta["code"] for it in
             get_task("mbpp").load(paper_cfg(shared_data, "mbpp"))}
    for group, ids in MBPP_FAILURES.items():
        for task_id in ids:
            before, after, matched = _structure(by_id[task_id])
            other_code = [ln for ln in before.splitlines()
                          if ln.strip() and not re.match(r"(import|from)\s", ln)]
            expect = {
                "imports_dropped": _has_import(before) and not after.strip() and not other_code,
                "later_functions_dropped": after.strip() != "" and not before.strip(),
                "imports_and_later_functions_dropped": _has_import(before) and after.strip() != "",
                "module_code_before_def_dropped": bool(other_code) and "def " not in before,
                "last_nested_def_only": not matched and by_id[task_id].count("def ") > 1,
                "decode_cleanup_rewrites_code": " ' " in by_id[task_id]
                and paper_decode_cleanup(by_id[task_id]) != by_id[task_id],
            }[group]
            assert expect, (group, task_id)


def _run_mbpp_references(shared_data, monkeypatch, build: str) -> dict:
    """task_id -> ExecResult of every reference solution through `build` (official_/strict_program);
    the time-dependent task is checked here and left out of the result."""
    monkeypatch.setenv("HF_ALLOW_CODE_EVAL", "1")
    task = get_task("mbpp")
    items = task.load(paper_cfg(shared_data, "mbpp"))
    programs = [getattr(task, build)(it, it.meta["code"])[1] for it in items]
    outcome = {it.meta["task_id"]: r for it, r in zip(items, run_programs(programs, timeout=3.0, num_workers=4))}
    slow = outcome.pop(MBPP_TIME_DEPENDENT)
    assert slow.passed or slow.status == "timeout"
    return outcome


@pytest.mark.slow
def test_mbpp_reference_solutions_official_path(shared_data, monkeypatch):
    outcome = _run_mbpp_references(shared_data, monkeypatch, "official_program")
    failed = {tid for tid, r in outcome.items() if not r.passed}
    expected = {tid for ids in MBPP_FAILURES.values() for tid in ids}
    assert failed == expected
    assert sum(r.passed for r in outcome.values()) == MBPP_OFFICIAL_PASS
    assert len(outcome) - len(expected) == MBPP_OFFICIAL_PASS
    reasons = {outcome[tid].detail.strip().splitlines()[-1].split(":")[0] for tid in expected}
    assert reasons <= {"NameError", "IndentationError", "SyntaxError", "TypeError", "AssertionError"}


@pytest.mark.slow
def test_mbpp_reference_solutions_strict_path(shared_data, monkeypatch):
    """Strict mode (imports kept, setup code run) passes every reference solution but the slow one."""
    outcome = _run_mbpp_references(shared_data, monkeypatch, "strict_program")
    assert [tid for tid, r in outcome.items() if not r.passed] == [] and len(outcome) == 499
