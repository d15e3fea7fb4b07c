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

from filters.normalize import NormalizedText, class_ranges, normalize, sparse_non_ascii_runs

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
    return "[" + class_ranges(codes) + "]"


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
    runs = sparse_non_ascii_runs(text)
    if runs is None:
        stripped = text.translate(_strip_table())
    else:  # translate() would look at every character of mostly-ASCII text: only its other runs
        pieces, last = [], 0
        for start, end in runs:
            pieces += [text[last:start], text[start:end].translate(_strip_table())]
            last = end
        pieces.append(text[last:])
        stripped = "".join(pieces)
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
_LEET_CHAR = re.compile(r"[0-9@$!|]")  # a set alone: a quicker test than the pattern above
# Runs left as they are: touching no letter ("455", "1.0.3"), or a closing "!" ("b0mb!").
_LEET_LEFT_ALONE = re.compile(r"(?<![a-z])[0-9@$!|]+(?![a-z])|(?<=[a-z])!+(?![a-z0-9@$|])")
_LEET = bytes.maketrans(b"01345789@$!|", b"oieastbgasil")
# '1' and '|' are 'i' in "k1ll" and 'l' in "bui1d": where they occur, a second reading.
_LEET_OTHER_READING = bytes.maketrans(b"01345789@$!|", b"oleastbgasii")
_AMBIGUOUS_LEET = frozenset("1|")


def _leet_views(base: View) -> list[View]:
    """The plain view with digits and symbols read as letters where they touch a letter ("p1p3",
    "m@ke", "$ynth"), and left as they are elsewhere ("455 tickets", "1.0.3", a closing "!")."""
    text = base.text
    if not _LEET_CHAR.search(text) or not _LEET_RUN.search(text):
        return []
    # Everything read as letters (one translate), then the runs that touch no letter put back:
    # in leetspeak they are few, in prose they are its numbers.
    kept = [(match.start(), match.group()) for match in _LEET_LEFT_ALONE.finditer(text)]
    # On the UTF-8 bytes: bytes.translate is a table lookup per byte, str.translate of text with
    # any non-ASCII character a dictionary lookup per character. Leet characters and their letters
    # are ASCII, which UTF-8 never uses inside another character.
    encoded = text.encode("utf-8", "surrogatepass")
    readings = [encoded.translate(_LEET)]
    if any(char in text for char in _AMBIGUOUS_LEET):
        readings.append(encoded.translate(_LEET_OTHER_READING))
    return [View("leet", _put_back(reading.decode("utf-8", "surrogatepass"), kept), base.back)
            for reading in readings]


def _put_back(text: str, kept: list[tuple[int, str]]) -> str:
    if not kept:
        return text
    pieces, last = [], 0
    for start, original in kept:
        pieces += [text[last:start], original]
        last = start + len(original)
    pieces.append(text[last:])
    return "".join(pieces)


# ---------------------------------------------------------------------------------------------
# HTML entities, percent-encoding and escape sequences

# Escapes as JSON, JavaScript and Python write them ("\u5236\u4f5c", "\x70\x69"): a client's JSON
# parser decodes those in a model's tool-call arguments, and a model reads through them in a prompt.
_ENTITY_OR_PERCENT = re.compile(r"&(?:#[0-9]{1,7}|#[xX][0-9a-fA-F]{1,6}|[A-Za-z][A-Za-z0-9]{1,31});?"
                                r"|(?:%[0-9a-fA-F]{2})+|(?:\\u[0-9a-fA-F]{4})+|(?:\\x[0-9a-fA-F]{2})+")


def _decode_token(token: str) -> str:
    if token[0] in "%\\":
        if token[1] == "u":  # UTF-16 code units: a pair of surrogates is one character
            units = bytes.fromhex(token.replace("\\u", ""))
            return units.decode("utf-16-be", "surrogatepass") if len(units) % 2 == 0 else token
        try:
            return bytes.fromhex(token.replace("%", "").replace("\\x", "")).decode("utf-8")
        except UnicodeDecodeError:
            return token  # not UTF-8: left as written
    if token[1] == "#" and token[2] != "x" and token[2] != "X":
        code = int(token[2:].rstrip(";"))  # the common case, without html.unescape's general path
        return chr(code) if 0 < code < 0x110000 and not 0xD800 <= code < 0xE000 else token
    return html.unescape(token)


