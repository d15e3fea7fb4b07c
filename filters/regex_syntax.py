"""CPython's regular-expression parser: the one place wardgate reads it.

The blacklist finds each regex's literal atoms (the strings every match contains) and its context
(anchors, lookarounds) from the pattern's syntax tree, and enforcement sizes a stream's hold-back
from a pattern's longest match. Neither the standard library nor the `regex` package offers a public
parser; `re._parser` is CPython's own, private, and it moved once (`sre_parse` before 3.11). So it is
imported here only, for the Python versions pyproject.toml allows, and tests/test_regex_syntax.py
pins every shape the callers rely on: a Python whose parser changes fails those tests first.
"""

from __future__ import annotations

import re._constants as _constants
import re._parser as _parser

SubPattern = _parser.SubPattern

# The node kinds the callers walk (each node of a SubPattern is an (opcode, value) pair).
LITERAL = _constants.LITERAL
IN = _constants.IN
RANGE = _constants.RANGE
AT = _constants.AT
ASSERT = _constants.ASSERT
ASSERT_NOT = _constants.ASSERT_NOT
SUBPATTERN = _constants.SUBPATTERN
MAX_REPEAT = _constants.MAX_REPEAT
MIN_REPEAT = _constants.MIN_REPEAT
POSSESSIVE_REPEAT = _constants.POSSESSIVE_REPEAT
BRANCH = _constants.BRANCH
ATOMIC_GROUP = _constants.ATOMIC_GROUP
GROUPREF_EXISTS = _constants.GROUPREF_EXISTS
AT_BEGINNING = _constants.AT_BEGINNING
AT_BEGINNING_STRING = _constants.AT_BEGINNING_STRING
AT_END = _constants.AT_END
AT_END_STRING = _constants.AT_END_STRING


def parse(pattern: str) -> SubPattern:
    """The syntax tree of `pattern` (re.error if it is not a valid pattern)."""
    return _parser.parse(pattern)


def match_widths(pattern: str) -> tuple[int, int]:
    """The fewest and the most characters a match of `pattern` can span (the most is capped by the
    parser at a large number for unbounded repeats)."""
    low, high = parse(pattern).getwidth()
    return low, high
