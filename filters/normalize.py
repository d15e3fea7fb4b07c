"""Text normalisation for matching, robust to the usual disguises, with offsets back to the original.

`normalize(text)` folds, in this order, each character cluster (a base character and its combining
marks):

1. zero-width and bidirectional control characters are dropped;
2. NFKC (full-width → half-width, ligatures, compatibility forms), then case folding;
3. confusables: a non-ASCII letter that Unicode's confusables data (the `confusable-homoglyphs`
   package) lists as a homoglyph of an ASCII letter or digit becomes that character (Cyrillic
   'а' → 'a'); CJK ideographs are never folded this way;
4. Chinese punctuation → ASCII punctuation (。→ .  、→ ,  “” → " …);
5. traditional → simplified Chinese, character by character (zhconv's table), so that one
   simplified term matches both scripts;

and then collapses separators inserted to split a word: between two CJK characters any run of
separators goes ("法 轮 功" → "法轮功", "炸-弹" → "炸弹"); in Latin text a run of at least three
single letters or digits each separated by up to three separators is joined ("f.u.c.k" → "fuck",
"k i l l" → "kill"), while ordinary spacing between words stays.

Every character of the result knows the span of the original it came from, so a match on the
normalised text can be redacted in the original (`NormalizedText.original_span`).
"""

from __future__ import annotations

import functools
import json
import unicodedata
from dataclasses import dataclass
from importlib.resources import files

import regex

# Format characters used to hide a word inside another: zero-width space/joiners, word joiner,
# invisible operators, BOM, soft hyphen, and the bidi embeddings/overrides/isolates.
_INVISIBLE = frozenset(
    [0x00AD, 0x180E, 0xFEFF, *range(0x200B, 0x2010), *range(0x202A, 0x202F), *range(0x2060, 0x2065),
     *range(0x2066, 0x206A)]
)

# CJK punctuation that NFKC leaves alone.
_CJK_PUNCTUATION = {
    "。": ".", "、": ",", "〈": "<", "〉": ">", "《": "<", "》": ">", "「": '"', "」": '"', "『": '"', "』": '"',
    "【": "[", "】": "]", "〔": "[", "〕": "]", "“": '"', "”": '"', "‘": "'", "’": "'", "…": "...", "—": "-",
    "–": "-", "·": ".", "・": ".", "～": "~", "〜": "~",
}

# Written Chinese separates clauses with these: separators between CJK characters are dropped,
# except these (joining across them would match across clauses).
_CJK_CLAUSE_PUNCTUATION = frozenset("，。！？；：、")


def _is_cjk(char: str) -> bool:
    code = ord(char)
    return 0x3400 <= code <= 0x9FFF or 0xF900 <= code <= 0xFAFF or 0x20000 <= code <= 0x2FA1F


@functools.cache
def _confusable_fold() -> dict[str, str]:
    """Non-ASCII characters whose homoglyphs include an ASCII letter or digit → that character."""
    import confusable_homoglyphs

    data = json.loads(files(confusable_homoglyphs).joinpath("confusables.json").read_text(encoding="utf-8"))
    fold = {}
    for char, homoglyphs in data.items():
        if len(char) != 1 or char.isascii() or _is_cjk(char):
            continue
        targets = [h["c"] for h in homoglyphs if len(h["c"]) == 1 and h["c"].isascii() and h["c"].isalnum()]
        if targets:
            fold[char] = targets[0].lower()
    return fold


@functools.cache
def _traditional_to_simplified() -> dict[str, str]:
    from zhconv import zhconv

    zhconv.loaddict()
    table = zhconv.zhcdicts["zh2Hans"]
    return {traditional: simplified for traditional, simplified in table.items()
            if len(traditional) == 1 and len(simplified) == 1 and traditional != simplified}


