"""filters/normalize: disguised words fold to the plain form, offsets lead back to the original."""

from __future__ import annotations

import pytest

from filters.normalize import normalize


@pytest.mark.parametrize(
    ("disguised", "plain"),
    [
        ("ＦＵＣＫ off", "fuck off"),  # full-width letters
        ("b\u200bo\u200do\u2060m", "boom"),  # zero-width space, joiner, word joiner
        ("\u202ebomb\u202c", "bomb"),  # bidi override
        ("Раураl login", "paypal login"),  # Cyrillic homoglyphs
        ("ΚΙLL", "kill"),  # Greek capitals
        # Look-alikes that Unicode's confusables link to ASCII only through another character or
        # a case pair: Greek beta → sharp s, epsilon → c with bar, small capitals → Greek/Cherokee.
        ("ρiρe βοmβ", "pipe bomb"),
        ("mεth μeth", "meth meth"),
        ("ᴘɪᴘᴇ", "pipe"),
        ("ᴘɪᴘᴇ ʙᴏᴍʙ", "pipe bomb"),  # small capitals that only their Unicode names tie to a letter
        ("say " + "".join(chr(0xE0000 + ord(c)) for c in "Pipe Bomb"), "say pipe bomb"),  # invisible tag characters
        ("f.u.c.k", "fuck"),  # inserted punctuation
        ("k i l l them", "kill them"),  # inserted spaces, the next word kept apart
        ("h-a-t-e", "hate"),
        ("ｆｉnance", "finance"),  # ligature from NFKC
        ("法 轮 功", "法轮功"),  # spaces between Chinese characters
        ("炸-弹", "炸弹"),
        ("炸*弹", "炸弹"),
        ("法輪功", "法轮功"),  # traditional characters
        ("炸彈製作", "炸弹制作"),
        ("你好，世界。", "你好,世界."),  # Chinese punctuation folded, clause punctuation not collapsed
    ],
)
def test_disguises_fold_to_the_plain_form(disguised: str, plain: str):
    assert normalize(disguised).text == plain


@pytest.mark.parametrize(
    "ordinary",
    ["hello world, how are you?", "a b", "I am ok", "x = 1 + 2", "u.s. policy", "今天天气很好"],
)
def test_ordinary_text_keeps_its_words_apart(ordinary: str):
    assert normalize(ordinary).text == ordinary.casefold()


@pytest.mark.parametrize(
    ("original", "term", "expected_span_text"),
    [
        ("please k.i.l.l him now", "kill", "k.i.l.l"),
        ("ｂｏｍｂ threat", "bomb", "ｂｏｍｂ"),
        ("how to make a b\u200bomb", "bomb", "b\u200bomb"),
        ("教我做炸 - 彈吧", "炸弹", "炸 - 彈"),
        ("café au lait", "café", "café"),
        ("Раураl", "paypal", "Раураl"),
    ],
)
def test_a_match_maps_back_to_the_original_span(original: str, term: str, expected_span_text: str):
    normalized = normalize(original)
    start = normalized.text.index(term)
    begin, end = normalized.original_span(start, start + len(term))
    assert original[begin:end] == expected_span_text


def test_combining_marks_stay_with_their_base_character():
    decomposed = "cafe\u0301"  # e + combining acute
    normalized = normalize(decomposed)
    assert normalized.text == "café"
    assert normalized.original_span(3, 4) == (3, 5)


def test_empty_and_invisible_only_text():
    assert normalize("").text == ""
    assert normalize("\u200b\u200d\ufeff").text == ""


# Pieces of the disguises normalize() folds, mixed at random below: the fast paths (ASCII lower(),
# one translate(), the cheap pre-checks before the separator-collapse patterns, lazy offsets) must
# give exactly what the cluster-by-cluster reference gives.
_PIECES = [
    "bomb", "Kill", "PIPE", "hello", "a", "I", "x", "9", "u.s.", "e.g.", "don't", "class",
    "f.u.c.k", "k i l l", "h-a-t-e", "b  o  m  b", "1, 2, 3", "a_b_c", "x = 1 + 2",
    "ＦＵＣＫ", "ｂｏｍｂ", "ﬁ", "ß", "İ", "Ⅻ", "…", "—", "½", "№",
    "Раураl", "ΚΙLL", "kіll", "ꓲ",
    "\u200b", "\u200d", "\u2060", "\ufeff", "\u00ad", "\u202e", "\u202c",
    "法轮功", "炸弹", "炸彈製作", "今天天气很好", "法 轮 功", "炸-弹", "炸_弹", "炸*弹", "炸 - 彈",
    "⼀", "㊀", "𠀀", "丽",
    "，", "。", "！", "？", "；", "：", "、", "“", "”", "《", "》", "【", "】", "～", "·",
    "😀", "👍🏽", "🇨🇳", "e\u0301", "n\u0303", "\u0301", "\ue000", "\ua4d0", "\ua4d3", "他说“你好”", "第一行\n第二行",
    " ", "  ", "\n", "\t", ".", "-", "_", "*", "/", "(", ")", "'", '"',
]


def _random_texts(count: int, seed: int) -> list[str]:
    import random

    rng = random.Random(seed)
    texts = []
    for _ in range(count):
        pieces = rng.choices(_PIECES, k=rng.randint(1, 12))
        separators = rng.choices(["", " ", "", ".", "-", "  ", "，"], k=len(pieces))
        texts.append("".join(piece + separator for piece, separator in zip(pieces, separators, strict=True)))
    # Mostly-ASCII text with one non-ASCII character takes another fast path than mostly-CJK text.
    texts += ["Please tell me how to build a p.i.p.e b.o.m.b " * 3 + piece for piece in _PIECES]
    return texts


@pytest.mark.parametrize("seed", range(4))
def test_fast_paths_give_the_reference_text_and_offsets(seed: int):
    from filters.normalize import normalize_reference

    for text in _random_texts(800, seed):
        fast, reference = normalize(text), normalize_reference(text)
        assert (fast.text, fast.starts, fast.ends) == (reference.text, reference.starts, reference.ends), text
        if fast.text:
            assert fast.original_span(0, len(fast.text)) == reference.original_span(0, len(reference.text))
