"""Answer extraction and comparison for GSM8K and StrategyQA, in two modes.

`official_*` reproduce the verdicts of the SCMoE paper's scorers, quirks included
(paper.md §6), so our numbers are comparable with its tables. `strict_*` follow the
lm-eval convention: the answer must appear in the exemplars' format, and anything else
is unparseable (wrong, and counted separately) instead of being guessed.
"""

from __future__ import annotations

import math
import re
from decimal import Decimal, InvalidOperation

# ---------------------------------------------------------------------------
# Every task, official (paper) mode: the decode clean-up
# ---------------------------------------------------------------------------

# The paper's generate.py decodes with `clean_up_tokenization_spaces=True` (transformers 4.40), so
# every completion its scorers saw had these spacings rewritten, inside code and strings too
# (`' '.join` became `''.join`). Stored completions are the plain decode; official scoring redoes this.
_HF_CLEANUP = ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
               (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re"))


def paper_decode_cleanup(completion: str) -> str:
    """The text the paper's decode produced from the same tokens (HF `clean_up_tokenization`)."""
    for old, new in _HF_CLEANUP:
        completion = completion.replace(old, new)
    return completion


# ---------------------------------------------------------------------------
# GSM8K, official (paper) mode
# ---------------------------------------------------------------------------

_PAPER_NUMBER = re.compile(r"-?\d*\.?\d+")


def is_number_like(text: object) -> bool:
    """The paper's numeric test: Python's float() accepts it once commas are removed.

    float() is permissive ("1_000", "1e3", "nan", " 7 "), and the paper relies on it.
    """
    try:
        float(str(text).replace(",", ""))
    except ValueError:
        return False
    return True


def _last_paper_number(text: str) -> str:
    """Last `-?\\d*\\.?\\d+` match after deleting commas, or "" when there is none."""
    found = _PAPER_NUMBER.findall(text.replace(",", ""))
    return found[-1] if found else ""


def official_gsm8k_answer(completion: str) -> str:
    """Extract the answer as the paper does; "" means nothing usable was found.

    Steps: strip, cut at "\\n\\nQuestion:", take the text after the last "he answer is"
    (its last number unless the whole tail is numeric) or else the last number of the
    output, keep the first line, drop a leading ":" and a trailing "." or "/", then
    MATH-style `strip_string`.
    """
    text = completion.strip().split("\n\nQuestion:")[0]
    if "he answer is" in text:
        pred = text.split("he answer is")[-1].strip()
        if not is_number_like(pred):
            pred = _last_paper_number(pred)
    else:
        pred = _last_paper_number(text)
    pred = pred.split("\n")[0]
    if pred.startswith(":"):
        pred = pred[1:]
    if pred.endswith("."):
        pred = pred[:-1]
    if pred.endswith("/"):
        pred = pred[:-1]
    return strip_string(pred)


def _braced_fracs(text: str) -> str:
    r"""Rewrite \frac12 or \frac1b as \frac{1}{2}; leave malformed input unchanged."""
    head, *parts = text.split("\\frac")
    out = head
    for part in parts:
        out += "\\frac"
        if part.startswith("{"):
            out += part
        elif len(part) < 2:
            return text
        elif part[1] != "{":
            out += "{" + part[0] + "}{" + part[1] + "}" + part[2:]
        else:
            out += "{" + part[0] + "}" + part[1:]
    return out


def _slash_to_frac(text: str) -> str:
    r"""Rewrite an integer ratio "a/b" as \frac{a}{b}; anything else unchanged."""
    pieces = text.split("/")
    if len(pieces) != 2:
        return text
    a, b = pieces
    try:
        a_val = a if "sqrt" in a else int(a)
        b_val = b if "sqrt" in b else int(b)
    except ValueError:
        return text
    if text != f"{a_val}/{b_val}":
        return text
    return "\\frac{" + str(a_val) + "}{" + str(b_val) + "}"


def strip_string(text: str) -> str:
    """MATH-style normalisation used by the paper's GSM8K scorer, rule for rule.

    Removes units, `$`, `%`, LaTeX spacing and trailing zeros after a decimal point,
    so "18.00" and "$18" both become "18". Commas are kept (math_equal drops them).
    """
    s = str(text).strip().replace("\n", "").rstrip(".")
    for old, new in (("\\!", ""), ("\\ ", ""), ("\\\\", "\\"), ("\\\\", "\\"),
                     ("tfrac", "frac"), ("dfrac", "frac"), ("\\left", ""), ("\\right", "")):
        s = s.replace(old, new)
    without_unit = re.sub(r"\\text{.*?}$", "", s).strip()
    if without_unit and without_unit != s:
        s = without_unit
    for old in ("^{\\circ}", "^\\circ", "\\$", "$", "\\text", "x\\in", "\\%", "%"):
        s = s.replace(old, "")
    s = s.replace(" .", " 0.").replace("{.", "{0.").replace("\\cdot", "")
    s = s.replace("infinity", "\\infty")
    if "\\infty" not in s:
        s = s.replace("inf", "\\infty")
    s = s.replace("+\\inity", "\\infty").replace("and", "").replace("\\mathbf", "")
    s = re.sub(r"\\mbox{.*?}", "", s)
    if "j" in s and "i" not in s:
        s = s.replace("j", "i")
    s = re.sub(r"(\d+)\.0+([^\d])", r"\1\2", s)
    s = re.sub(r"(\d+)\.0+$", r"\1", s)
    if not s:
        return s
    if s[0] == ".":
        s = "0" + s
    sides = s.split("=")
    if len(sides) == 2 and len(sides[0]) <= 2:
        s = sides[1]
    s = re.sub(r"\\sqrt(\w+)", r"\\sqrt{\1}", s).replace(" ", "")
    return _slash_to_frac(_braced_fracs(s))


def _sympy_parse(text: str) -> object:
    """LaTeX parse, else Python-expression parse, else the raw string (paper order)."""
    from sympy.parsing.latex import parse_latex
    from sympy.parsing.sympy_parser import parse_expr

    for parse in (parse_latex, parse_expr):
        try:
            return parse(text)
        except Exception:  # noqa: BLE001 - any parser failure means "try the next"
            continue
    return text


def symbolic_equal(a: str, b: str) -> bool:
    """sympy fallback: simplify(a - b) == 0, or numerically close at rel_tol 1e-3."""
    import sympy

    x, y = _sympy_parse(a), _sympy_parse(b)
    try:
        if sympy.simplify(x - y) == 0:
            return True
    except Exception:  # noqa: BLE001 - unparsed strings and odd objects just fail
        pass
    try:
        return math.isclose(sympy.N(x), sympy.N(y), rel_tol=1e-3)
    except Exception:  # noqa: BLE001
        return False


def _strip_brackets(text: str) -> str:
    for ch in "{}()":
        text = text.replace(ch, "")
    return text


def math_equal(gold: str, answer: str) -> bool:
    """The paper's GSM8K verdict, `math_equal(reference, prediction)` as it calls it.

    The paper passes its arguments swapped, so the percentage leniency lands on the
    model's number: `answer`, `answer/100` or `answer*100` within rel_tol 1e-4 of
    `gold` counts as correct. Non-numeric pairs go through bracket-insensitive string
    equality, element-wise tuple comparison and finally sympy.
    """
    if is_number_like(gold) and is_number_like(answer):
        gold_val = float(str(gold).replace(",", ""))
        ans_val = float(str(answer).replace(",", ""))
        return any(math.isclose(v, gold_val, rel_tol=1e-4)
                   for v in (ans_val / 100, ans_val, ans_val * 100))
    if not gold:
        return False
    first, second = str(gold).strip(), str(answer).strip()
    a, b = first, second
    if (first.startswith("[") and first.endswith("]") and not second.startswith("(")) or (
            first.startswith("(") and first.endswith(")") and not second.startswith("[")):
        a, b = a.strip("[]()"), b.strip("[]()")
    if _strip_brackets(a) == _strip_brackets(b):
        return True
    both_lists = first[:1] + first[-1:] == second[:1] + second[-1:] and first[:1] + first[-1:] in ("[]", "()")
    if both_lists:
        xs, ys = first[1:-1].split(","), second[1:-1].split(",")
        if len(xs) == len(ys) and all(math_equal(x, y) for x, y in zip(xs, ys)):
            return True
    if not second:  # sympy cannot parse "" either; skip its costly failure
        return False
    return symbolic_equal(first, second)


# ---------------------------------------------------------------------------
# GSM8K, strict mode
# ---------------------------------------------------------------------------

_STRICT_ANSWER = re.compile(r"The answer is \$?\s*(-?[\d.,]*\d)")


def strict_gsm8k_answer(completion: str) -> str | None:
    """Number after the last "The answer is", with `$` and commas removed; else None.

    The phrase is case-sensitive, as in lm-eval's gsm8k-cot strict-match: it is the
    exemplars' format. The pattern ends on a digit, so a trailing "." never sticks.
    """
    found = _STRICT_ANSWER.findall(completion)
    return found[-1].replace(",", "") if found else None


def numbers_equal(answer: str, gold: str) -> bool:
    """Exact equality as decimals ("18.0" == "18"), after removing commas and `$`."""
    def clean(s: str) -> str:
        return s.replace(",", "").replace("$", "").strip().rstrip(".")

    a, g = clean(answer), clean(gold)
    try:
        return Decimal(a) == Decimal(g)
    except InvalidOperation:
        return a == g


# ---------------------------------------------------------------------------
# StrategyQA
# ---------------------------------------------------------------------------

BEGIN_HINTS = ("answer is", "answer to", "answer choice is", "i would choose", "answer would be",
               "answer seems to be", "the correct answer is", "answer to the question is")
END_HINTS = ("is correct", "is the best choice", "is the correct answer", "is the correct choice",
             "answer choice is correct")
_YES_NO = re.compile(r"( yes | no )")


def official_yes_no(completion: str) -> tuple[str, bool]:
    """The paper's StrategyQA extraction: (answer, found). Not found means answer "no".

    Lower-case and cut at the first blank line; split on the last begin-hint *in list
    order* (not the last one in the text) and keep what follows, else cut before an
    end-hint; turn `.,;` into spaces and take the last non-overlapping `( yes | no )`.
    """
    text = completion.lower().strip().split("\n\n")[0]
    begin = [h for h in BEGIN_HINTS if h in text]
    end = [h for h in END_HINTS if h in text]
    if begin:
        text = text.split(begin[-1])[-1]
    elif end:
        text = text.split(end[-1])[0]
    padded = " " + text.replace(".", " ").replace(",", " ").replace(";", " ") + " "
    found = _YES_NO.findall(padded)
    if found:
        return found[-1].strip(), True
    return "no", False


_STRICT_YES_NO = re.compile(r"answer is:?\s*(yes|no)\b", re.IGNORECASE)


def strict_yes_no(completion: str) -> str | None:
    """yes/no right after the last "answer is" (the exemplars' format); else None."""
    found = _STRICT_YES_NO.findall(completion.split("\n\n")[0])
    return found[-1].lower() if found else None
