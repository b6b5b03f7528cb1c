"""Stop strings are found on decoded text, however the tokens split them."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoTokenizer

from scmoe_eval.decoding.stopping import StopChecker, find_stop

# Ids in the tiny fixture tokenizer (asserted below, so a changed fixture fails loudly).
NL, NL2, NL2_INDENT = 201, 335, 435  # "\n", "\n\n", "\n\n   "


@pytest.fixture(scope="module")
def tok(tiny_mixtral_path: Path):
    tokenizer = AutoTokenizer.from_pretrained(tiny_mixtral_path)
    assert [tokenizer.decode([i]) for i in (NL, NL2, NL2_INDENT)] == ["\n", "\n\n", "\n\n   "]
    return tokenizer


def words(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


def test_find_stop_earliest_then_longest() -> None:
    assert find_stop("abc\n\ndef", ["def", "\n\n"]) == (3, "\n\n")
    assert find_stop("x\n\ny", ["\n", "\n\n"]) == (1, "\n\n")
    assert find_stop("nothing here", ["\n\n", "[DONE]"]) is None
    assert find_stop("abc", []) is None


@pytest.mark.parametrize(
    "tail",
    [[NL, NL], [NL2], [NL2_INDENT]],
    ids=["split-across-tokens", "single-token", "inside-longer-token"],
)
def test_blank_line_stop_found_and_cut(tok, tail: list[int]) -> None:
    head = words(tok, " The answer is 6.")
    checker = StopChecker(tok, ["\n\n", "Question:"])
    ids = head + tail[:-1]
    assert not checker.hit(ids)
    ids = ids + tail[-1:]
    assert checker.hit(ids)
    done = checker.finish(ids)
    assert done.text == " The answer is 6."  # cut before the stop, leading space kept (not stripped)
    assert done.stop == "\n\n"


def test_stop_far_into_a_long_generation(tok) -> None:
    body = words(tok, " 12 + 30 = 42." * 40)
    checker = StopChecker(tok, ["[DONE]"])
    assert len(body) > 100 and not checker.hit(body)
    ids = body + words(tok, "\n[DONE]")
    assert checker.hit(ids)
    done = checker.finish(ids)
    assert done.stop == "[DONE]" and done.text == " 12 + 30 = 42." * 40 + "\n"


def test_no_stops_and_special_tokens_skipped(tok) -> None:
    ids = words(tok, "def f(x):") + [tok.eos_token_id]
    checker = StopChecker(tok, [])
    assert not checker.hit(ids)
    assert checker.finish(ids).text == "def f(x):" and checker.finish(ids).stop is None


def test_multi_token_stop_matches_only_when_complete(tok) -> None:
    checker = StopChecker(tok, ["\nif __name__"])
    ids = words(tok, "    return x\nif")
    assert not checker.hit(ids)
    ids += words(tok, " __name__ == '__main__':")
    assert checker.hit(ids)
    assert checker.finish(ids).text == "    return x"
