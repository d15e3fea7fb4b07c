"""The texts a blacklist matches: the normalised text, and what it may be hiding.

A `View` is a text the rules are matched on, with the way back from a span of it to a span of the
text it was made from. `TextViews(text)` makes them, each only when asked for, and the derived ones
only where a cheap test says they can differ from the plain one, so that an ordinary short prompt
pays for one view:

* ``text``: `filters.normalize` of the text with its combining marks and accents taken off
  ("pípé", Zalgo, "p̷i̷p̷e̷" → "pipe"); marks never separate words, so this is the plain view;
* ``joined``: symbols such as emoji between two letters taken out ("pi🔥pe bo💥mb") - a separate
  view because "bomb💣attack" is two words;
* ``leet``: digits and symbols inside words read as the letters they stand for ("p1p3 b0mb",
  "m@ke", "$ynthesize"), twice where '1' or '|' could be 'i' or 'l'; only words with a letter and
  a digit or symbol change ("4111 1111" and "3 kids" do not);
* ``reversed``: the text backwards ("bmob epip"); the blacklist asks for it only when a reversed
  key occurs;
* decoded text (HTML entities and percent-encoding) and the base64 and hex runs of the text are
  made here as new texts (`decoded`, `encoded_runs`): the blacklist scans them as it scans any
  text, and maps what it finds back to the encoded span.

Offsets: a view made by replacing characters one for one (leet, reversed) shares the plain view's
way back; one made by deleting or replacing runs (marks, entities) keeps its `Edits`, which are
listed only when a match asks for them.
"""

from __future__ import annotations

import base64
import binascii
import functools
import html
import re
import unicodedata
from bisect import bisect_right
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from filters.normalize import NormalizedText, normalize

Back = Callable[[int, int], tuple[int, int]]


@dataclass(frozen=True)
class View:
    name: str
    text: str
    back: Back  # span of `text` (end exclusive, end > start) → span of the text the view was made from


class Edits:
    """Runs of a text replaced by other text (possibly empty), in order: maps spans of the result
    back. The runs are found only when the first span is asked for: a scan with no match never
    pays for them. With `marks`, a deleted run belongs to the character before it (a span that
    ends there takes it along: redacting "b̷" masks its mark too)."""

    def __init__(self, find: Callable[[], list[tuple[int, int, int]]], marks: bool = False) -> None:
        self._find = find  # → (start, end, length of the replacement), in the source, in order
        self._marks = marks
        self._edits: list[tuple[int, int, int]] | None = None
        self._result_starts: list[int] = []

    def _listed(self) -> list[tuple[int, int, int]]:
        if self._edits is None:
            self._edits, shift = self._find(), 0
            for start, end, length in self._edits:
                self._result_starts.append(start + shift)
                shift += length - (end - start)
        return self._edits

    def _position(self, index: int, last: bool) -> int:
        edits = self._listed()
        k = bisect_right(self._result_starts, index) - 1
        if k < 0:
            return index
        start, end, length = edits[k]
        result_start = self._result_starts[k]
        if index < result_start + length:
            return end - 1 if last else start  # inside a replacement: all of what it replaced
        return end + index - result_start - length

    def back(self, start: int, end: int) -> tuple[int, int]:
        source_end = self._position(end - 1, last=True) + 1
        if self._marks:
            k = bisect_right(self._result_starts, end) - 1  # the last run at or before the span's end
            if k >= 0 and self._edits[k][0] == source_end:
                source_end = self._edits[k][1]
        return self._position(start, last=False), source_end

    def back_then(self, outer: Back | None) -> Back:
        """`back`, then `outer` (the way back of the text these edits were made to)."""
        return _then(self.back, outer)


def _then(inner: Back, outer: Back | None) -> Back:
    if outer is None:
        return inner
    return lambda start, end: outer(*inner(start, end))


# ---------------------------------------------------------------------------------------------
# Marks and accents


@functools.cache
def _strip_table() -> list[int | None]:
    """`str.translate` table of the BMP: combining marks → nothing, a character whose canonical
    decomposition has marks → its base character ("é" → "e"), the rest unchanged."""
    table: list[int | None] = []
    for code in range(0x10000):
        char = chr(code)
        if unicodedata.category(char) in ("Mn", "Me"):
            table.append(None)
            continue
        decomposed = unicodedata.normalize("NFD", char)
        base = "".join(part for part in decomposed if unicodedata.category(part) not in ("Mn", "Me"))
        table.append(ord(base) if len(base) == 1 and len(decomposed) > 1 else code)
    return table


