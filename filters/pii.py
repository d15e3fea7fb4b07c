"""Personal data and secrets in free text (English and Chinese): find them, or mask them.

Everything written to the audit log or to logs goes through `redact_pii` first, which replaces each
match with its kind in brackets ("call 13812345678" → "call [PHONE]"); `find_pii` gives the spans.

Kinds, in `KINDS` order (on overlapping matches the longer wins, on equal length the earlier kind):

- email: ASCII addresses, plus tags and subdomains included, also glued to Chinese text.
- phone: Chinese mobiles (1[3-9] + 9 digits, optional +86/0086/86, space or hyphen separators);
  international numbers written with "+" (8 to 15 digits, E.164); North American (415) 555-0132,
  415-555-0132, 1-800-555-0199.
- cn_id: resident identity numbers (GB 11643-1999): a region code not starting with 0 and a real
  birth date from 1900-01-01 up to today. The MOD 11-2 check character is not required: a mistyped
  number is still somebody's, and masking is what the match is for (18 digits with a real date in
  the middle are rare otherwise).
- bank_card: 13 to 19 digits, unbroken or in groups split by single spaces or hyphens, passing Luhn.
- ip: IPv4 (octets 0-255) and IPv6 (checked by `ipaddress`).
- secret: well-known token formats (OpenAI, wardgate, AWS access key ids, GitHub, Slack, Google API
  keys, JWTs, PEM private keys), the token after "Bearer", and the value of an assignment to a
  secret-looking name (`api_key=…`, `"password": "…"`, `密码：…`, `密码是…`); for the last two
  only the value is masked.

Digits are read as written in two more ways before matching: full-width digits ("１３８…") as ASCII
digits everywhere, and digits spaced apart ("1101 0519 4912 3100 12", "1 3 8 1 2 3 4 5 6 7 8", with
ASCII, no-break or ideographic spaces, up to three between two digits) as one number for resident IDs
and Chinese mobiles. A match found so covers the original span, spaces included.

Numbers count only when not glued to an ASCII letter or digit, nor continuing a dotted number
(a decimal, a version, a longer dotted quad); `\\b` is no use, CJK characters being word characters
("手机13812345678联系" has a phone). Phones also refuse a hyphen and digit on either side.

Limits, deliberate:

- Patterns and checksums only, no model: names, postal addresses and free-form secrets ("my
  password is the dog's name") are not found.
- Digits: ASCII and full-width only (no other scripts' digits); spaced-apart digits only for resident
  IDs and Chinese mobiles (cards have their own grouping rule below), and a list of single digits that
  happens to spell a valid one when joined is masked.
- Phones: no landlines without "+", no dotted forms (415.555.0132), no national formats other
  than Chinese mobiles and North American numbers.
- Cards: about one digit run in ten passes Luhn, so a 13-19 digit number that is no card (an ID,
  a millisecond timestamp) is masked one time in ten. In a run of digit groups, cards are taken left
  to right, each the longest run of whole groups that validates.
- IPv4: a four-part version number (1.2.3.4) looks like an address and is masked. IPv6: only
  candidates with a decimal digit (not "a::b", "cafe::babe"), without a zone index.
- Secrets: an assignment's value is the quoted string on the same line or the next run of ASCII
  characters other than spaces, quotes, `,;&` and brackets, so in prose "Password: must be long"
  masks "must"; a "Bearer" token needs 8 characters with a digit.

Speed: every pattern runs in linear time (each repetition is bounded, or stops at a character it
cannot contain, or starts only where a lookbehind on its own characters allows), and a pattern that
needs a character the text lacks is skipped. On a small 2-core VM, 10,000 characters take about
1 ms as prose, about 3 ms dense with PII, and up to about 8 ms when adversarial (all digits, 2,000
digit groups, "a@a@…").
"""

from __future__ import annotations

import ipaddress
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import date

import regex

KINDS = ("email", "phone", "cn_id", "bank_card", "ip", "secret")


@dataclass(frozen=True, slots=True)
class PiiMatch:
    kind: str  # one of KINDS
    start: int  # offsets into the text given
    end: int


# Number boundaries (see the module docstring).
_L = r"(?<![0-9A-Za-z]|[0-9]\.)"
_R = r"(?![0-9A-Za-z]|\.[0-9])"
# A hyphen and digit next to a phone make it part of a longer code (a serial, a date and a number).
_PHONE_L = r"(?<![0-9A-Za-z]|[0-9][.-])"
_PHONE_R = r"(?![0-9A-Za-z]|[.-][0-9])"

