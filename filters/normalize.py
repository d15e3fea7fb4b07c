"""Text normalisation for matching, robust to the usual disguises, with offsets back to the original.

`normalize(text)` folds, in this order, each character cluster (a base character and its combining
marks):

1. zero-width and bidirectional control characters are dropped;
2. NFKC (full-width → half-width, ligatures, compatibility forms), then case folding;
3. confusables: a non-ASCII letter that Unicode's confusables data (the `confusable-homoglyphs`
   package) links, directly or through a few look-alikes and case pairs, to an ASCII letter or
   digit becomes that character (Cyrillic 'а' → 'a', Greek 'β' → 'b'); CJK ideographs are never
   folded this way;
4. Chinese punctuation → ASCII punctuation (。→ .  、→ ,  “” → " …);
5. traditional → simplified Chinese, character by character (zhconv's table), so that one
   simplified term matches both scripts;

and then collapses separators inserted to split a word: between two CJK characters any run of
separators goes ("法 轮 功" → "法轮功", "炸-弹" → "炸弹"); in Latin text a run of at least three
single letters or digits each separated by up to three separators is joined ("f.u.c.k" → "fuck",
"k i l l" → "kill"), while ordinary spacing between words stays.

Every character of the result knows the span of the original it came from, so a match on the
normalised text can be redacted in the original (`NormalizedText.original_span`).

Speed: `normalize_reference` does the above cluster by cluster in Python and is the definition.
`normalize` gives the same text and offsets faster: ASCII text is folded by `str.lower()`, other
text without combining marks by one `str.translate()` over a table of single-character folds
(filled on first use of each character), and only text with combining marks takes the reference
path. The separator collapse runs its `regex` patterns only where a cheap test says they can
match, and offsets are worked out only when `original_span` is asked for.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from bisect import bisect_right

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


# Links followed from a character to an ASCII look-alike: deeper chains join letters that no longer
# look alike.
_CONFUSABLE_DEPTH = 3


def is_cjk(char: str) -> bool:
    code = ord(char)
    return 0x3400 <= code <= 0x9FFF or 0xF900 <= code <= 0xFAFF or 0x20000 <= code <= 0x2FA1F


@functools.cache
def _confusable_fold() -> dict[str, str]:
    """Non-ASCII characters that look like an ASCII letter or digit → that character (lower case).

    Unicode's confusables data (the `confusable-homoglyphs` package) links look-alikes pairwise and
    often not to ASCII directly (Greek 'β' → 'ß', small capital 'ᴘ' → Greek 'ᴩ' → Cherokee 'ꮲ'): a
    character takes the nearest ASCII letter or digit over those links and case pairs ('β' ~ 'Β',
    listed as 'B'), as a TR39 skeleton would after its case folding; at equal distance a lower-case
    letter wins over a capital, a letter over a digit."""
    from confusable_homoglyphs import utils

    data = utils.load("confusables.json")
    links: dict[str, set[str]] = {}
    for char, homoglyphs in data.items():
        for target in (h["c"] for h in homoglyphs):
            if len(char) == 1 and len(target) == 1:
                links.setdefault(char, set()).add(target)
                links.setdefault(target, set()).add(char)
    for char in list(links):
        for cased in (char.lower(), char.upper()):
            if len(cased) == 1 and cased != char:
                links[char].add(cased)
                links.setdefault(cased, set()).add(char)

    def preference(char: str) -> tuple[bool, bool, str]:
        return not char.islower(), not char.isalpha(), char

    fold = _letters_by_name()
    for char in links:
        if char.isascii() or is_cjk(char) or char in fold:
            continue
        seen, frontier = {char}, [char]
        for _ in range(_CONFUSABLE_DEPTH):
            frontier = sorted({near for here in frontier for near in links[here]} - seen)
            seen.update(frontier)
            targets = [near for near in frontier if near.isascii() and near.isalnum()]
            if targets:
                fold[char] = min(targets, key=preference).lower()
                break
    return fold


# Unicode names that say which Latin letter a character is, where neither NFKC nor the confusables
# data folds it: small capitals ('ᴍ' is four links from 'm' there, and at that depth 'Σ' would be 'o').
_LETTER_NAME = re.compile(r"LATIN LETTER SMALL CAPITAL ([A-Z])")
# Tag characters (U+E0020-E007E) mirror printable ASCII invisibly; models read them as that text.
_TAGS = range(0xE0020, 0xE007F)


def _letters_by_name() -> dict[str, str]:
    fold = {chr(code): chr(code - 0xE0000).lower() for code in _TAGS}
    for code in range(0x80, 0x10000):
        match = _LETTER_NAME.fullmatch(unicodedata.name(chr(code), ""))
        if match:
            fold[chr(code)] = match.group(1).lower()
    return fold


@functools.cache
def _traditional_to_simplified() -> dict[str, str]:
    from zhconv.zhconv import getdict

    table = getdict("zh-hans")
    return {traditional: simplified for traditional, simplified in table.items()
            if len(traditional) == 1 and len(simplified) == 1 and traditional != simplified}


class NormalizedText:
    """The normalised `text` of `original`, and the way back from a span of one to the other."""

    __slots__ = ("original", "text", "_offsets")

    def __init__(self, original: str, text: str, offsets: _Offsets) -> None:
        self.original = original
        self.text = text
        self._offsets = offsets

    def original_span(self, start: int, end: int) -> tuple[int, int]:
        """The span of `original` that produced `text[start:end]` (end exclusive, end > start)."""
        return self._offsets.start(start), self._offsets.end(end - 1)

    @property
    def starts(self) -> tuple[int, ...]:
        """For each character of `text`, where its source begins in `original`."""
        return tuple(self._offsets.start(index) for index in range(len(self.text)))

    @property
    def ends(self) -> tuple[int, ...]:
        """... and where it ends."""
        return tuple(self._offsets.end(index) for index in range(len(self.text)))

    def __repr__(self) -> str:
        return f"NormalizedText(original={self.original!r}, text={self.text!r})"


class _Offsets:
    def start(self, index: int) -> int:
        raise NotImplementedError

    def end(self, index: int) -> int:
        raise NotImplementedError


class _ClusterOffsets(_Offsets):
    """Offsets listed character by character (the reference path)."""

    def __init__(self, starts: list[int], ends: list[int]) -> None:
        self._starts = starts
        self._ends = ends

    def start(self, index: int) -> int:
        return self._starts[index]

    def end(self, index: int) -> int:
        return self._ends[index]


class _FoldOffsets(_Offsets):
    """Offsets of a text folded character by character (each original character → 0, 1 or more
    characters) and then cut by the separator collapse, worked out on the first question: a scan
    with no match never pays for them."""

    def __init__(self, original: str, cuts: list[tuple[int, int]]) -> None:
        self._original = original
        self._cuts = cuts  # (start, end) runs removed from the folded text, in order
        self._cut_at: list[int] | None = None
        self._cut_before: list[int] = []
        self._anchors: list[tuple[int, int]] | None = None
        self._anchor_folded_starts: list[int] = []

    def _folded_index(self, index: int) -> int:
        if not self._cuts:
            return index
        if self._cut_at is None:
            # Where each cut sits in the result, and how much was cut before it.
            self._cut_at, self._cut_before, removed = [], [0], 0
            for start, end in self._cuts:
                self._cut_at.append(start - removed)
                removed += end - start
                self._cut_before.append(removed)
        return index + self._cut_before[bisect_right(self._cut_at, index)]

    def _original_index(self, folded: int) -> int:
        if self._anchors is None:
            self._find_anchors()
        if not self._anchors:
            return folded
        k = bisect_right(self._anchor_folded_starts, folded) - 1
        if k < 0:
            return folded
        position, length = self._anchors[k]
        folded_start = self._anchor_folded_starts[k]
        if folded < folded_start + length:
            return position
        return position + 1 + folded - folded_start - length

    def _find_anchors(self) -> None:
        """The original characters that do not fold to exactly one character (only non-ASCII ones
        can), with where their fold starts in the folded text."""
        anchors = []
        if not self._original.isascii():
            runs = sparse_non_ascii_runs(self._original) or [(0, len(self._original))]
            for start, end in runs:
                for match in _irregular_chars().finditer(self._original, start, end):
                    length = len(_fold_cluster(match.group()))
                    if length != 1:
                        anchors.append((match.start(), length))
        shift = 0
        for position, length in anchors:
            self._anchor_folded_starts.append(position + shift)
            shift += length - 1
        self._anchors = anchors

    def start(self, index: int) -> int:
        return self._original_index(self._folded_index(index))

    def end(self, index: int) -> int:
        return self.start(index) + 1  # clusters are single characters on this path


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

# The two patterns above cost ~0.1 ms per KB when run over a whole text; `normalize` runs them
# only where these stdlib `re` patterns, which match wherever they can (and rarely elsewhere),
# point.
#
# Spelled-out words: in a skeleton of the UTF-8 bytes where an ASCII letter or digit is "a", the
# first byte of a character of U+5000-U+9FFF (CJK ideographs, never a gap) "x" and any other byte a
# space, three single letters with equal gaps (1–3 characters: 1–12 bytes, 1–3 in ASCII text).
# `_SPELLED` is tried only where this matches: Chinese text with single letters or digits between
# its characters does not match at every letter. The gap's first space is written out so
# that the pattern starts with the literal " a ", a single letter: `re` then tries a match at each
# single letter rather than at each word (half the time on English text).
_SKELETON = bytes(ord("a") if chr(byte).isascii() and chr(byte).isalnum() else ord("x") if 0xE5 <= byte <= 0xE9
                  else ord(" ") for byte in range(256))
_SPELLED_GATE = re.compile(rb" a ( {0,11})a \1a ")
_SPELLED_GATE_ASCII = re.compile(rb" a ( {0,2})a \1a ")
# Separators between CJK characters: clause punctuation is folded to placeholder letters first
# (Lisu letters, which no CJK text uses; text that has them takes the reference path), so that a
# run containing it never looks like a run to drop; the placeholders are replaced afterwards. A
# hint is a run of non-letters/digits between two CJK characters, starting with a character class
# so that stdlib `re` skips quickly to candidates; it is dropped when it is all separators.
_PLACEHOLDER_RANGE = ("\ua4d0", "\ua4d6")
_CLAUSE_PLACEHOLDERS = {"，": "\ua4d0", "。": "\ua4d1", "！": "\ua4d2", "？": "\ua4d3", "；": "\ua4d4",
                        "：": "\ua4d5", "、": "\ua4d6"}
_HAS_CJK = re.compile(rf"[{_CJK}]")
_CJK_SPLIT_HINT = re.compile(rf"[\W_](?<=[{_CJK}][\W_])[\W_]*(?=[{_CJK}])")
_SEPARATORS = regex.compile(r"[\p{P}\p{S}\s]+")
_ASCII_SEPARATORS = frozenset(char for char in map(chr, range(128)) if _SEPARATORS.fullmatch(char))
# ASCII bytes → 0, others → 1: memchr-fast search for the non-ASCII runs of mostly-ASCII text.
_NON_ASCII_MASK = bytes(0 if byte < 0x80 else 1 for byte in range(256))
_ASTRAL = re.compile("[\U00010000-\U0010ffff]")
# What the table below gives a character that needs the reference path: a combining mark (its
# cluster is more than one character), a placeholder, and this character itself.
_NEEDS_CLUSTERS = "\uffff"


class _NeedsClusters(Exception):
    """The text has a combining mark (or a placeholder): fold it cluster by cluster."""


def _single_char_fold(char: str) -> str:
    if unicodedata.combining(char) or _PLACEHOLDER_RANGE[0] <= char <= _PLACEHOLDER_RANGE[1] \
            or char == _NEEDS_CLUSTERS:
        raise _NeedsClusters
    return _CLAUSE_PLACEHOLDERS.get(char) or _fold_cluster(char)


@functools.cache
def _bmp_table() -> list[int | str]:
    """`str.translate` table of the Basic Multilingual Plane (a list is the fastest table; ~0.1 s to
    build, once): code point → fold, or the code point itself where the fold is the character."""
    table: list[int | str] = []
    for code in range(0x10000):
        try:
            folded = _single_char_fold(chr(code))
        except _NeedsClusters:
            folded = _NEEDS_CLUSTERS
        table.append(code if folded == chr(code) else folded)
    return table


def class_ranges(codes: list[int]) -> str:
    """The inside of a regex character class for sorted code points, as ranges ("a-z0-9")."""
    ranges, start = [], None
    for index, code in enumerate(codes):
        start = code if start is None else start
        if index + 1 == len(codes) or codes[index + 1] != code + 1:
            ranges.append(re.escape(chr(start)) + ("-" + re.escape(chr(code)) if code != start else ""))
            start = None
    return "".join(ranges)


@functools.cache
def _irregular_chars() -> re.Pattern[str]:
    """The characters whose fold is not one character: those of the BMP that are, and any beyond."""
    codes = [code for code, folded in enumerate(_bmp_table()) if isinstance(folded, str) and len(folded) != 1]
    return re.compile("[" + class_ranges(codes) + "\U00010000-\U0010ffff]")


@functools.lru_cache(maxsize=4096)
def _astral_fold(char: str) -> str:
    return _single_char_fold(char)


@functools.cache
def _placeholder_folds() -> list[tuple[str, str]]:
    return [(placeholder, _fold_cluster(char)) for char, placeholder in _CLAUSE_PLACEHOLDERS.items()]


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


def fold(text: str) -> str:
    """Steps 1–5 without the separator collapse: what a literal run of a regex must look like to
    occur in normalised text."""
    return "".join(_fold_cluster(text[start:end]) for start, end in _clusters(text))


def prepare() -> None:
    """Build the lookup tables now (~0.1 s) rather than on the first non-ASCII text."""
    _bmp_table()
    _irregular_chars()
    _placeholder_folds()


def normalize(text: str) -> NormalizedText:
    if text.isascii():
        folded, marked = text.lower(), None  # the fold of every ASCII character is its lower case
    else:
        try:
            marked, has_cjk = _translate(text)
        except _NeedsClusters:
            return normalize_reference(text)
        folded = marked
        for placeholder, punctuation in _placeholder_folds():
            if placeholder in folded:
                folded = folded.replace(placeholder, punctuation)
        if not has_cjk:
            marked = None
    cuts = _cuts(folded, marked, ascii_only=text.isascii())
    if cuts:
        kept, last = [], 0
        for start, end in cuts:
            kept.append(folded[last:start])
            last = end
        kept.append(folded[last:])
        folded = "".join(kept)
    return NormalizedText(text, folded, _FoldOffsets(text, cuts))


def _translate(text: str) -> tuple[str, bool]:
    """`text` folded character by character, clause punctuation as placeholders, and whether the
    result may contain CJK characters."""
    table = _bmp_table()
    runs = sparse_non_ascii_runs(text)
    if runs is None:
        folded = _fold_beyond_bmp(text.translate(table), text)
        return folded, _HAS_CJK.search(folded) is not None
    # A few non-ASCII characters in ASCII text (a curly quote, an emoji): translate() would look up
    # every character; lower() the ASCII runs instead.
    parts, has_cjk, last = [], False, 0
    for start, end in runs:
        parts.append(text[last:start].lower())
        run = text[start:end]
        folded = _fold_beyond_bmp(run.translate(table), run)
        parts.append(folded)
        has_cjk = has_cjk or _HAS_CJK.search(folded) is not None
        last = end
    parts.append(text[last:].lower())
    return "".join(parts), has_cjk


def sparse_non_ascii_runs(text: str) -> list[tuple[int, int]] | None:
    """(start, end) of the runs of non-ASCII characters of mostly-ASCII text, or None when there
    are many (found byte-wise with memchr-fast searches: a regex would test every character)."""
    encoded = text.encode("utf-8", "surrogatepass")
    if (len(encoded) - len(text)) * 64 >= len(text):
        return None
    mask = encoded.translate(_NON_ASCII_MASK)
    runs, chars, last = [], 0, 0
    start = mask.find(1)
    while start != -1:
        end = mask.find(0, start)
        if end == -1:
            end = len(encoded)
        chars += start - last  # ASCII: a byte is a character
        length = len(encoded[start:end].decode("utf-8", "surrogatepass"))
        runs.append((chars, chars + length))
        chars, last = chars + length, end
        start = mask.find(1, end)
    return runs


def _fold_beyond_bmp(translated: str, text: str) -> str:
    if _NEEDS_CLUSTERS in translated:
        raise _NeedsClusters
    if len(text.encode("utf-16-le", "surrogatepass")) != 2 * len(text):
        # The table covers the BMP and leaves other characters as they are: emoji, rare ideographs.
        return _ASTRAL.sub(lambda match: _astral_fold(match.group()), translated)
    return translated


def _cuts(folded: str, marked: str | None, ascii_only: bool) -> list[tuple[int, int]]:
    """The runs of `folded` that only split a word, in order (see `_split_word_separators`);
    `marked` is `folded` with clause punctuation as placeholders, None when it has no CJK."""
    cuts = []
    if marked is not None:
        for hint in _CJK_SPLIT_HINT.finditer(marked):
            start, end = hint.span()
            # (Most runs are one ASCII character, a newline: no need to ask `regex`.)
            if (end - start == 1 and marked[start] in _ASCII_SEPARATORS) or _SEPARATORS.fullmatch(marked, start, end):
                cuts.append((start, end))
    encoded = folded.encode("utf-8", "surrogatepass")
    skeleton = b" " + encoded.translate(_SKELETON) + b" "
    gate = _SPELLED_GATE_ASCII if ascii_only else _SPELLED_GATE
    position = 0  # in the skeleton: byte offset in `encoded` + 1
    # Byte and character offsets of one place, moved forward with the hints: converting only the
    # stretch since the last hint keeps this linear (re-decoding each prefix was quadratic).
    at_byte = at_char = 0
    while hint := gate.search(skeleton, position):
        # The hint's first byte is the one before the first letter: its offset in `encoded` is
        # where the letter starts.
        if ascii_only:
            start = hint.start()
        else:
            at_char += len(encoded[at_byte:hint.start()].decode("utf-8", "surrogatepass"))
            at_byte = start_byte = hint.start()
            start = at_char
        match = _SPELLED.match(folded, start)
        if match is None:
            position = hint.start() + 1
            continue
        gap = len(match.group("gap"))
        cuts.extend((start, start + gap) for start in range(match.start() + 1, match.end() - 1, gap + 1))
        if ascii_only:
            position = match.end()
        else:
            at_byte = start_byte + len(folded[start:match.end()].encode("utf-8", "surrogatepass"))
            at_char, position = match.end(), at_byte
    cuts.sort()
    return cuts


def normalize_reference(text: str) -> NormalizedText:
    """`normalize`, cluster by cluster: the definition the fast paths are tested against, and the
    path for text with combining marks."""
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
        return NormalizedText(text, folded_text, _ClusterOffsets(starts, ends))
    keep = [index for index in range(len(chars)) if index not in dropped]
    return NormalizedText(
        text,
        "".join(chars[index] for index in keep),
        _ClusterOffsets([starts[index] for index in keep], [ends[index] for index in keep]),
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