def _class_of(codes: list[int]) -> str:
    ranges, start = [], None
    for index, code in enumerate(codes):
        start = code if start is None else start
        if index + 1 == len(codes) or codes[index + 1] != code + 1:
            ranges.append(re.escape(chr(start)) + ("-" + re.escape(chr(code)) if code != start else ""))
            start = None
    return "[" + "".join(ranges) + "]"


# `re` tests a set of BMP ranges quickly (~20 ns a character) and one with ranges beyond the BMP
# slowly (~500 ns): each set below is the BMP part, and characters beyond the BMP, which ordinary
# text has few of, are looked at one by one.
_ASTRAL = re.compile("[\U00010000-\U0010ffff]+")


def _is_mark(char: str) -> bool:
    return unicodedata.category(char) in ("Mn", "Me")


@functools.cache
def _bmp_marks() -> re.Pattern[str]:
    return re.compile(_class_of([code for code in range(0x10000) if _is_mark(chr(code))]) + "+")


@functools.cache
def _strippable() -> re.Pattern[str]:
    """A BMP character that `_strip_table` changes."""
    return re.compile(_class_of([code for code, mapped in enumerate(_strip_table()) if mapped != code]))


def _astral_spans(text: str, wanted: Callable[[str], bool]) -> list[tuple[int, int]]:
    return [(index, index + 1) for match in _ASTRAL.finditer(text) for index in range(*match.span())
            if wanted(text[index])]


def _merged(spans: list[tuple[int, int]]) -> list[tuple[int, int, int]]:
    """Adjacent spans as one run each: (start, end, 0), as `Edits` lists a deletion."""
    runs: list[tuple[int, int, int]] = []
    for start, end in sorted(spans):
        if runs and runs[-1][1] == start:
            runs[-1] = (runs[-1][0], end, 0)
        else:
            runs.append((start, end, 0))
    return runs


def _mark_runs(text: str) -> list[tuple[int, int, int]]:
    return _merged([match.span() for match in _bmp_marks().finditer(text)] + _astral_spans(text, _is_mark))


def strip_marks(text: str) -> tuple[str, Edits | None]:
    """`text` without combining marks and accents, and the edits (None: nothing was deleted)."""
    if text.isascii():
        return text, None
    astral = _ASTRAL.search(text) is not None
    if not _strippable().search(text) and not (astral and _astral_spans(text, _is_mark)):
        return text, None
    stripped = text.translate(_strip_table())
    if astral:
        stripped = _ASTRAL.sub(lambda match: "".join(char for char in match.group() if not _is_mark(char)), stripped)
    if len(stripped) == len(text):
        return stripped, None  # accents replaced one for one, nothing deleted
    return stripped, Edits(lambda: _mark_runs(text), marks=True)


# ---------------------------------------------------------------------------------------------
# Symbols between letters


def _is_symbol(char: str) -> bool:
    return unicodedata.category(char) in ("So", "Sk") or char in "\u200d\ufe0e\ufe0f"


@functools.cache
def _bmp_symbols() -> re.Pattern[str]:
    return re.compile(_class_of([code for code in range(0x80, 0x10000) if _is_symbol(chr(code))]) + "+")


def _symbols_between_letters(text: str) -> list[tuple[int, int, int]]:
    """(start, end, 0) of each run of non-ASCII symbols (emoji, dingbats, their modifiers and
    joiners) between two letters."""
    runs = _merged([match.span() for match in _bmp_symbols().finditer(text)] + _astral_spans(text, _is_symbol))
    return [run for run in runs if run[0] > 0 and run[1] < len(text) and text[run[0] - 1].isalpha()
            and text[run[1]].isalpha()]


# ---------------------------------------------------------------------------------------------
# Leetspeak

# A run of digits and symbols touching a Latin letter (the letter before it in group 1's branch, after
# it in group 2's); both branches start with a character set, which `re` skips to quickly.
_LEET_RUN = re.compile(r"[a-z]([0-9@$!|]+)|([0-9@$!|]+)[a-z]")
_LEET = str.maketrans({"0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "7": "t", "8": "b", "9": "g", "@": "a",
                       "$": "s", "!": "i", "|": "l"})
