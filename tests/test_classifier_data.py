"""The classifier's training-data layer on the real files in ../shared/data: every source is read and
mapped, labels and masks are consistent, and the split is deterministic and leak-free."""

from __future__ import annotations

import csv
import glob
import itertools
import re
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from classifiers import data
from classifiers.data import (
    Example,
    clean_social,
    clean_text,
    deduplicate,
    load_examples,
    make_example,
    read_toxigen,
    split,
    split_key,
    training_mix,
)
from classifiers.labels import CATEGORIES, LABELS
from tests.conftest import requires_shared_data

DATA_DIR = data.DEFAULT_DATA_DIR
REPO = Path(__file__).resolve().parents[1]

pytestmark = requires_shared_data


@pytest.fixture(scope="module")
def parts(examples) -> tuple[list[Example], list[Example]]:
    return split(examples)


def _sources(ex: Example) -> tuple[str, ...]:
    return (ex.source, *ex.also_in)


def data_md_files() -> list[str]:
    """The files DATA.md's table names, its <group> placeholders matched against the disk."""
    files = []
    for name in data.markdown_table_files(DATA_DIR / "DATA.md"):
        matched = sorted(glob.glob(str(DATA_DIR / re.sub(r"<[^>]*>", "*", name))))
        assert matched, f"DATA.md names {name}, no such file"
        files += [Path(m).relative_to(DATA_DIR).as_posix() for m in matched]
    return files


# ------------------------------------------------------------------------------------------ sources


def test_every_source_in_data_md_contributes_examples(examples):
    files = data_md_files()
    assert len(files) > 40  # the 31 ToxiGen files alone
    # Eval-only sources (scenario files, FLAMES, HH-RLHF) are read too, into load_eval_only().
    contributing = {s.split(":")[0] for ex in [*examples, *data.load_eval_only(DATA_DIR)] for s in _sources(ex)}
    for lexicon in data.LEXICON_FILES:
        assert lexicon in files, f"excluded lexicon {lexicon} is not in DATA.md any more"
    pending = [data.file_pattern(name) for name in data.NOT_YET_READ]
    missing = [f for f in files if f not in contributing and f not in data.LEXICON_FILES
               and not any(pattern.fullmatch(f) for pattern in pending)]
    assert not missing, f"sources with no examples: {missing}"
    named = set(data.markdown_table_files(DATA_DIR / "DATA.md"))
    assert set(data.NOT_YET_READ) <= named, "a source not yet read is no longer in DATA.md: drop it from the list"
    assert not [f for f in files if f in contributing and any(pattern.fullmatch(f) for pattern in pending)], \
        "a source listed as not yet read contributes examples: drop it from NOT_YET_READ"


def test_project_written_sets_are_loaded_and_marked(examples):
    written = {ex.source.split(":")[0] for ex in examples if ex.source.startswith("wardgate/")}
    on_disk = {f"wardgate/{p.stem}" for p in data.EXTRA_DIR.glob("*.jsonl")}
    frames = {f"wardgate/roleplay_{p.stem.removeprefix('roleplay_wrappers_')}"
              for p in data.EXTRA_DIR.glob("roleplay_wrappers_*.txt")}
    assert frames == {"wardgate/roleplay_en", "wardgate/roleplay_zh"}
    assert written == on_disk | frames
    # The three gaps DATA.md names are filled: sexual text, sexual_minors text, Chinese jailbreaks.
    for lang, label in (
        ("en", "sexual"),
        ("zh", "sexual"),
        ("en", "sexual_minors"),
        ("zh", "sexual_minors"),
        ("zh", "jailbreak"),
    ):
        assert any(e.lang == lang and label in e.positives() for e in examples if e.source.startswith("wardgate/"))