@dataclass(frozen=True)
class NormalizedText:
    original: str
    text: str
    starts: tuple[int, ...]  # for each character of `text`, where its source begins in `original`
    ends: tuple[int, ...]  # ... and where it ends

    def original_span(self, start: int, end: int) -> tuple[int, int]:
        """The span of `original` that produced `text[start:end]` (end exclusive, end > start)."""
        return self.starts[start], self.ends[end - 1]


# Separators between two CJK characters that are dropped (anything but clause punctuation).
_CJK = r"\u3400-\u9fff\uf900-\ufaff\U00020000-\U0002fa1f"
_CJK_SPLIT = regex.compile(rf"(?<=[{_CJK}])[\p{{P}}\p{{S}}\s]+(?=[{_CJK}])")
# Spelled-out words: at least three single letters/digits, the same 1–3 separators between each
# ("f.u.c.k", "k i l l"; not "x = 1 + 2", not "a b").
_SPELLED = regex.compile(
    r"(?<![\p{L}\p{N}])[a-z0-9](?P<gap>[\p{P}\p{S}\s]{1,3})[a-z0-9](?:(?P=gap)[a-z0-9])+(?![\p{L}\p{N}])"
)
_GAP_CHAR = regex.compile(r"[\p{P}\p{S}\s]")
_COMBINING = regex.compile(r"\p{M}")


def _clusters(text: str) -> list[tuple[int, int]]:
    """(start, end) of each base character with the combining marks that follow it."""
    if not _COMBINING.search(text):
        return [(index, index + 1) for index in range(len(text))]
    clusters: list[tuple[int, int]] = []
    for index, char in enumerate(text):
        if clusters and unicodedata.combining(char):
            clusters[-1] = (clusters[-1][0], index + 1)
        else:
            clusters.append((index, index + 1))
    return clusters


@functools.lru_cache(maxsize=65536)  # text is made of few distinct clusters: fold each once
def _fold_cluster(cluster: str) -> str:
    cluster = "".join(char for char in cluster if ord(char) not in _INVISIBLE)
    if not cluster:
        return ""
    confusables, simplified = _confusable_fold(), _traditional_to_simplified()
    folded = []
    for char in unicodedata.normalize("NFKC", cluster):
        for lower in char.casefold():
            # The lower case first (Greek 'ι' → 'i', where 'Ι' is listed as 'l'), the original case
            # when only it is listed (Greek 'Κ' → 'k'; 'κ' has no entry).
            homoglyph = confusables.get(lower) or confusables.get(char)
            folded.append(_CJK_PUNCTUATION.get(lower) or homoglyph or simplified.get(lower) or lower)
    return "".join(folded)


def normalize(text: str) -> NormalizedText:
    chars: list[str] = []
    starts: list[int] = []
    ends: list[int] = []
    for start, end in _clusters(text):
        folded = _fold_cluster(text[start:end])
        chars.extend(folded)
        starts.extend([start] * len(folded))
        ends.extend([end] * len(folded))
    folded_text = "".join(chars)
    dropped = _split_word_separators(folded_text, text, starts)
    if not dropped:
        return NormalizedText(text, folded_text, tuple(starts), tuple(ends))
    keep = [index for index in range(len(chars)) if index not in dropped]
    return NormalizedText(
        text,
        "".join(chars[index] for index in keep),
        tuple(starts[index] for index in keep),
        tuple(ends[index] for index in keep),
    )


def _split_word_separators(folded: str, original: str, starts: list[int]) -> set[int]:
    """Indexes of `folded` that only split a word: separators between CJK characters (unless the
    original there is Chinese clause punctuation) and the gaps of spelled-out words."""
    dropped: set[int] = set()
    for match in _CJK_SPLIT.finditer(folded):
        span = range(match.start(), match.end())
        if not any(original[starts[index]] in _CJK_CLAUSE_PUNCTUATION for index in span):
            dropped.update(span)
    for match in _SPELLED.finditer(folded):
        dropped.update(
            index for index in range(match.start(), match.end()) if _GAP_CHAR.match(folded, index)
        )
    return dropped
