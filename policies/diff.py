"""What changed between two policies, in the terms a reviewer thinks in: rules added, removed and
changed (which terms, which action), per stage list, plus settings and golden tests.

Lexicon terms are part of their rule's literals, so a lexicon edit shows up as added and removed
terms of the rules that use it.
"""

from __future__ import annotations

from pydantic import BaseModel

from policies.schema import BlacklistRuleSpec, BlacklistStage, Policy

MAX_LISTED = 5


def diff_policies(old: Policy, new: Policy) -> list[str]:
    """One line per difference; empty when the two policies behave the same."""
    lines = []
    for field in ("version", "description", "on_block", "streaming", "unknown_content", "non_text_content"):
        before, after = _plain(getattr(old, field)), _plain(getattr(new, field))
        if before != after:
            lines.append(f"{field}: {before!r} -> {after!r}")
    old_lists, new_lists = dict(old.stage_lists()), dict(new.stage_lists())
    for location in [*old_lists, *(loc for loc in new_lists if loc not in old_lists)]:
        name = ".".join(str(part) for part in location[:-1])
        if location not in new_lists:
            lines.append(f"- {name}: stage list removed")
        elif location not in old_lists:
            lines.append(f"+ {name}: stage list added ({_stage_names(new_lists[location])})")
        else:
            lines += [f"{name}: {line}" for line in _diff_stages(old_lists[location], new_lists[location])]
    before_tests, after_tests = [_plain(test) for test in old.tests], [_plain(test) for test in new.tests]
    added = sum(test not in before_tests for test in after_tests)
    removed = sum(test not in after_tests for test in before_tests)
    if added or removed:
        lines.append(f"tests: +{added} -{removed} golden tests")
    return lines


def _plain(value: object) -> object:
    return value.model_dump() if isinstance(value, BaseModel) else value


def _stage_names(stages: list) -> str:
    return ", ".join(stage.type for stage in stages) or "no stages"


def _diff_stages(old: list, new: list) -> list[str]:
    if [stage.type for stage in old] != [stage.type for stage in new]:
        return [f"stages {_stage_names(old)} -> {_stage_names(new)}"]
    lines = []
    for before, after in zip(old, new, strict=True):
        if isinstance(before, BlacklistStage):
            lines += _diff_blacklists(before, after)
        elif _plain(before) != _plain(after):
            lines.append(f"{before.type} stage settings changed")
    return lines


def _diff_blacklists(old: BlacklistStage, new: BlacklistStage) -> list[str]:
    lines = []
    if old.redact_mask != new.redact_mask:
        lines.append(f"redact_mask {old.redact_mask!r} -> {new.redact_mask!r}")
    old_rules = {rule.id: rule for rule in old.rules}
    new_rules = {rule.id: rule for rule in new.rules}
    for rule_id, rule in old_rules.items():
        if rule_id not in new_rules:
            lines.append(f"- rule {rule_id} ({_summary(rule)})")
    for rule_id, rule in new_rules.items():
        if rule_id not in old_rules:
            lines.append(f"+ rule {rule_id} ({_summary(rule)})")
        else:
            changes = _rule_changes(old_rules[rule_id], rule)
            if changes:
                lines.append(f"~ rule {rule_id}: {'; '.join(changes)}")
    return lines


def _summary(rule: BlacklistRuleSpec) -> str:
    return f"{rule.action}, {rule.category}, {len(rule.literals)} literals, {len(rule.regexes)} regexes"


def _rule_changes(old: BlacklistRuleSpec, new: BlacklistRuleSpec) -> list[str]:
    changes = [f"{field} {getattr(old, field)} -> {getattr(new, field)}"
               for field in ("action", "category") if getattr(old, field) != getattr(new, field)]
    for field in ("literals", "regexes", "allow", "lexicons"):
        before, after = getattr(old, field), getattr(new, field)
        before_set, after_set = set(before), set(after)
        added = [item for item in after if item not in before_set]
        removed = [item for item in before if item not in after_set]
        if added or removed:
            changes.append(f"{field} {_listed('+', added)}{' ' if added and removed else ''}{_listed('-', removed)}")
    return changes


def _listed(sign: str, items: list[str]) -> str:
    if not items:
        return ""
    shown = ", ".join(repr(item) for item in items[:MAX_LISTED])
    more = f" and {len(items) - MAX_LISTED} more" if len(items) > MAX_LISTED else ""
    return f"{sign}{len(items)} ({shown}{more})"
