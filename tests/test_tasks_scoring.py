"""Scorer edge cases, hand-checked against paper.md §6 (official) and the strict rules."""

from __future__ import annotations

import pytest

from scmoe_eval.config import TaskConfig
from scmoe_eval.scoring.answers import math_equal, official_gsm8k_answer, official_yes_no, strip_string
from scmoe_eval.scoring.execution import CodeExecutionNotAllowed
from scmoe_eval.tasks import Item, get_task
from scmoe_eval.tasks.human_eval import paper_human_eval_clean
from scmoe_eval.tasks.mbpp import paper_mbpp_clean

GSM8K = get_task("gsm8k")
SQA = get_task("strategy_qa")


def both(task, completion, gold):
    return task.official(completion, gold), task.strict(completion, gold)


# --- GSM8K ------------------------------------------------------------------------

@pytest.mark.parametrize("completion, gold", [
    (" The answer is 0.5.", "50"),      # model's number x100 (the swapped-argument quirk)
    (" The answer is 5000.", "50"),     # model's number /100
    (" The answer is 10000.5.", "10000"),  # rel_tol 1e-4
])
def test_gsm8k_official_leniency_strict_not(completion, gold):
    official, strict = both(GSM8K, completion, gold)
    assert official["correct"] and not strict["correct"] and not strict["unparseable"]


def test_gsm8k_leniency_is_on_the_model_side():
    """math_equal(gold, answer) scales the answer: gold 5000, answer 50 is accepted
    (50*100); it is gold 50 scaled that would need answer 0.5 -> both are checked here."""
    assert math_equal("5000", "50") and math_equal("50", "0.5")
    assert not math_equal("50", "49")


@pytest.mark.parametrize("completion", [" The answer is 2125.", " The answer is 2,125.",
                                        " The answer is $2,125."])
def test_gsm8k_commas_in_gold(completion):
    official, strict = both(GSM8K, completion, "2,125")
    assert official["correct"] and strict["correct"]


def test_gsm8k_no_answer_phrase_takes_last_number():
    official, strict = both(GSM8K, " She has 5 apples and 7 pears, so 12 in all.", "12")
    assert official == {"answer": "12", "correct": True, "unparseable": False, "reason": None}
    assert strict == {"answer": None, "correct": False, "unparseable": True, "reason": "unparseable"}


def test_gsm8k_non_numeric_tail_uses_its_last_number():
    assert official_gsm8k_answer("The answer is 12 apples, or rather 13 in total.") == "13"
    assert official_gsm8k_answer("so the answer is 7.") == "7"  # "he answer is" matches "the"
    assert official_gsm8k_answer("The answer is: 4") == "4"


def test_gsm8k_extraction_details():
    assert official_gsm8k_answer(" The answer is $18.00.") == "18"
    assert official_gsm8k_answer("The answer is 5.\n\nQuestion: x? The answer is 6.") == "5"
    assert official_gsm8k_answer("no digits here") == ""
    assert strip_string("\\frac12") == "\\frac{1}{2}" and strip_string("3/4") == "\\frac{3}{4}"
    assert strip_string("x = 5") == "5" and strip_string(".5") == "0.5"


def test_gsm8k_unparseable_in_both_modes():
    official, strict = both(GSM8K, " I do not know.", "3")
    assert official == {"answer": "", "correct": False, "unparseable": True, "reason": "unparseable"}
    assert strict["unparseable"] and strict["reason"] == "unparseable"


def test_gsm8k_wrong_answer_reason():
    official, strict = both(GSM8K, " The answer is 4.", "3")
    assert official["reason"] == strict["reason"] == "wrong answer"
    assert strict["answer"] == "4" and not strict["unparseable"]


def test_gsm8k_strict_normalisation():
    assert GSM8K.strict(" The answer is 18.00.", "18")["correct"]
    assert GSM8K.strict(" The answer is -3.", "-3")["correct"]
    assert GSM8K.strict(" the answer is 3.", "3")["unparseable"]  # case-sensitive, as lm-eval


def test_gsm8k_sympy_fallback():
    """Non-numeric answers reach the sympy comparison (paper: symbolic_equal)."""
    assert math_equal("6", "2*3")
    assert not math_equal("6", "2*4")


# --- StrategyQA -------------------------------------------------------------------

def test_strategy_qa_hint_split_follows_list_order():
    """Both "answer is" and "answer to" occur; the paper splits on the one listed later
    ("answer to"), whose tail holds no yes/no, so the official answer defaults to no."""
    text = " So the answer is yes, which is the answer to the question."
    assert official_yes_no(text) == ("no", False)
    official, strict = both(SQA, text, "yes")
    assert not official["correct"] and official["unparseable"]
    assert strict["answer"] == "yes" and strict["correct"]


def test_strategy_qa_unparseable_counts_as_no():
    official, strict = both(SQA, " I am not sure.", "no")
    assert official == {"answer": "no", "correct": True, "unparseable": True, "reason": None}
    assert strict == {"answer": None, "correct": False, "unparseable": True, "reason": "unparseable"}
    assert not SQA.official(" I am not sure.", "yes")["correct"]


def test_strategy_qa_extraction_details():
    assert official_yes_no("So the answer is yes no.") == ("yes", True)  # non-overlapping matches
    assert official_yes_no("Thus no.\n\nQuestion: yes?") == ("no", True)  # cut at blank line
    assert official_yes_no("Yes is correct.") == ("yes", True)  # end hint
    assert official_yes_no("So the answer is Yes.") == ("yes", True)  # lower-cased
    assert SQA.strict(" So the answer is: No.", "no")["correct"]
    assert SQA.strict(" Yes.", "yes")["unparseable"]


