"""Lexicon files referenced from blacklist rules: resolution, errors with file:line, the policy's
source files and digest."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest

from gateway.pipeline import Context, Pipeline
from policies.schema import Policy, PolicyError, load_policy, policy_digest

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
