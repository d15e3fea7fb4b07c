"""The shapes of CPython's regex syntax tree that filters/regex_syntax.py's callers rely on (the
blacklist's atoms and context, enforcement's hold-back reach): a Python whose private parser
changes fails here, by name, before it quietly weakens a blacklist."""

from __future__ import annotations

import re

import pytest

from filters import regex_syntax as syntax


def nodes(pattern: str) -> list[tuple[object, object]]:
    return list(syntax.parse(pattern))


def test_literals_are_one_node_a_character():
    assert nodes("ab") == [(syntax.LITERAL, ord("a")), (syntax.LITERAL, ord("b"))]


def test_alternation_is_a_branch_of_subpatterns():
    [(op, (_, branches))] = nodes("cook|make")
    assert op is syntax.BRANCH
    assert [[value for _, value in branch] for branch in branches] == [list(map(ord, "cook")), list(map(ord, "make"))]


def test_groups_and_repeats_carry_their_subpattern_where_the_walkers_look():
    [(op, value)] = nodes("(ab)")
    assert op is syntax.SUBPATTERN and isinstance(value[-1], syntax.SubPattern)
    for pattern, opcode in (("a{1,3}", syntax.MAX_REPEAT), ("a{1,3}?", syntax.MIN_REPEAT),
                            ("a{1,3}+", syntax.POSSESSIVE_REPEAT)):
        [(op, (low, high, child))] = nodes(pattern)
        assert (op, low, high, list(child)) == (opcode, 1, 3, [(syntax.LITERAL, ord("a"))])
    [(op, value)] = nodes("(?>ab)")
    assert op is syntax.ATOMIC_GROUP and isinstance(value, syntax.SubPattern)


def test_classes_ranges_anchors_and_lookarounds():
    [(op, items)] = nodes("[a-c]")
    assert op is syntax.IN and items == [(syntax.RANGE, (ord("a"), ord("c")))]
    assert nodes("^")[0] == (syntax.AT, syntax.AT_BEGINNING)
    assert nodes(r"\A")[0] == (syntax.AT, syntax.AT_BEGINNING_STRING)
    assert nodes("$")[0] == (syntax.AT, syntax.AT_END)
    assert nodes(r"\Z")[0] == (syntax.AT, syntax.AT_END_STRING)
    assert nodes("(?=a)")[0][0] is syntax.ASSERT
    assert nodes("(?!a)")[0][0] is syntax.ASSERT_NOT
    assert nodes("(a)(?(1)b|c)")[1][0] is syntax.GROUPREF_EXISTS


def test_match_widths():
    assert syntax.match_widths("ab?c") == (2, 3)
    assert syntax.match_widths("a{2,5}") == (2, 5)
    assert syntax.match_widths("a+")[1] > 10**6  # unbounded


def test_an_invalid_pattern_raises_re_error():
    with pytest.raises(re.error):
        syntax.parse("(unclosed")