def test_roleplay_frames_carry_harmful_and_harmless_requests_alike(examples, parts):
    framed = [ex for ex in examples if ex.source.startswith("wardgate/roleplay_")]
    sides: dict[str, set[bool]] = {}
    for ex in framed:
        sides.setdefault(ex.group, set()).add(ex.unsafe)
    # Every frame holds both, so the frame alone cannot predict the label.
    assert len(sides) >= 40 and all(both == {True, False} for both in sides.values())
    assert all(ex.labels["jailbreak"] == 1 and ex.mask["jailbreak"] for ex in framed if ex.unsafe)
    assert all(not any(ex.labels.values()) and all(ex.mask.values()) for ex in framed if not ex.unsafe)
    # Only training-side requests are framed: a validation question never reaches training in a frame.
    loader = data._Loader(DATA_DIR)
    framed_requests = loader._training_side(loader.harmful_question_pool()) + loader.jade_train_questions()
    valid_keys = {data.split_key(ex.text) for ex in parts[1]}
    assert framed_requests and not any(data.split_key(request) in valid_keys for request in framed_requests)


def test_hard_negatives_stay_safe_after_deduplication(examples):
    # A hard negative that collided with an unsafe text from another source would have become unsafe.
    negatives = [e for e in examples if e.source.startswith("wardgate/hard_negatives")]
    assert sum(e.lang == "en" for e in negatives) >= 300
    assert sum(e.lang == "zh" for e in negatives) >= 200
    assert not [e.text for e in negatives if e.unsafe]


# ---------------------------------------------------------------------------------- labels and masks


def test_label_and_mask_invariants(examples):
    for ex in examples:
        assert tuple(ex.labels) == LABELS and tuple(ex.mask) == LABELS, ex.source
        assert ex.mask["unsafe"], ex.source
        assert all(v in (0.0, 1.0) for v in ex.labels.values()), ex.source
        assert ex.lang in ("en", "zh") and ex.role in ("prompt", "response"), ex.source
        assert ex.text and ex.text == clean_text(ex.text), ex.source
        if not ex.unsafe:  # a safe text is safe in every category, and that is known
            assert all(ex.mask[c] and ex.labels[c] == 0.0 for c in CATEGORIES), (ex.source, ex.text)
        else:  # an unsafe text is unsafe in some category, or its category is unknown
            assert any(ex.labels[c] == 1.0 or not ex.mask[c] for c in CATEGORIES), (ex.source, ex.text)
        for c in CATEGORIES:
            if ex.labels[c] == 1.0:
                assert ex.mask[c] and ex.unsafe, (ex.source, c)
        if ex.labels["sexual_minors"] == 1.0:
            assert ex.labels["sexual"] == 1.0, ex.text


def test_masked_categories_where_the_source_does_not_say(examples):
    # AdvBench rows name no category: a row without a category keyword keeps its categories unknown.
    advbench = [e for e in examples if e.source == "en/harmful_prompts/advbench_behaviors.csv"]
    assert advbench and all(e.unsafe for e in advbench)
    assert any(not any(e.mask[c] for c in CATEGORIES if c != "jailbreak") for e in advbench)
    assert not any(e.mask[c] and e.labels[c] == 0.0 for e in advbench for c in CATEGORIES if c != "jailbreak")