# '1' and '|' are 'i' in "k1ll" and 'l' in "bui1d": where they occur, a second reading.
_LEET_OTHER_READING = str.maketrans({"1": "l", "|": "i"})
_AMBIGUOUS_LEET = frozenset("1|")


def _leet_views(base: View) -> list[View]:
    """The plain view with digits and symbols read as letters where they touch a letter ("p1p3",
    "m@ke", "$ynth"), and left as they are elsewhere ("455 tickets", "1.0.3", a closing "!")."""
    text = base.text
    runs = []
    for match in _LEET_RUN.finditer(text):
        start, end = match.span(1) if match.group(1) is not None else match.span(2)
        if runs and start <= runs[-1][1]:
            runs[-1] = (runs[-1][0], max(end, runs[-1][1]))  # "p1p3": '3' after the 'p' that ended "1p"
        elif text[start:end] != "!" or "a" <= text[end:end + 1] <= "z":  # a closing "!" is punctuation
            runs.append((start, end))
    if not runs:
        return []
    kept, last = [], 0
    for start, end in runs:
        kept.append(text[last:start])
        last = end
    kept.append(text[last:])
    leet = "\0".join(text[start:end] for start, end in runs)  # one translate for all the runs
    readings = [leet.translate(_LEET)]
    if not _AMBIGUOUS_LEET.isdisjoint(leet):
        readings.append(leet.translate(_LEET_OTHER_READING).translate(_LEET))
    views = []
    for reading in readings:
        pieces = [None] * (2 * len(runs) + 1)
        pieces[0::2], pieces[1::2] = kept, reading.split("\0")
        views.append(View("leet", "".join(pieces), base.back))
    return views


# ---------------------------------------------------------------------------------------------
# HTML entities and percent-encoding

_ENTITY_OR_PERCENT = re.compile(r"&(?:#[0-9]{1,7}|#[xX][0-9a-fA-F]{1,6}|[A-Za-z][A-Za-z0-9]{1,31});?"
                                r"|(?:%[0-9a-fA-F]{2})+")


def _decode_token(token: str) -> str:
    if token[0] == "%":
        try:
            return bytes.fromhex(token.replace("%", "")).decode("utf-8")
        except UnicodeDecodeError:
            return token  # not UTF-8: left as written
    if token[1] == "#" and token[2] != "x" and token[2] != "X":
        code = int(token[2:].rstrip(";"))  # the common case, without html.unescape's general path
        return chr(code) if 0 < code < 0x110000 and not 0xD800 <= code < 0xE000 else token
    return html.unescape(token)


def _has_entity_or_percent(text: str) -> bool:
    # Tried at each '&' and '%' only: a search with the pattern would start at every character.
    for marker in "&%":
        found = text.find(marker)
        while found != -1:
            if _ENTITY_OR_PERCENT.match(text, found):
                return True
            found = text.find(marker, found + 1)
    return False


def decoded(text: str) -> tuple[str, Edits] | None:
    """`text` with its HTML entities and percent-escapes decoded, or None when it has none."""
    if not _has_entity_or_percent(text):
        return None
    pieces, edits, last = [], [], 0
    for match in _ENTITY_OR_PERCENT.finditer(text):
        token = match.group()
        replacement = _decode_token(token)
        if replacement == token:
            continue
        pieces += [text[last:match.start()], replacement]
        edits.append((match.start(), match.end(), len(replacement)))
        last = match.end()
    if not edits:
        return None
    pieces.append(text[last:])
    return "".join(pieces), Edits(lambda: edits)


# ---------------------------------------------------------------------------------------------
# base64 and hex runs

# A run is at least 8 characters (6 bytes: "meth" takes 8 with its padding). Runs are found in
# skeletons of the UTF-8 bytes with `bytes.find` (no regex over the whole text): "l" for a lower-case
# letter, "X" for another base64 character, "h" for a hex digit, a space for any other byte.
_MIN_RUN = 8
_BASE64_CHARS = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/_-="
_HEX_CHARS = b"0123456789abcdefABCDEF"
_RUN_SKELETON = bytes(ord("l") if ord("a") <= byte <= ord("z") else ord("X") if byte in _BASE64_CHARS else ord(" ")
                      for byte in range(256))