# --- code clean-up (no execution) -------------------------------------------------

def test_mbpp_clean_drops_imports_before_def():
    raw = "import math\ndef f(x):\n    return math.sqrt(x)\n[DONE]"
    assert paper_mbpp_clean(raw) == "def f(x):\n    return math.sqrt(x)\n"


def test_mbpp_clean_keeps_first_function_only():
    raw = "def g():\n    return 1\ndef f():\n    return g()\nprint(f())"
    assert paper_mbpp_clean(raw) == "def g():\n    return 1\n"


def test_mbpp_clean_matches_def_inside_words():
    raw = "from collections import defaultdict\ndef f():\n    return defaultdict(int)"
    assert paper_mbpp_clean(raw) == "defaultdict\n"


def test_mbpp_clean_fence_and_main_guard():
    assert paper_mbpp_clean("```python\ndef f():\n    return 1\n```") == "def f():\n    return 1\n"
    assert paper_mbpp_clean("  def f():\n    return 1\n\nif __name__ == '__main__':\n    f()") == (
        "def f():\n    return 1\n\n")


def test_human_eval_clean():
    assert paper_human_eval_clean("    return x\n\ndef helper():\n    pass") == "return x"
    assert paper_human_eval_clean("    return 1\n\nif __name__ == '__main__':\n    pass") == "return 1"
    assert paper_human_eval_clean("    return 1\n# Example usage\nprint(f())") == "return 1"
    assert paper_human_eval_clean("```python\n    return 2\n```\ntext") == "return 2"


def _item(task_id, prompt, test, entry):
    return Item(id=task_id, index=0, prompt=prompt, gold={"test": test, "entry_point": entry})


def test_human_eval_program_assembly():
    task = get_task("human_eval")
    item = _item("HumanEval/x", "def f():\n", "def check(c):\n    assert c() == 1\n", "f")
    code, prog = task.official_program(item, "  return 1\n")
    assert code == "def f():\n    return 1\n"
    assert prog == code + "\n\ndef check(c):\n    assert c() == 1\n\ncheck(f)"
    code, prog = task.strict_program(item, "    return 1")
    assert prog == "def f():\n    return 1\ndef check(c):\n    assert c() == 1\n\ncheck(f)"


def test_mbpp_program_assembly():
    task = get_task("mbpp")
    item = Item(id="mbpp/1", index=0, prompt="",
                gold={"test_list": ["assert f() == 1", "assert f() != 2"], "test_setup_code": ""})
    raw = "import os\ndef f():\n    return 1\n[DONE] junk"
    assert task.official_program(item, raw)[1] == ("def f():\n    return 1\n\n"
                                                   "assert f() == 1\nassert f() != 2")
    assert task.strict_program(item, raw)[1] == ("import os\ndef f():\n    return 1\n\n\n"
                                                 "assert f() == 1\nassert f() != 2")


# --- code scoring end to end (sandbox) --------------------------------------------

def test_code_scoring_needs_consent(monkeypatch):
    monkeypatch.delenv("HF_ALLOW_CODE_EVAL", raising=False)
    item = _item("HumanEval/x", "def f():\n", "def check(c):\n    pass\n", "f")
    with pytest.raises(CodeExecutionNotAllowed):
        get_task("human_eval").score([item], [{"id": item.id, "sample": 0, "completion": ""}],
                                     TaskConfig())


def test_code_scoring_both_modes(shared_data):
    cfg = TaskConfig(name="mbpp", data_dir=str(shared_data / "mbpp"), allow_code_execution=True,
                     num_workers=2)
    task = get_task("mbpp")
    items = {item.id: item for item in task.load(cfg)}
    counter = items["mbpp/13"]  # reference solution starts "from collections import Counter"
    records = [{"id": "mbpp/13", "index": 2, "sample": 0, "completion": counter.meta["code"]},
               {"id": "mbpp/13", "index": 2, "sample": 1, "completion": "def count_common(w):\n"
                                                                        "    return []"}]
    scored = task.score(list(items.values()), records, cfg)
    assert [s["sample"] for s in scored] == [0, 1] and scored[0]["completion"] == records[0]["completion"]
    good, bad = scored
    assert not good["official"]["correct"] and "NameError" in good["official"]["reason"]
    assert good["strict"]["correct"] and good["strict"]["reason"] is None
    assert not bad["official"]["correct"] and not bad["strict"]["correct"]
    assert bad["strict"]["reason"].startswith("failed")


def test_paper_decode_cleanup_is_transformers_clean_up_tokenization():
    """The paper decoded with clean_up_tokenization_spaces=True; ours must equal transformers' own rewrite."""
    import random

    from transformers import PreTrainedTokenizerBase

    from scmoe_eval.scoring.answers import paper_decode_cleanup

    pieces = [" .", " ?", " !", " ,", " ' ", " n't", " 'm", " 's", " 've", " 're", "a", " ", "'", "x = ' '",
              "\n", "def f():", " != ", "I 'm", "don 't"]
    rng = random.Random(0)
    for _ in range(500):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 12)))
        assert paper_decode_cleanup(text) == PreTrainedTokenizerBase.clean_up_tokenization(None, text), text
    assert paper_decode_cleanup("return ' '.join(x) if a != b else 'I 's'") == "return''.join(x) if a!= b else 'I's'"