def test_source_specific_mappings(examples):
    by_prefix: dict[str, list[Example]] = defaultdict(list)
    for ex in examples:
        by_prefix[ex.source.split(":")[0]].append(ex)
        by_prefix[ex.source].append(ex)
    davidson = "en/toxicity/davidson_labeled_data.csv"
    assert all(e.labels["hate"] == 1.0 for e in by_prefix[f"{davidson}:hate"])
    assert all(e.labels["harassment"] == 1.0 and e.mask["hate"] for e in by_prefix[f"{davidson}:offensive"])
    # Advice areas of the forbidden question set are negatives; industry-discussion porn questions are dropped.
    fqs = "en/harmful_prompts/forbidden_question_set.csv"
    assert by_prefix[f"{fqs}:Legal Opinion"] and not any(e.unsafe for e in by_prefix[f"{fqs}:Legal Opinion"])
    assert 0 < len(by_prefix[f"{fqs}:Pornography"]) < 30
    assert all(e.labels["sexual"] == 1.0 for e in by_prefix[f"{fqs}:Pornography"])
    # DiaSafety: only responses that are safe, as output-moderation negatives.
    dia = [e for e in examples if e.source.startswith("en/toxicity/diasafety")]
    assert dia and all(not e.unsafe and e.role == "response" for e in dia)
    responses = [e for e in examples if e.source.startswith("en/responses/")]
    assert {e.unsafe for e in responses} == {True, False} and all(e.role == "response" for e in responses)
    assert any(e.lang == "zh" for e in responses)  # GPTFuzz's translator persona answers in Chinese
    # TensorTrust and BIPIA: attacks are jailbreaks; the defenders' prompts and clean documents are not.
    for prefix in ("en/jailbreak/tensortrust_hijacking.jsonl", "en/jailbreak/tensortrust_extraction.jsonl"):
        assert all(e.labels["jailbreak"] == 1.0 for e in by_prefix[f"{prefix}:attack"])
        assert by_prefix[f"{prefix}:pre_prompt"] and not any(e.unsafe for e in by_prefix[f"{prefix}:pre_prompt"])
    contexts = by_prefix["en/jailbreak/bipia_email_contexts_train.jsonl"]
    assert contexts and not any(e.unsafe for e in contexts)
    injected = by_prefix["en/jailbreak/bipia_text_attack_train.json"]
    assert injected and all(e.labels["jailbreak"] == 1.0 for e in injected)
    # An injected document holds a clean context: the attack alone is never an example.
    assert all(len(e.text) > 100 for e in injected)
    # JADE: crime → illegal, bias → hate; the type column's stray spaces do not make new types.
    jade = [e for e in examples if e.source.startswith("zh/harmful_prompts/jade")]
    assert {e.source.split(":")[1] for e in jade} == {"违法犯罪", "歧视偏见", "侵犯权益"}
    assert all(e.labels["illegal"] == 1.0 for e in jade if e.source.endswith("违法犯罪"))
    assert all(e.labels["hate"] == 1.0 for e in jade if e.source.endswith("歧视偏见"))
    cvalues = by_prefix["zh/benign_prompts/cvalues_sensitive_but_benign.jsonl"]
    assert cvalues and not any(e.unsafe for e in cvalues)


def test_unlicensed_self_harm_can_be_left_out(monkeypatch):
    loader = data._Loader(DATA_DIR)
    self_harm = list(loader.self_harm())
    assert self_harm and all(e.source.startswith(data.UNLICENSED_PREFIXES) for e in self_harm)
    # Only the self-harm loader and the extra sets, to keep this fast: the filter is what is tested.
    monkeypatch.setattr(data._Loader, "examples", lambda self: iter(self_harm + list(loader.benign_zh())))
    kept = load_examples(DATA_DIR, include_unlicensed=False)
    assert kept and not [e for e in kept if any(s.startswith(data.UNLICENSED_PREFIXES) for s in _sources(e))]
    assert any(e.source.startswith("wardgate/") for e in kept)
    assert not any(e.source.startswith("wardgate/") for e in load_examples(DATA_DIR, include_extra=False))


# --------------------------------------------------------------------------------------- parsing


def test_toxigen_lines_are_split_on_literal_backslash_n(tmp_path):
    f = tmp_path / "hate_x_1k.txt"
    f.write_text("- first one\\n- second one\\n-\n- second one\\n-  third one \\n-\n", encoding="utf-8")
    assert read_toxigen(f) == ["first one", "second one", "third one"]


def test_toxigen_examples(examples):
    toxigen = [e for e in examples if "/toxigen/" in e.source]
    assert toxigen
    for e in toxigen:
        assert "\\n" not in e.text and not e.text.startswith("-"), e.text
        assert e.unsafe == any(Path(s).name.startswith("hate_") for s in _sources(e)), e.source
    # The first sentence of each file, cut by hand, is an example labelled by its file name.
    by_key = {split_key(e.text): e for e in examples}
    for path in sorted((DATA_DIR / "en" / "toxicity" / "toxigen").glob("*.txt")):
        first = path.read_text(encoding="utf-8").split("\\n", 1)[0].removeprefix("- ")
        ex = by_key[split_key(clean_text(first))]
        assert any(path.name in s for s in _sources(ex))
        assert ex.unsafe == any(Path(s).name.startswith("hate_") for s in _sources(ex))


