"""Stop strings matched on the DECODED text of the generated tokens, not on token ids.

Token-id matching (the paper's code) misses a stop that arrives split differently, e.g. "\\n\\n" as
"\\n" + "\\n" or inside a longer token. Here each step decodes a short tail window of every live row
and only a hit there triggers a full decode, so the per-step cost does not grow with the output.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from transformers import PreTrainedTokenizerBase

# Tail tokens decoded beyond the longest stop: a stop never starts in the window's first tokens,
# where slice decoding may differ from the full text (a dropped leading space, a split UTF-8 byte).
_MARGIN_TOKENS = 4


def find_stop(text: str, stops: Sequence[str]) -> tuple[int, str] | None:
    """Earliest occurrence of any stop in text as (char position, stop); ties go to the longest stop."""
    best: tuple[int, str] | None = None
    for stop in stops:
        pos = text.find(stop)
        if pos < 0:
            continue
        if best is None or pos < best[0] or (pos == best[0] and len(stop) > len(best[1])):
            best = (pos, stop)
    return best


@dataclass(frozen=True)
class Decoded:
    """Completion text of one row: cut before the matched stop (if any), never stripped."""

    text: str
    stop: str | None


class StopChecker:
    """Decodes generated ids (skip_special_tokens=True) and finds stop strings in the text."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, stops: Sequence[str]) -> None:
        self.tokenizer = tokenizer
        self.stops = [s for s in dict.fromkeys(stops) if s]
        self.window = max((len(s) for s in self.stops), default=0) + _MARGIN_TOKENS

    def decode(self, token_ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(token_ids), skip_special_tokens=True)

    def hit(self, token_ids: Sequence[int]) -> bool:
        """True once the generated text contains a stop. Cheap: looks at the tail window first."""
        if not self.stops:
            return False
        if find_stop(self.decode(token_ids[-self.window :]), self.stops) is None:
            return False
        return find_stop(self.decode(token_ids), self.stops) is not None

    def finish(self, token_ids: Sequence[int]) -> Decoded:
        """Full decode, cut before the earliest stop."""
        text = self.decode(token_ids)
        match = find_stop(text, self.stops)
        if match is None:
            return Decoded(text, None)
        return Decoded(text[: match[0]], match[1])