# Matched from the "@" (the local part is a lookbehind), so that only "@"s start an attempt. Up to 16
# domain labels: an unbounded repetition of them backtracks in quadratic time ("a@a.a.a.a…").
_EMAIL = (
    r"(?<=(?<![A-Za-z0-9._%+-])(?P<local>[A-Za-z0-9._%+-]+))@"
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.){1,16}[A-Za-z]{2,63}(?![A-Za-z0-9-])"
)
_CN_MOBILE = _PHONE_L + r"(?:(?:\+86|0086|\(\+?86\)|86)[ -]?)?1[3-9][0-9](?:[ -]?[0-9]{4}){2}" + _PHONE_R
# Country code and number; a trunk prefix or area code may be in brackets: +44 (0)20 7946 0958. The
# lookahead (8 digits) spares the validator most short "+n" in text.
_INTERNATIONAL = (
    _PHONE_L
    + r"\+(?=(?:[ ()-]{0,2}[0-9]){8})[1-9][0-9]{0,14}(?:[ -]?\([0-9]{1,4}\)[ -]?[0-9]{1,6})?(?:[ -][0-9]{1,6}){0,6}"
    + _PHONE_R
)
# The lookahead lets the engine skip to candidate characters (a leading optional group hides them).
_NORTH_AMERICAN = (
    r"(?=[0-9(])"
    + _PHONE_L
    + r"(?:1[ -])?(?:\([2-9][0-9]{2}\) ?|[2-9][0-9]{2}[ -])[2-9][0-9]{2}[ -][0-9]{4}"
    + _PHONE_R
)
_CN_ID = _L + r"[1-9][0-9]{16}[0-9Xx]" + _R
# A run of digit groups; _card_spans picks the cards in it.
_DIGIT_GROUPS = _L + r"[0-9]{3,19}(?:[ -][0-9]{3,19})*" + _R
_IPV4 = _L + r"[0-9]{1,3}(?:\.[0-9]{1,3}){3}" + _R
# Colon-separated hex groups, maybe ending in an IPv4 address; ipaddress decides.
_IPV6 = (
    r"(?<![0-9A-Za-z:.])(?:[0-9A-Fa-f]{0,4}:){2,8}(?:[0-9]{1,3}(?:\.[0-9]{1,3}){3}|[0-9A-Fa-f]{1,4})?"
    r"(?![0-9A-Za-z:]|\.[0-9])"
)
_TOKEN_CHARS = "A-Za-z0-9_-"
_TOKENS = (
    rf"(?<![{_TOKEN_CHARS}])(?:"
    # An "sk-" slug without a digit is a word ("sk-learn-compatible-estimators"), not a key.
    r"sk-(?=[A-Za-z0-9_-]*[0-9])[A-Za-z0-9_-]{20,}"
    r"|wg-[A-Za-z0-9_-]{43}"
    r"|(?:AKIA|ASIA)[A-Z0-9]{16}"
    r"|gh[opusr]_[A-Za-z0-9]{36,255}"
    r"|github_pat_[A-Za-z0-9_]{22,255}"
    r"|xox[abprs]-[A-Za-z0-9-]{10,250}"
    r"|AIza[A-Za-z0-9_-]{35}"
    r"|eyJ[A-Za-z0-9_-]{5,}\.eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*"
    rf")(?![{_TOKEN_CHARS}])"
)
# A block cut short (a truncated log line) still masks the base64 lines that follow its BEGIN line.
_PEM_MARK = r"(?:[A-Z0-9]+ )*PRIVATE KEY-----"
_PEM = rf"-----BEGIN {_PEM_MARK}(?:(?s:.){{0,16384}}?-----END {_PEM_MARK}|(?:\s+[A-Za-z0-9+/=]{{16,}})*)"
_BEARER = (
    r"(?<![A-Za-z0-9_-])(?i:bearer)[ \t]+(?P<v>(?=[A-Za-z0-9._~+/-]*[0-9])[A-Za-z0-9._~+/-]{8,}=*)"
    r"(?![A-Za-z0-9._~+/=-])"
)
# A secret-looking name, maybe at the end of a longer identifier (OPENAI_API_KEY, x-api-key,
# db_password, clientSecret). After the keyword only a few words that keep it a secret
# (AWS_SECRET_ACCESS_KEY, secretKey, password_hash): "token_count", "token_type", "tokenizer" and
# "max_tokens" are no names.
_SECRET_NAME = (
    r"(?:(?i:api[_-]?key|access[_-]?key|private[_-]?key|secret|token|passw(?:or)?d|passphrase|pwd|credentials?)"
    r"(?:[_.-]?(?i:access|key|id|value|hash|b64|base64)){0,3}[\"']?[ \t]*(?:[:=]=?|：)"
    r"|(?:密码|口令|密钥|秘钥|令牌)[ \t]*(?:[:=：]|是|为))"
)
# The value: a quoted string (its closing quote may be cut off), or a run of ASCII characters other
# than spaces, quotes, ",;&" and brackets, without a trailing dot. Placeholders ("[SECRET]",
# "<redacted>", "(none)") start with a bracket and stay, so redacting twice changes nothing.
_UNQUOTED_VALUE = r"[A-Za-z0-9!#$%*+\-./:=?@\\^_|~]*[A-Za-z0-9!#$%*+\-/:=?@\\^_|~]"
_ASSIGNMENT = (
    _SECRET_NAME + r"[ \t]*"
    r"(?:\"(?P<v>(?:[^\"\\\r\n]|\\.)+)\"?|'(?P<v>(?:[^'\\\r\n]|\\.)+)'?|(?P<v>" + _UNQUOTED_VALUE + "))"
)


