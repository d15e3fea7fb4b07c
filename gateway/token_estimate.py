"""A token count for text the upstream did not count: its answer carried no `usage`.

Without the model's tokenizer the count is estimated: a CJK, kana or Hangul character is about one
token in the common BPE vocabularies, and other text about four characters per token (OpenAI's rule
of thumb for English, spaces included). Good to within a small factor, which is what a per-minute
budget needs; an upstream that reports `usage` is always taken at its word instead.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable

CHARS_PER_TOKEN = 4
# Hangul Jamo; CJK radicals to unified ideographs (kana, Bopomofo and CJK punctuation in between);
# Hangul syllables; compatibility ideographs; full- and half-width forms; the ideograph extensions.
_ONE_TOKEN_EACH = re.compile("[\u1100-\u11ff\u2e80-\u9fff\uac00-\ud7af\uf900-\ufaff\uff00-\uffef"
                             "\U00020000-\U0003ffff]")


class TokenEstimate:
    """Characters counted as they pass (a stream's deltas), the estimate taken at the end: the
    rounding happens once, not per delta."""

    __slots__ = ("other_chars", "wide_chars")

    def __init__(self) -> None:
        self.wide_chars = 0
        self.other_chars = 0

    def add(self, text: str) -> None:
        wide = len(_ONE_TOKEN_EACH.findall(text))
        self.wide_chars += wide
        self.other_chars += len(text) - wide

    @property
    def tokens(self) -> int:
        return self.wide_chars + math.ceil(self.other_chars / CHARS_PER_TOKEN)


def estimate_tokens(texts: Iterable[str]) -> int:
    estimate = TokenEstimate()
    for text in texts:
        estimate.add(text)
    return estimate.tokens
