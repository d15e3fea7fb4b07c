"""filters/blacklist: one automaton pass, regexes only where their atom occurs, spans in the original."""

from __future__ import annotations

import pytest

from filters.blacklist import Blacklist, Rule, RuleError, literal_atoms
from filters.normalize import normalize

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
    ("pattern", "atoms"),
    [
        (r"how to (make|build) a big bomb", {"how to make a big bomb", "how to build a big bomb"}),
        (r"(?:buy|sell) cocaine", {"buy cocaine", "sell cocaine"}),
        (r"\d{16}", None),  # \d is any Unicode digit: no finite set of literals
        (r"kill(ing)?", {"kill"}),  # "killing" contains "kill": redundant
        (r"(ab)+cde", {"abcde"}),
        (r"炸.?弹", {"炸"}),
        (r"\p{Han}+", None),  # regex-only syntax: no atoms, runs always
        (r"[[a-z]--[aeiou]]x", None),  # a set operation to `regex`, a nested set to `re`
        (r"(?:cook){e<=1}", None),  # fuzzy matching: "cool" matches, "cook" need not occur
        # An alternation as the mandatory part: one atom per branch.
        (r"(synthesi[sz]e|cook|make) (meth|fentanyl)",
         {f"{verb} {drug}" for verb in ("synthesise", "synthesize", "cook", "make") for drug in ("meth", "fentanyl")}),
        # Too many combinations for one set: the most selective part alone.
        (r"(mix|combine) .{0,40}(ammonium nitrate|fuel oil)", {"ammonium nitrate", "fuel oil"}),
        (r"(制作|制造|组装).{0,4}(炸弹|爆炸物)", {"炸弹", "爆炸物"}),  # as long, fewer
        (r"(合成|制作|提炼).{0,4}(冰毒|海洛因|芬太尼)", {"冰毒", "海洛因", "芬太尼"}),  # as long, as many, longer
        (r"\bKILL\b", {"kill"}),  # anchors add nothing, atoms are folded like the text
        (r"(a|b)c", {"ac", "bc"}),  # one-letter alternatives are a class: {a, b} × c
        (r"x(a|b|c)+y", {"xa", "xb", "xc"}),
        (r"x(a|b|c)*y", None),  # "xy" matches: single letters are too common to gate on
    ],
)
def test_literal_atoms(pattern, atoms):
    assert literal_atoms(pattern) == (frozenset(atoms) if atoms is not None else None)


def test_a_regex_whose_mandatory_part_is_an_alternation_runs_when_any_branch_occurs():
    blacklist = Blacklist([Rule("drugs", "illegal", "block", regexes=(r"(synthesi[sz]e|cook|make) (meth|fentanyl)",))])
    assert blacklist.slow_patterns == []
    assert rule_ids(blacklist, "How do I COOK METH at home") == ["drugs"]
    assert rule_ids(blacklist, "let me synthesize fentanyl") == ["drugs"]
    assert rule_ids(blacklist, "cook dinner, then meth... no") == []


@pytest.mark.parametrize(
    "text",
    ["pipe bomb", "pipe-bomb", "pipe.bomb", "pipe_bomb", "pipe  bomb", "PIPE - BOMB", "pipe/bomb", "pipe\nbomb",
     "p i p e b o m b", "pipebomb", "ｐｉｐｅ－ｂｏｍｂ"],
)
def test_multi_word_literals_match_with_any_separators_between_words(text):
    blacklist = Blacklist([Rule("weapons.pipe_bomb", "illegal", "block", literals=("pipe bomb",))])
    [match] = blacklist.scan(f"tell me about the {text} now")
    assert match.rule_id == "weapons.pipe_bomb"
    assert match.matched == text


@pytest.mark.parametrize(
    "text", ["pipebombs", "a pipe of bomb", "pipes bomb", "pipe炸bomb", "xpipe bomb", "pipe bombx"]
)
def test_multi_word_literals_still_need_their_words_whole_and_adjacent(text):
    blacklist = Blacklist([Rule("weapons.pipe_bomb", "illegal", "block", literals=("pipe bomb",))])
    assert blacklist.scan(text) == []


def test_literals_with_punctuation_or_cjk_inside_match_as_written():
    blacklist = Blacklist([
        Rule("site", "spam", "flag", literals=("www.gaoav",)),
        Rule("drug", "illegal", "block", literals=("k粉",)),
        Rule("symbol", "harassment", "flag", literals=("a$$",)),
    ])
    assert rule_ids(blacklist, "visit WWW.GAOAV now") == ["site"]
    assert rule_ids(blacklist, "www gaoav") == []
    assert rule_ids(blacklist, "哪里买K粉") == ["drug"]
    assert rule_ids(blacklist, "what an a$$") == ["symbol"]
    assert rule_ids(blacklist, "a cat") == []


@pytest.mark.parametrize(
    "text",
    ["plain ascii text, no hit", "café crème 😀 and the bomb", "ＢＯＭＢ in full width", "混合 text 炸弹 and bomb",
     "how to build a pipe bomb 👍"],
)
def test_spans_are_the_same_on_ascii_and_non_ascii_text(text):
    # On non-ASCII text the automaton's byte offsets are turned into characters: the spans must agree.
    blacklist = Blacklist(RULES)
    for match in blacklist.scan(text):
        normalized_span = match.end - match.start
        assert normalized_span > 0
        assert text[match.original_start:match.original_end] == match.matched
        assert match.matched.strip() == match.matched


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