def _valid_cn_id(number: str) -> bool:
    try:
        born = date(int(number[6:10]), int(number[10:12]), int(number[12:14]))
    except ValueError:
        return False
    return date(1900, 1, 1) <= born <= date.today()


_GROUP = regex.compile(r"[0-9]+")


def _luhn(digits: str) -> bool:
    total = 0
    for position, char in enumerate(reversed(digits)):
        digit = ord(char) - 48
        if position % 2:  # every second digit from the right is doubled, and its digits added (7 → 14 → 5)
            digit = digit * 2 - 9 if digit > 4 else digit * 2
        total += digit
    return total % 10 == 0


def _card_spans(match: regex.Match[str]) -> Iterator[tuple[int, int]]:
    """Left to right, the longest run of whole groups with 13-19 digits passing Luhn, then the same after it."""
    if match.end() - match.start() < 13:  # too short even without separators
        return
    groups = [(group.start(), group.end(), group.group()) for group in _GROUP.finditer(match.string, *match.span())]
    first = 0
    while first < len(groups):
        digits = ""
        last = -1
        for i in range(first, len(groups)):
            digits += groups[i][2]
            if len(digits) > 19:
                break
            if len(digits) >= 13 and _luhn(digits):
                last = i
        if last < 0:
            first += 1
        else:
            yield groups[first][0], groups[last][1]
            first = last + 1


def _international_ok(number: str) -> bool:
    return 8 <= sum(char.isdigit() for char in number) <= 15


def _ipv4_ok(address: str) -> bool:
    return all(int(octet) <= 255 for octet in address.split("."))


def _ipv6_ok(address: str) -> bool:
    if not any(char.isdigit() for char in address):
        return False
    try:
        ipaddress.IPv6Address(address)
    except ValueError:
        return False
    return True


_Spans = Callable[[regex.Match[str]], Iterator[tuple[int, int]]]


def _whole(valid: Callable[[str], bool] | None = None) -> _Spans:
    def spans(match: regex.Match[str]) -> Iterator[tuple[int, int]]:
        if valid is None or valid(match.group()):
            yield match.span()

    return spans


def _address(match: regex.Match[str]) -> Iterator[tuple[int, int]]:
    yield match.start("local"), match.end()


def _value(match: regex.Match[str]) -> Iterator[tuple[int, int]]:
    yield match.span("v")


@dataclass(frozen=True, slots=True)
class _Pattern:
    rank: int  # index into KINDS
    pattern: regex.Pattern[str]
    spans: _Spans
    # The pattern can only match a text containing one of these (in the text as it is, or lower-cased).
    needs: tuple[str, ...] = ()
    needs_folded: tuple[str, ...] = ()


def _pattern(kind: str, pattern: str, spans: _Spans, needs: tuple[str, ...] = (),
             needs_folded: tuple[str, ...] = ()) -> _Pattern:
    return _Pattern(KINDS.index(kind), regex.compile(pattern), spans, needs, needs_folded)


_DIGITS = tuple("0123456789")
# Each candidate pattern runs on its own, so that overlapping candidates of different patterns all
# compete (an assignment's value "Bearer" and the token after it, a rejected +number and the North
# American number inside it).
_PATTERNS = (
    _pattern("email", _EMAIL, _address, ("@",)),
    _pattern("phone", _CN_MOBILE, _whole(), _DIGITS),
    _pattern("phone", _INTERNATIONAL, _whole(_international_ok), ("+",)),
    _pattern("phone", _NORTH_AMERICAN, _whole(), _DIGITS),
    _pattern("cn_id", _CN_ID, _whole(_valid_cn_id), _DIGITS),
    _pattern("bank_card", _DIGIT_GROUPS, _card_spans, _DIGITS),
    _pattern("ip", _IPV4, _whole(_ipv4_ok), (".",)),
    _pattern("ip", _IPV6, _whole(_ipv6_ok), (":",)),
    # Most texts have none of these prefixes or names: checking for them first spares the three
    # scans that would otherwise run on every text (two thirds of the time on plain prose).
    _pattern("secret", _TOKENS, _whole(), ("sk-", "wg-", "AKIA", "ASIA", "_", "xox", "AIza", "eyJ")),
    _pattern("secret", _PEM, _whole(), ("-----BEGIN",)),
    _pattern("secret", _BEARER, _value, needs_folded=("bearer",)),
    _pattern("secret", _ASSIGNMENT, _value, needs_folded=("key", "secret", "token", "pass", "pwd", "credential",
                                                          "密码", "口令", "密钥", "秘钥", "令牌")),
)