_HEX_SKELETON = bytes(ord("h") if byte in _HEX_CHARS else ord(" ") for byte in range(256))
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_BASE64_URLSAFE = bytes.maketrans(b"-_", b"+/")


def _as_text(data: bytes) -> str | None:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return text if text.strip() and not _CONTROL.search(text) else None


def _from_base64(run: str) -> str | None:
    # Ordinary words are runs of letters too: base64 of text has a digit, '+', '/' or a capital
    # after the first character (one-case words are not decoded).
    if run[1:].islower() or (run[1:].isupper() and run.isalpha()):
        return None
    body = run.rstrip("=")
    if "=" in body or len(body) % 4 == 1:
        return None
    try:
        data = base64.b64decode(body.encode("ascii").translate(_BASE64_URLSAFE) + b"=" * (-len(body) % 4),
                                validate=True)
    except (binascii.Error, ValueError):
        return None
    return _as_text(data)


def encoded_runs(text: str) -> Iterator[tuple[int, int, str, str]]:
    """(start, end, decoded text, "base64" | "hex") of each run of `text` that decodes to text."""
    encoded = text.encode("utf-8", "surrogatepass")
    skeleton = encoded.translate(_RUN_SKELETON)
    at_byte = at_char = 0  # one place in both units, moved forward: converting stays linear
    ascii_only = len(encoded) == len(text)
    for start, end in _candidate_runs(skeleton):
        if ascii_only:
            at_char = start
        else:
            at_char += len(encoded[at_byte:start].decode("utf-8", "surrogatepass"))
            at_byte = start
        run = encoded[start:end].decode("ascii")
        is_hex = b" " not in encoded[start:end].translate(_HEX_SKELETON) and len(run) % 2 == 0
        decoded_text = _as_text(bytes.fromhex(run)) if is_hex else None
        if decoded_text is not None:
            yield at_char, at_char + len(run), decoded_text, "hex"
        elif (decoded_text := _from_base64(run)) is not None:
            yield at_char, at_char + len(run), decoded_text, "base64"


# A run of base64 characters with one other than a lower-case letter after its first: an encoded
# run has one ("cGlwZSBib21i"), an ordinary word none ("something", "Something").
_CANDIDATE_RUN = re.compile(rb"(?<![lX])[lX]l*X[lX]*")


def _candidate_runs(skeleton: bytes) -> Iterator[tuple[int, int]]:
    """(start, end) in bytes of the runs of at least `_MIN_RUN` base64 characters worth decoding."""
    for match in _CANDIDATE_RUN.finditer(skeleton):
        if match.end() - match.start() >= _MIN_RUN:
            yield match.span()


# ---------------------------------------------------------------------------------------------


class TextViews:
    """The views of one text, each made on first use."""

    def __init__(self, text: str) -> None:
        self.text = text

    @functools.cached_property
    def _stripped(self) -> tuple[str, Back | None]:
        stripped, edits = strip_marks(self.text)
        return stripped, edits.back if edits is not None else None

    @functools.cached_property
    def base(self) -> View:
        stripped, back = self._stripped
        return _normalized_view("text", normalize(stripped), back)

    def joined(self) -> View | None:
        stripped, back = self._stripped
        if stripped.isascii():
            return None
        runs = _symbols_between_letters(stripped)
        if not runs:
            return None
        pieces, last = [], 0
        for start, end, _ in runs:
            pieces.append(stripped[last:start])
            last = end
        pieces.append(stripped[last:])
        return _normalized_view("joined", normalize("".join(pieces)), Edits(lambda: runs).back_then(back))

    def leet(self) -> list[View]:
        return _leet_views(self.base)

    def reversed(self) -> View:
        base = self.base
        length = len(base.text)
        return View("reversed", base.text[::-1], lambda start, end: base.back(length - end, length - start))


def prepare() -> None:
    """Build the lookup tables now (~1 s) rather than on the first text that needs them."""
    _strip_table()
    _strippable()
    _bmp_marks()
    _bmp_symbols()


def _normalized_view(name: str, normalized: NormalizedText, back: Back | None) -> View:
    return View(name, normalized.text, _then(normalized.original_span, back))


def matching_form(text: str) -> str:
    """What `text` looks like in the plain view: how rule literals and allow phrases are spelled."""
    return TextViews(text).base.text
