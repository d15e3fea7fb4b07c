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


def _runs(pattern: re.Pattern[str], text: str, replacement_length: int = 0) -> Callable[[], list[tuple[int, int, int]]]:
    return lambda: [(match.start(), match.end(), replacement_length) for match in pattern.finditer(text)]


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


@functools.cache
def _marks() -> re.Pattern[str]:
    """Every combining mark, in and beyond the BMP."""
    codes = [code for code in range(0x110000) if unicodedata.category(chr(code)) in ("Mn", "Me")]
    return re.compile(_class_of(codes) + "+")


_ASTRAL = re.compile("[\U00010000-\U0010ffff]")


def strip_marks(text: str) -> tuple[str, Edits | None]:
    """`text` without combining marks and accents, and the edits (None: nothing was deleted)."""
    if text.isascii():
        return text, None
    stripped = text.translate(_strip_table())
    if _ASTRAL.search(stripped):
        stripped = _marks().sub("", stripped)  # the table covers the BMP
    if len(stripped) == len(text):
        return stripped, None  # accents replaced one for one, nothing deleted
    return stripped, Edits(_runs(_marks(), text), marks=True)


# ---------------------------------------------------------------------------------------------
# Symbols between letters


@functools.cache
def _symbols_between_letters() -> re.Pattern[str]:
    """A run of non-ASCII symbols (emoji, dingbats, their modifiers and joiners) between two letters."""
    codes = [code for code in range(0x80, 0x110000)
             if unicodedata.category(chr(code)) in ("So", "Sk") or code in (0x200D, 0xFE0F, 0xFE0E)]
    return re.compile(rf"(?<=[^\W\d_]){_class_of(codes)}+(?=[^\W\d_])")


# ---------------------------------------------------------------------------------------------
# Leetspeak

_LEET_CHARS = "0-9@$!|"
# A word with a letter and a digit or symbol; a '!' at its end is punctuation ("b0mb!").
_LEET_WORD = re.compile(rf"(?<![a-z{_LEET_CHARS}])(?=[a-z]*[{_LEET_CHARS}])(?=[{_LEET_CHARS}]*[a-z])"
                        rf"[a-z{_LEET_CHARS}]*[a-z0-9@$|]")
_LEET = str.maketrans({"0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "7": "t", "8": "b", "9": "g", "@": "a",
                       "$": "s", "!": "i", "|": "l"})
# '1' and '|' are 'i' in "k1ll" and 'l' in "bui1d": where they occur, a second reading.
_LEET_OTHER_READING = str.maketrans({"1": "l", "|": "i"})
_AMBIGUOUS_LEET = frozenset("1|")


def _leet_views(base: View) -> list[View]:
    if not _LEET_WORD.search(base.text):
        return []
    ambiguous = False

    def read(match: re.Match[str]) -> str:
        nonlocal ambiguous
        word = match.group()
        ambiguous = ambiguous or not _AMBIGUOUS_LEET.isdisjoint(word)
        return word.translate(_LEET)

    views = [View("leet", _LEET_WORD.sub(read, base.text), base.back)]
    if ambiguous:
        other = _LEET_WORD.sub(lambda match: match.group().translate(_LEET_OTHER_READING).translate(_LEET), base.text)
        views.append(View("leet", other, base.back))
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


def decoded(text: str) -> tuple[str, Edits] | None:
    """`text` with its HTML entities and percent-escapes decoded, or None when it has none."""
    if ("&" not in text and "%" not in text) or not _ENTITY_OR_PERCENT.search(text):
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

# At least 8 characters (6 bytes: "meth" takes 8 with its padding); '=' only as padding.
_BASE64_RUN = re.compile(r"(?<![A-Za-z0-9+/_=-])[A-Za-z0-9+/_-]{8,}={0,2}(?![A-Za-z0-9+/_=-])")
_HEX_RUN = re.compile(r"(?<![0-9A-Za-z])(?:[0-9a-fA-F]{2}){4,}(?![0-9A-Za-z])")
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
    if run[1:].islower() or run[1:].isupper() and run.isalpha():
        return None
    body = run.rstrip("=")
    if len(body) % 4 == 1:
        return None
    try:
        data = base64.b64decode(body.encode("ascii").translate(_BASE64_URLSAFE) + b"=" * (-len(body) % 4),
                                validate=True)
    except (binascii.Error, ValueError):
        return None
    return _as_text(data)


def encoded_runs(text: str) -> Iterator[tuple[int, int, str, str]]:
    """(start, end, decoded text, "base64" | "hex") of each run of `text` that decodes to text."""
    hex_spans = set()
    for match in _HEX_RUN.finditer(text):
        decoded_text = _as_text(bytes.fromhex(match.group()))
        if decoded_text is not None:
            hex_spans.add(match.span())
            yield match.start(), match.end(), decoded_text, "hex"
    for match in _BASE64_RUN.finditer(text):
        if match.span() in hex_spans:
            continue
        decoded_text = _from_base64(match.group())
        if decoded_text is not None:
            yield match.start(), match.end(), decoded_text, "base64"


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
        pattern = _symbols_between_letters()
        if not pattern.search(stripped):
            return None
        joined = pattern.sub("", stripped)
        return _normalized_view("joined", normalize(joined), Edits(_runs(pattern, stripped)).back_then(back))

    def leet(self) -> list[View]:
        return _leet_views(self.base)

    def reversed(self) -> View:
        base = self.base
        length = len(base.text)
        return View("reversed", base.text[::-1], lambda start, end: base.back(length - end, length - start))


def _normalized_view(name: str, normalized: NormalizedText, back: Back | None) -> View:
    return View(name, normalized.text, _then(normalized.original_span, back))


def matching_form(text: str) -> str:
    """What `text` looks like in the plain view: how rule literals and allow phrases are spelled."""
    return TextViews(text).base.text