def _has_entity_or_percent(text: str) -> bool:
    # Tried at each '&' and '%' only: a search with the pattern would start at every character.
    for marker in "&%\\":
        found = text.find(marker)
        while found != -1:
            if _ENTITY_OR_PERCENT.match(text, found):
                return True
            found = text.find(marker, found + 1)
    return False


def decoded(text: str) -> tuple[str, Edits] | None:
    """`text` with its HTML entities, percent-escapes and \\u / \\x escapes decoded, or None when it has none."""
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
# skeletons of the UTF-8 bytes, mostly with `bytes.find` (no regex over the whole text): "l" for a
# lower-case letter, "U" for an upper-case one, "d" for another base64 character (digits, "+/=_-"),
# "h" for a hex digit, a space for any other byte.
_MIN_RUN = 8
_BASE64_CHARS = b"0123456789+/_-="
_HEX_CHARS = b"0123456789abcdefABCDEF"
_RUN_SKELETON = bytes(ord("l") if ord("a") <= byte <= ord("z") else ord("U") if ord("A") <= byte <= ord("Z")
                      else ord("d") if byte in _BASE64_CHARS else ord(" ") for byte in range(256))
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
    for start, end, kind in _candidate_runs(encoded, skeleton):
        if ascii_only:
            at_char = start
        else:
            at_char += len(encoded[at_byte:start].decode("utf-8", "surrogatepass"))
            at_byte = start
        run = encoded[start:end].decode("ascii")
        decoded_text = _as_text(bytes.fromhex(run)) if kind == "hex" else _from_base64(run)
        if decoded_text is not None:
            yield at_char, at_char + len(run), decoded_text, kind


# A base64 run of text has an upper-case letter after its first character and a lower-case one
# ("cGlwZSBib21i", "bWV0aA=="); ordinary words ("something", "Something") and leetspeak ("d3f1n3d")
# do not. `re` is asked only when the skeleton has such a pair at all.
_BASE64_CANDIDATE = re.compile(rb"(?<![lUd])[lUd][ld]*U[lUd]*")


def _candidate_runs(encoded: bytes, skeleton: bytes) -> list[tuple[int, int, str]]:
    """(start, end, kind) in bytes of the runs worth decoding, in order."""
    runs = []
    if b"lU" in skeleton or b"UU" in skeleton or b"dU" in skeleton:
        runs += [(*match.span(), "base64") for match in _BASE64_CANDIDATE.finditer(skeleton)
                 if match.end() - match.start() >= _MIN_RUN and b"l" in match.group()]
    hex_skeleton = encoded.translate(_HEX_SKELETON)
    found = hex_skeleton.find(b"h" * _MIN_RUN)
    while found != -1:
        start, end = hex_skeleton.rfind(b" ", 0, found) + 1, hex_skeleton.find(b" ", found)
        end = len(hex_skeleton) if end == -1 else end
        whole = (start == 0 or skeleton[start - 1] == 32) and (end == len(skeleton) or skeleton[end] == 32)
        if whole and (end - start) % 2 == 0:
            runs.append((start, end, "hex"))
        found = hex_skeleton.find(b"h" * _MIN_RUN, end)
    hex_spans = {(start, end) for start, end, kind in runs if kind == "hex"}
    # A run of hex digits that is also a base64 candidate is tried as hex.
    return sorted(run for run in runs if run[2] == "hex" or run[:2] not in hex_spans)


# ---------------------------------------------------------------------------------------------


class TextViews:
    """The views of one text: the plain one at once, the others when asked for."""

    def __init__(self, text: str) -> None:
        self.text = text
        stripped, edits = strip_marks(text)
        self._stripped = stripped, edits.back if edits is not None else None
        self.base = _normalized_view("text", normalize(stripped), self._stripped[1])

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