def test_mojibake_and_entities_are_repaired(examples):
    assert clean_social("i\u00e2\u0080\u0099m tired &amp;#x200B;") == "i\u2019m tired \u200b"
    twitter = [e for e in examples if e.source.startswith("en/self_harm/suicide_ideation_twitter.csv")]
    assert twitter
    assert not [
        e.text for e in twitter if "\u00e2\u0080" in e.text or "&amp;" in e.text or re.search(r"@(?!user\b)\w", e.text)
    ]
    cold = [e for e in examples if e.source.startswith("zh/offensive/cold")]
    assert cold and not [e.text for e in cold if "\ufffd" in e.text]


def test_gptfuzz_templates_are_filled_deterministically(examples, parts):
    loader = data._Loader(DATA_DIR)
    fills = loader.fill_gptfuzz_templates()
    assert fills == data._Loader(DATA_DIR).fill_gptfuzz_templates()
    templates = dict(loader.gptfuzz_template_rows())
    per_template = defaultdict(list)
    for tid, question, text in fills:
        assert data.GPTFUZZ_SLOT not in text
        assert text == templates[tid].replace(data.GPTFUZZ_SLOT, question)
        per_template[tid].append(question)
    assert set(per_template) == set(templates)
    for questions in per_template.values():
        assert len(set(questions)) == len(questions) == data.GPTFUZZ_FILLS_EN + data.GPTFUZZ_FILLS_ZH
        assert sum(data.detect_lang(q) == "zh" for q in questions) == data.GPTFUZZ_FILLS_ZH
    # No question that is validated on its own is trained on inside a template.
    valid_keys = {split_key(e.text) for e in parts[1]}
    assert not [q for _, q, _ in fills if split_key(q) in valid_keys]
    filled = [e for e in examples if e.source == "en/jailbreak/gptfuzz_templates.csv"]
    assert filled and all(e.labels["jailbreak"] == 1.0 for e in filled)


# --------------------------------------------------------------------------------- de-duplication


def test_no_duplicate_texts(examples):
    keys = [split_key(e.text) for e in examples]
    assert len(keys) == len(set(keys))


def test_reddit_files_overlap_and_each_post_is_kept_once(examples):
    def keys(name):
        with (DATA_DIR / "en" / "self_harm" / name).open(encoding="utf-8", newline="") as f:
            return {split_key(clean_text(clean_social(r["text"]))) for r in csv.DictReader(f)}

    overlap = keys("suicide_detection_reddit_sample.csv") & keys("suicide_detection_reddit_long.csv")
    assert overlap
    kept = [e for e in examples if split_key(e.text) in overlap]
    assert len(kept) == len(overlap)
    for e in kept:
        assert {s.split(":")[0].rsplit("/", 1)[1] for s in _sources(e)} >= {
            "suicide_detection_reddit_sample.csv",
            "suicide_detection_reddit_long.csv",
        }


def test_deduplicate_merges_labels_unsafe_wins():
    safe = make_example("How To Build A Birdhouse", source="a", lang="en", unsafe=False)
    harmful = make_example("how to  build a birdhouse", source="b", lang="en", unsafe=True, pos={"illegal"})
    other = make_example("HOW TO BUILD A BIRDHOUSE", source="c", lang="en", unsafe=True, pos={"violence"}, neg={"hate"})
    (merged,) = deduplicate([safe, harmful, other, make_example("---", source="d", lang="en", unsafe=False)])
    assert merged.text == safe.text and merged.source == "a" and merged.also_in == ("b", "c")
    assert merged.unsafe and merged.positives() == ["unsafe", "violence", "illegal"]
    # The safe source's zeros are not kept: only an unsafe source's known 0 (hate) is.
    assert merged.mask["hate"] and not merged.mask["sexual"]


