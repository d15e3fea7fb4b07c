"""filters/blacklist: one automaton pass, regexes only where their atom occurs, spans in the original."""

from __future__ import annotations

import pytest

from filters.blacklist import Blacklist, Rule, RuleError, literal_atom

RULES = [
    Rule("weapons.bomb", "illegal", "block", literals=("bomb", "炸弹"),
         regexes=(r"how to (make|build) an? (pipe )?bomb",)),
    Rule("profanity.ass", "harassment", "flag", literals=("ass",)),
    Rule("violence.kill", "violence", "block", literals=("kill",), allow=("kill process", "kill -9")),
    Rule("pii.card", "pii", "redact", regexes=(r"\b\d{4}([ -]?)\d{4}\1\d{4}\1\d{4}\b",)),
    Rule("cn.falungong", "illegal", "block", literals=("法轮功",)),
]


@pytest.fixture(scope="module")
def blacklist() -> Blacklist:
    return Blacklist(RULES)


def rule_ids(blacklist: Blacklist, text: str) -> list[str]:
    return [match.rule_id for match in blacklist.scan(text)]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("where can I buy a bomb", ["weapons.bomb"]),
        ("ＢＯＭＢ", ["weapons.bomb"]),
        ("b.o.m.b", ["weapons.bomb"]),
        ("b\u200bomb", ["weapons.bomb"]),
        ("教我做炸彈", ["weapons.bomb"]),
        ("炸 - 弹", ["weapons.bomb"]),
        ("法 輪 功", ["cn.falungong"]),
        ("I will kіll you", ["violence.kill"]),  # Cyrillic і
        ("a bombastic speech about class", []),  # whole words only for Latin terms
        ("kill process 42 and kill -9 it", []),  # allow-list
        ("今天天气很好", []),
    ],
)
def test_literals_match_through_disguises(blacklist, text, expected):
    assert sorted(set(rule_ids(blacklist, text))) == expected


def test_regex_runs_only_when_its_atom_occurs_and_reports_the_original_span(blacklist):
    matches = blacklist.scan("Tell me how to build a pipe ＢＯＭＢ please")
    regex_hits = [m for m in matches if m.end - m.start > len("bomb")]
    assert [m.rule_id for m in regex_hits] == ["weapons.bomb"]
    assert regex_hits[0].matched == "how to build a pipe ＢＯＭＢ"


def test_regex_without_atom_is_reported_slow_and_still_matches(blacklist):
    assert blacklist.slow_patterns == [("pii.card", RULES[3].regexes[0])]
    [card] = blacklist.scan("my card is 4111 1111 1111 1111, thanks")
    assert (card.rule_id, card.action, card.matched) == ("pii.card", "redact", "4111 1111 1111 1111")
    original = "my card is 4111 1111 1111 1111, thanks"
    assert original[card.original_start:card.original_end] == "4111 1111 1111 1111"


@pytest.mark.parametrize(
    ("pattern", "atom"),
    [
        (r"how to (make|build) a big bomb", " a big bomb"),
        (r"(?:buy|sell) cocaine", " cocaine"),
        (r"\d{16}", None),
        (r"kill(ing)?", "kill"),
        (r"(ab)+cde", "cde"),
        (r"炸.?弹", "炸"),
        (r"\p{Han}+", None),  # regex-only syntax: no atom, runs always
    ],
)
def test_literal_atom(pattern, atom):
    assert literal_atom(pattern) == atom


def test_bad_rules_are_refused_with_their_id():
    with pytest.raises(RuleError, match="rule r1: invalid regex"):
        Blacklist([Rule("r1", "x", "block", regexes=("(unclosed",))])
    with pytest.raises(RuleError, match="used twice"):
        Blacklist([Rule("r1", "x", "block", literals=("a",)), Rule("r1", "y", "flag", literals=("b",))])
    with pytest.raises(RuleError, match="empty once normalised"):
        Blacklist([Rule("r2", "x", "block", literals=("\u200b",))])


def test_many_literals_share_one_pass():
    rules = [Rule(f"r{i}", "test", "flag", literals=(f"term{i}x",)) for i in range(5000)]
    blacklist = Blacklist(rules)
    assert sorted(rule_ids(blacklist, "nothing here but term4321x and term17x.")) == ["r17", "r4321"]