# Full-width digits are ASCII digits to every pattern; one code point each, so offsets stay as they are.
_FULL_WIDTH_DIGIT = regex.compile("[\uff10-\uff19]")
_AS_ASCII_DIGITS = str.maketrans({0xFF10 + digit: 0x30 + digit for digit in range(10)})
# Spaces between two digits, dropped in the joined view of a text.
_DIGIT_GAP = regex.compile("(?<=[0-9])[ \t\u00a0\u3000]{1,3}(?=[0-9])")
# The patterns that also run on that view: numbers people write spaced apart in no fixed grouping.
_SPACED_PATTERNS = (_pattern("phone", _CN_MOBILE, _whole()), _pattern("cn_id", _CN_ID, _whole(_valid_cn_id)))


def _joined_offsets(text: str) -> Callable[[int], int]:
    """Maps an offset in `text` with its digit gaps dropped back to `text` (built only once something
    was found there: it is the costly part, a Python step per gap)."""
    at, dropped, total = [], [], 0
    for match in _DIGIT_GAP.finditer(text):
        at.append(match.start() - total)  # where the gap was, in the joined text
        total += match.end() - match.start()
        dropped.append(total)  # characters dropped up to and including it

    def original(offset: int) -> int:
        gaps_before = bisect_right(at, offset)
        return offset + (dropped[gaps_before - 1] if gaps_before else 0)

    return original


def find_pii(text: str) -> list[PiiMatch]:
    """Non-overlapping matches sorted by start (on overlap the longer wins; same length: the earlier kind in KINDS)."""
    if _FULL_WIDTH_DIGIT.search(text):
        text = text.translate(_AS_ASCII_DIGITS)
    candidates: list[tuple[int, int, int]] = []
    folded = None
    # Several patterns share their needles (the digits): look for each set once per text.
    present: dict[tuple[str, ...], bool] = {}
    for entry in _PATTERNS:
        if entry.needs:
            found = present.get(entry.needs)
            if found is None:
                found = present[entry.needs] = any(needle in text for needle in entry.needs)
            if not found:
                continue
        if entry.needs_folded:
            folded = text.lower() if folded is None else folded
            if not any(needle in folded for needle in entry.needs_folded):
                continue
        for match in entry.pattern.finditer(text):
            candidates.extend((start, end, entry.rank) for start, end in entry.spans(match))
    if present.get(_DIGITS) and _DIGIT_GAP.search(text):
        joined = _DIGIT_GAP.sub("", text)
        found = [(start, end, entry.rank) for entry in _SPACED_PATTERNS for match in entry.pattern.finditer(joined)
                 for start, end in entry.spans(match)]
        if found:
            original = _joined_offsets(text)
            candidates.extend((original(start), original(end - 1) + 1, rank) for start, end, rank in found)
    # Greedy by length, then kind, then position; `chosen` stays sorted by start.
    chosen: list[tuple[int, int, int]] = []
    starts: list[int] = []
    for start, end, rank in sorted(candidates, key=lambda c: (c[0] - c[1], c[2], c[0])):
        i = bisect_left(starts, start)
        if (i > 0 and chosen[i - 1][1] > start) or (i < len(chosen) and chosen[i][0] < end):
            continue
        starts.insert(i, start)
        chosen.insert(i, (start, end, rank))
    return [PiiMatch(KINDS[rank], start, end) for start, end, rank in chosen]


def redact_pii(text: str) -> str:
    """`text` with every match replaced by `[KIND]` in upper case: [EMAIL], [PHONE], [CN_ID], [BANK_CARD], [IP],
    [SECRET]. A text without matches comes back as the same object."""
    matches = find_pii(text)
    if not matches:
        return text
    parts: list[str] = []
    position = 0
    for match in matches:
        parts += (text[position : match.start], f"[{match.kind.upper()}]")
        position = match.end
    parts.append(text[position:])
    return "".join(parts)
