"""Lexicon files referenced from blacklist rules: resolution, errors with file:line, the policy's
source files and digest, and the shipped lexicons (their headers, package data, hit rates)."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from filters.blacklist import Blacklist, Rule
from gateway.pipeline import Context, Pipeline
from policies.schema import Policy, PolicyError, builtin_lexicons, load_policy, parse_lexicon, policy_digest

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data"
SHIPPED = ROOT / "policies" / "lexicons"

POLICY = """\
version: "lex1"
input:
  stages:
    - type: blacklist
      rules:
        - id: slurs
          category: hate
          action: block
          lexicons:
            - lists/slurs.txt
        - id: mixed
          category: abuse
          action: flag
          literals: [written term, widgetslur]
          lexicons: [lists/abuse.txt, lists/slurs.txt]
output:
  stages:
    - type: blacklist
      rules:
        - {id: out.slurs, category: hate, lexicons: [lists/slurs.txt]}
"""


def write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def policy_dir(tmp_path: Path) -> Path:
    write(tmp_path / "lists" / "slurs.txt", "# a comment\n\nwidgetslur\n  gizmo  phrase  \n")
    write(tmp_path / "lists" / "abuse.txt", "\ufeff# BOM and CRLF\r\n坏词语\r\n")
    write(tmp_path / "policy.yaml", POLICY)
    return tmp_path


def verdict(policy: Policy, text: str, direction: str = "input"):
    return asyncio.run(Pipeline(policy).inspect([text], Context(direction)))


def test_lexicon_terms_become_literals_of_their_rules(policy_dir, monkeypatch):
    monkeypatch.chdir(policy_dir.parent)  # relative paths follow the policy file, not the cwd
    policy = load_policy(policy_dir / "policy.yaml")
    rules = {rule.id: rule for rule in policy.input.stages[0].rules}
    assert rules["slurs"].literals == ["widgetslur", "gizmo phrase"]
    # Written literals first, then each lexicon's terms; a term both written and listed is kept once.
    assert rules["mixed"].literals == ["written term", "widgetslur", "坏词语", "gizmo phrase"]
    assert (verdict(policy, "you widgetslur").action, verdict(policy, "you widgetslur").rule_id) == ("block", "slurs")
    assert verdict(policy, "the written term").rule_id == "mixed"
    # Terms match like literals: normalised (traditional → simplified), so a disguised term is caught.
    assert verdict(policy, "你這個壞詞語").rule_id == "mixed"
    assert verdict(policy, "GIZMO PHRASE").rule_id == "slurs"
    assert verdict(policy, "a widget slur and a phrase").action == "allow"
    assert verdict(policy, "widgetslur", direction="output").rule_id == "out.slurs"


def test_policy_remembers_its_source_files_and_their_bytes(policy_dir):
    policy = load_policy(policy_dir / "policy.yaml")
    expected = [policy_dir / "policy.yaml", policy_dir / "lists" / "slurs.txt", policy_dir / "lists" / "abuse.txt"]
    assert policy.source_files == tuple(expected)  # policy first, each lexicon once, in order of use
    assert all(path.is_absolute() for path in policy.source_files)
    assert [data for _, data in policy.source_bytes] == [path.read_bytes() for path in expected]


def test_policy_files_given_relative_are_absolute_in_sources(policy_dir, monkeypatch):
    monkeypatch.chdir(policy_dir)
    policy = load_policy(Path("policy.yaml"))
    assert policy.source_files[0] == policy_dir / "policy.yaml"
    assert policy.source_files[1] == policy_dir / "lists" / "slurs.txt"


def test_digest_covers_every_source_file_as_read_at_load_time(policy_dir):
    policy_path, lexicon = policy_dir / "policy.yaml", policy_dir / "lists" / "abuse.txt"
    first = load_policy(policy_path)
    assert policy_digest(first) == policy_digest(load_policy(policy_path))
    write(lexicon, "坏词语\n另一个词\n")
    # The loaded policy keeps the bytes it was built from: its digest does not follow the file...
    assert policy_digest(first) == policy_digest(first.model_copy())
    assert first.source_bytes[2][1] != lexicon.read_bytes()
    # ...and a changed lexicon changes the digest of a policy loaded from it.
    changed = load_policy(policy_path)
    assert policy_digest(changed) != policy_digest(first)


def test_digest_sees_a_byte_moved_from_one_file_to_the_next(policy_dir):
    policy_path, slurs = policy_dir / "policy.yaml", policy_dir / "lists" / "slurs.txt"
    before = load_policy(policy_path)
    # The policy's final newline becomes the lexicon's first line: the same bytes end to end.
    write(policy_path, POLICY.removesuffix("\n"))
    write(slurs, "\n" + slurs.read_text(encoding="utf-8"))
    after = load_policy(policy_path)
    assert b"".join(data for _, data in after.source_bytes) == b"".join(data for _, data in before.source_bytes)
    assert policy_digest(after) != policy_digest(before)


def test_a_policy_not_loaded_from_a_file_has_no_digest():
    with pytest.raises(ValueError, match="load_policy"):
        policy_digest(Policy.model_validate({"version": "x"}))


def test_a_rule_with_only_lexicons_is_valid_and_a_rule_with_nothing_is_not(policy_dir):
    load_policy(policy_dir / "policy.yaml")  # `slurs` has lexicons only
    path = write(policy_dir / "empty.yaml", POLICY.replace("lexicons: [lists/slurs.txt]}", "lexicons: []}"))
    with pytest.raises(PolicyError, match=r"empty\.yaml:20: output\.stages\.0\.rules\.0: .*literal, regex or lexicon"):
        load_policy(path)


def test_a_missing_lexicon_is_reported_at_its_policy_line(policy_dir):
    (policy_dir / "lists" / "slurs.txt").unlink()
    path = policy_dir / "policy.yaml"
    with pytest.raises(PolicyError) as raised:
        load_policy(path)
    lines = str(raised.value).splitlines()
    # Each of the three references, at its own line, with its field path.
    assert lines[0].startswith(f"{path}:10: input.stages.0.rules.0.lexicons.0: cannot read lexicon 'lists/slurs.txt'")
    assert lines[1].startswith(f"{path}:15: input.stages.0.rules.1.lexicons.1: cannot read lexicon")
    assert lines[2].startswith(f"{path}:20: output.stages.0.rules.0.lexicons.0: cannot read lexicon")
    assert len(lines) == 3


def test_lexicons_in_overrides_are_read_and_located(policy_dir):
    text = POLICY + """\