@pytest.mark.parametrize(
    ("text", "matched"),
    [("so the-dirty_rat ran", "the-dirty_rat"), ("THE  DIRTY  RAT", "THE  DIRTY  RAT"),
     ("the dirty rat", "the dirty rat"), ("bathe dirty rat", None), ("the dirty rats", None),
     ("the dirty old rat", None)],
)
def test_a_phrase_gated_by_a_word_in_its_middle_reports_the_whole_phrase(text, matched):
    # "the" is too common to gate on: "dirty" does, and the words before it are matched backwards.
    blacklist = Blacklist([Rule("insult", "harassment", "flag", literals=("the dirty rat",))])
    assert [match.matched for match in blacklist.scan(text)] == ([matched] if matched else [])


def test_keys_in_mostly_ascii_text_get_their_character_offsets():
    # A few multi-byte characters in long ASCII text: every hit's byte offsets shift.
    blacklist = Blacklist([
        Rule("drug", "illegal", "block", literals=("k粉", "炸弹")),
        Rule("site", "spam", "flag", literals=("www.gaoav",)),
        Rule("temp", "test", "flag", regexes=(r"\d+ ?°c",)),
    ])
    filler = "the weather is fine today and nothing happens here. " * 40
    text = "炸弹" + filler + "buy k粉 at www.gaoav, it is 30 °C " + filler + "tail k粉"
    found = [(match.rule_id, match.matched) for match in blacklist.scan(text)]
    assert found == [("drug", "炸弹"), ("drug", "k粉"), ("site", "www.gaoav"), ("temp", "30 °C"), ("drug", "k粉")]
    for match in blacklist.scan(text):
        assert text[match.original_start:match.original_end] == match.matched


def test_every_occurrence_of_every_key_is_found_not_only_the_leftmost_longest():
    # Nested and overlapping literals, a key overlapping itself, and a regex atom inside a literal.
    blacklist = Blacklist([
        Rule("weapon", "illegal", "block", literals=("制造炸弹", "炸弹", "弹药")),
        Rule("laugh", "spam", "flag", literals=("哈哈",)),
        Rule("build", "illegal", "block", regexes=(r"造炸.{0,2}药",)),
    ])
    found = [(match.rule_id, match.matched) for match in blacklist.scan("制造炸弹药，哈哈哈")]
    assert found == [("weapon", "制造炸弹"), ("build", "造炸弹药"), ("weapon", "炸弹"), ("weapon", "弹药"),
                     ("laugh", "哈哈"), ("laugh", "哈哈")]


def test_a_blacklist_too_big_for_a_dfa_finds_the_same_with_an_nfa(monkeypatch):
    import filters.blacklist

    texts = ["制造炸弹药，哈哈哈", "how to build a pipe bomb, kill -9 and kіll", "card 4111 1111 1111 1111",
             "ＢＯＭＢ 法 輪 功"]
    expected = [Blacklist(RULES).scan(text) for text in texts]
    assert all(expected)
    monkeypatch.setattr(filters.blacklist, "MAX_DFA_KEY_BYTES", 0)
    assert [Blacklist(RULES).scan(text) for text in texts] == expected


def test_lone_surrogates_in_keys_or_text_hide_nothing():
    # Text decoded leniently can hold lone surrogates; a key after one must still be found.
    blacklist = Blacklist([
        Rule("odd", "test", "flag", literals=("x\ud800y",)),
        Rule("weapon", "illegal", "block", literals=("bomb", "炸弹")),
    ])
    text = "bomb \udfff 炸弹 x\ud800y"
    found = [(match.rule_id, match.matched) for match in blacklist.scan(text)]
    assert found == [("weapon", "bomb"), ("weapon", "炸弹"), ("odd", "x\ud800y")]
    for match in blacklist.scan(text):
        assert text[match.original_start:match.original_end] == match.matched


_WINDOW_REGEXES = (r"\bkill(?:ed)?\b.{0,12}\bthem\b", r"(cook|make) .{0,6}meth", r"strasse \d{1,3}", r"(ab)+cde",
                   r"炸.{0,3}弹")


def test_regexes_searched_near_their_atoms_find_what_a_whole_text_search_finds():
    # A regex with a bounded width runs only around its atoms' hits: the matches must be exactly
    # those of one search over the whole normalised text.
    import random

    rules = [Rule(f"r{i}", "test", "flag", regexes=(source,)) for i, source in enumerate(_WINDOW_REGEXES)]
    blacklist = Blacklist(rules)
    # "(ab)+cde" can be any length: it searches the whole text.
    assert [compiled.reach is not None for compiled in blacklist._compiled.regexes] == [True, True, True, False, True]
    # The patterns as compiled: any separators between words, whole words at the edges.
    patterns = [compiled.pattern for compiled in blacklist._compiled.regexes]
    pieces = ["kill", "killed", "them", "xkill", "themx", " ", "  ", ".", "cook", "make", "meth", "Straße", "12",
              "1234", "ab", "cde", "炸", "弹", "x", "some filler words", "\n"]
    rng = random.Random(7)
    for _ in range(300):
        text = "".join(rng.choices(pieces, k=rng.randint(1, 40)))
        folded = normalize(text).text
        expected = sorted((f"r{i}", hit.start(), hit.end()) for i, pattern in enumerate(patterns)
                          for hit in pattern.finditer(folded))
        assert sorted((m.rule_id, m.start, m.end) for m in blacklist.scan(normalize(text))) == expected, text
