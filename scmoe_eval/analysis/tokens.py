"""Token classes of Tab. 5: "expression" tokens (arithmetic, by regex) and stopwords (NLTK's list).

The paper says only that expression tokens "are extracted by regex" and stopwords use NLTK's list
(../shared/paper.md §3). Our rule, on character spans so it works with any tokenizer that reports
offsets (leading/trailing whitespace of a token is ignored):
- an **expression** is a run of at least two numbers joined by arithmetic operators or "=",
  e.g. `48/2 = 24`, `$150 + $150 = $300`, `0.2 x 50`, `(3+2)*4`; a token is an expression token when
  its span overlaps one;
- a **stopword** token lies entirely inside a word (letters, optionally an apostrophe part: `she's`)
  that is on NLTK's English list, compared in lower case.
"""

from __future__ import annotations

import re
from functools import lru_cache
from importlib import resources
from typing import Sequence

_NUMBER = r"\(*[ \t]*\$?\d+(?:,\d{3})*(?:\.\d+)?%?[ \t]*\)*"
_OPERATOR = r"[-+*/×÷=x]"
EXPRESSION = re.compile(rf"{_NUMBER}(?:[ \t]*{_OPERATOR}[ \t]*{_NUMBER})+")  # never crosses a line
WORD = re.compile(r"[A-Za-z]+(?:['’][A-Za-z]+)?")
CLASSES = ("all", "expression", "stopword")


@lru_cache(maxsize=1)
def stopwords() -> frozenset[str]:
    """NLTK's English stopwords (179 words), shipped in analysis/data (source in its README)."""
    text = resources.files("scmoe_eval.analysis").joinpath("data", "nltk_english_stopwords.txt").read_text("utf-8")
    return frozenset(w for w in text.split() if w)


def _core(text: str, start: int, end: int) -> tuple[int, int]:
    """The span without leading/trailing whitespace (empty when the token is only whitespace)."""
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end


def classify(text: str, spans: Sequence[tuple[int, int]]) -> tuple[list[bool], list[bool]]:
    """(is_expression, is_stopword) per token span (start, end) of `text`."""
    expressions = [m.span() for m in EXPRESSION.finditer(text)]
    stops = stopwords()
    stop_words = [m.span() for m in WORD.finditer(text) if m.group().lower().replace("’", "'") in stops]
    is_expr, is_stop = [], []
    for start, end in spans:
        s, e = _core(text, start, end)
        if s == e:
            is_expr.append(False)
            is_stop.append(False)
            continue
        is_expr.append(any(s < we and ws < e for ws, we in expressions))
        is_stop.append(any(ws <= s and e <= we for ws, we in stop_words))
    return is_expr, is_stop