overrides:
  tenants:
    acme:
      input:
        stages:
          - type: blacklist
            rules:
              - id: acme.words
                category: abuse
                lexicons: [lists/abuse.txt, lists/nope.txt]
"""
    path = write(policy_dir / "tenant.yaml", text)
    with pytest.raises(PolicyError, match=r"tenant\.yaml:30: overrides\.tenants\.acme\.input\.stages\.0\.rules\.0"
                                          r"\.lexicons\.1: cannot read lexicon 'lists/nope.txt'"):
        load_policy(path)
    write(policy_dir / "lists" / "nope.txt", "acmeword\n")
    policy = load_policy(path)
    found = asyncio.run(Pipeline(policy).inspect(["an acmeword"], Context("input", tenant="acme")))
    assert found.rule_id == "acme.words"
    assert policy.source_files[-1] == policy_dir / "lists" / "nope.txt"


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"fine\nbad \xff\xfe byte\nfine too\n", "slurs.txt:2: not UTF-8 (invalid start byte at byte 4)"),
        ("ok\n\n\u200b\u200d\n".encode(), "slurs.txt:3: term '\\u200b\\u200d' is empty once normalised"),
        (b"# only a comment\n\n", "slurs.txt:1: the lexicon has no terms"),
    ],
)
def test_bad_lexicon_content_is_reported_at_the_lexicon_line(policy_dir, content, expected):
    write(policy_dir / "lists" / "slurs.txt", content)
    with pytest.raises(PolicyError, match=re.escape(expected)) as raised:
        load_policy(policy_dir / "policy.yaml")
    # Reported once, though three rules use the file.
    assert len(str(raised.value).splitlines()) == 1


def test_builtin_lexicons_resolve_to_the_package_and_unknown_ones_are_refused(tmp_path):
    assert {"en_hate_ngrams", "zh_sexist_abuse"} <= set(builtin_lexicons())
    path = write(tmp_path / "p.yaml", POLICY.replace("lists/slurs.txt", "builtin:en_hate_ngrams"))
    write(tmp_path / "lists" / "abuse.txt", "坏词语\n")
    policy = load_policy(path)
    assert policy.source_files[1] == SHIPPED / "en_hate_ngrams.txt"
    assert "nigger" in policy.input.stages[0].rules[0].literals
    broken = write(tmp_path / "q.yaml", POLICY.replace("- lists/slurs.txt", "- builtin:../schema"))
    with pytest.raises(PolicyError, match=r"q\.yaml:10: input\.stages\.0\.rules\.0\.lexicons\.0: unknown builtin "
                                          r"lexicon '\.\./schema' \(shipped: en_hate_ngrams, zh_sexist_abuse"):
        load_policy(broken)


@pytest.mark.parametrize("name", ["en_hate_ngrams", "zh_sexist_abuse"])
def test_shipped_lexicons_name_source_license_and_rates(name):
    path = SHIPPED / f"{name}.txt"
    data = path.read_bytes()
    header = [line for line in data.decode().splitlines() if line.startswith("#")]
    text = "\n".join(header)
    assert "Source: shared/data/" in text and "License: MIT" in text
    assert "Curation:" in text and "Hit rates" in text
    terms = parse_lexicon(path, data)
    assert len(terms) == len(set(terms)) > 20
    # No term that a curation step promises to have dropped.
    assert not [term for term in terms if len(term) == 1 or "\ufffd" in term]


def _texts(path: Path, key: str) -> list[str]:
    if path.suffix == ".json":
        return [row[key] for row in json.loads(path.read_text(encoding="utf-8"))]
    return [json.loads(line)[key] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _hit_rate(lexicon: str, texts: list[str]) -> float:
    terms = parse_lexicon(SHIPPED / f"{lexicon}.txt", (SHIPPED / f"{lexicon}.txt").read_bytes())
    blacklist = Blacklist([Rule("lexicon", "x", "flag", tuple(terms))])
    return sum(bool(blacklist.scan(text)) for text in texts) / len(texts)


@pytest.mark.skipif(not (DATA / "DATA.md").is_file(), reason="needs shared/data beside the repository")
def test_shipped_lexicons_stay_quiet_on_benign_prompts_and_fire_on_abuse():
    import csv

    benign = {
        "en_hate_ngrams": _texts(DATA / "en/benign_prompts/alpaca_harmless_val.json", "instruction"),
        "zh_sexist_abuse": _texts(DATA / "zh/benign_prompts/belle_eval_set.jsonl", "question")
        + _texts(DATA / "zh/benign_prompts/cvalues_sensitive_but_benign.jsonl", "prompt"),
    }
    with (DATA / "en/toxicity/davidson_labeled_data.csv").open(encoding="utf-8", newline="") as handle:
        hate = [row["tweet"] for row in csv.DictReader(handle) if row["class"] == "0"]
    with (DATA / "zh/offensive/swsr_sexcomment.csv").open(encoding="utf-8-sig", newline="") as handle:
        sexist = [row["comment_text"] for row in csv.DictReader(handle) if row["label"] == "1"]
    # Measured at build time: 0.0% / 0.1% benign, 36.9% / 16.9% (held-out half) positive; the bounds
    # leave room for changes to normalisation, not for a lexicon that floods or goes quiet.
    for lexicon, positives, at_least in (("en_hate_ngrams", hate, 0.30), ("zh_sexist_abuse", sexist, 0.12)):
        assert _hit_rate(lexicon, benign[lexicon]) <= 0.01, lexicon
        assert _hit_rate(lexicon, positives) >= at_least, lexicon


def test_lexicons_and_examples_are_package_data(tmp_path):
    """A normal (non-editable) install carries the lexicons: build a wheel from a copy and look in it."""
    source = tmp_path / "src"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".venv", ".git", "build", "*.egg-info", "__pycache__", ".*_cache", "bench", "deploy", "tests"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path / "dist"), str(source)], check=True, capture_output=True, timeout=120)
    (wheel,) = (tmp_path / "dist").glob("wardgate-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {f"policies/lexicons/{name}.txt" for name in builtin_lexicons()}
    shipped |= {f"policies/examples/{path.name}" for path in (ROOT / "policies" / "examples").glob("*")}
    assert shipped <= names, shipped - names
    assert "policies/default.yaml" in names


@pytest.mark.slow
@pytest.mark.skipif(not (DATA / "DATA.md").is_file(), reason="needs shared/data beside the repository")
def test_build_reproduces_the_shipped_lexicons(tmp_path):
    """Same data, same code → the same files; a change to the matcher that moves the rates shows here."""
    subprocess.run([sys.executable, "-m", "policies.lexicons.build", str(DATA), "--out", str(tmp_path)],
                   check=True, capture_output=True, cwd=ROOT, timeout=600)
    for name in ("en_hate_ngrams", "zh_sexist_abuse"):
        assert (tmp_path / f"{name}.txt").read_bytes() == (SHIPPED / f"{name}.txt").read_bytes(), name