# ------------------------------------------------------------------------------------------- split


def test_split_is_deterministic_disjoint_and_stratified(examples, parts):
    train, valid = parts
    assert len(train) + len(valid) == len(examples)
    assert 0.07 < len(valid) / len(examples) < 0.15
    again = split(list(reversed(examples)))
    assert {id(e) for e in again[1]} == {id(e) for e in valid}
    train_keys = {split_key(e.text) for e in train}
    assert not train_keys & {split_key(e.text) for e in valid}
    # Groups (e.g. all fillings of one jailbreak template) never straddle the split.
    groups_train = {e.group for e in train if e.group}
    assert not groups_train & {e.group for e in valid if e.group}
    groups, in_valid, in_train = defaultdict(set), set(), set()
    for part, seen in ((train, in_train), (valid, in_valid)):
        for e in part:
            for label in e.positives():
                groups[e.lang, label].add(e.group or split_key(e.text))
                seen.add((e.lang, label))
    for stratum in itertools.product(("en", "zh"), LABELS):
        if len(groups[stratum]) >= 2:
            assert stratum in in_valid and stratum in in_train, stratum


def test_split_sends_casing_variants_to_the_same_side():
    variants = [
        make_example(t, source="s", lang="en", unsafe=False)
        for t in [f"Sentence number {i}" for i in range(300)] + [f"SENTENCE  number {i}" for i in range(300)]
    ]
    train, valid = split(variants)
    assert valid and train
    valid_keys = {split_key(e.text) for e in valid}
    assert all(split_key(e.text) not in valid_keys for e in train)


# ------------------------------------------------------------------------------------- training mix


def test_training_mix_caps_and_upsamples(parts):
    train = parts[0]
    mix = training_mix(train, seed=3, max_per_source=2000, min_per_positive_source=300)
    assert mix == training_mix(train, seed=3, max_per_source=2000, min_per_positive_source=300)
    assert mix != training_mix(train, seed=4, max_per_source=2000, min_per_positive_source=300)
    counts = defaultdict(int)
    for e in mix:
        counts[e.source] += 1
    sizes = defaultdict(int)
    for e in train:
        sizes[e.source] += 1
    train_ids = {id(e) for e in train}
    assert all(id(e) in train_ids for e in mix)  # nothing from validation
    for source, n in sizes.items():
        has_unsafe = any(e.unsafe for e in train if e.source == source)
        if n > 2000:
            assert counts[source] == 2000, source
        elif has_unsafe and n < 300:
            assert counts[source] == min(300, 4 * n), source
        else:
            assert counts[source] == n, source


def test_counts_table_has_a_row_per_lang_and_label(parts):
    table = data.counts_table(*parts)
    for lang, label in itertools.product(("en", "zh"), LABELS):
        assert f"| {lang} | {label} |" in table


def test_labels_md_names_every_source_and_has_current_counts(parts):
    labels_md = REPO / "classifiers" / "LABELS.md"
    named = set(data.markdown_table_files(labels_md)) | set(data.NOT_YET_READ)
    assert named >= set(data.markdown_table_files(DATA_DIR / "DATA.md"))
    text = labels_md.read_text(encoding="utf-8")
    block = text.split("<!-- counts:begin -->\n", 1)[1].split("<!-- counts:end -->", 1)[0]
    assert block.strip() == data.counts_table(*parts), "run: python -m classifiers.data --update-labels-md"


def test_hard_negatives_can_weigh_more(parts):
    train = parts[0]
    plain = Counter(e.source for e in training_mix(train, seed=0))
    tripled = Counter(e.source for e in training_mix(train, seed=0, hard_negative_repeats=3))
    hard = {source for source in plain if source.startswith("wardgate/hard_negatives")}
    assert hard == {"wardgate/hard_negatives_en", "wardgate/hard_negatives_zh", "wardgate/hard_negatives2_en",
                    "wardgate/hard_negatives2_zh"}
    assert all(tripled[source] == 3 * plain[source] for source in hard)
    assert all(tripled[source] == plain[source] for source in plain if source not in hard)
