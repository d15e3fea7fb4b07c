"""Policy files: schema errors with file:line, override precedence, golden tests via the CLI."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import pytest

from gateway.pipeline import Context, Pipeline
from policies.schema import PolicyError, load_policy
from tests.conftest import WARDGATE

ROOT = Path(__file__).resolve().parent.parent

BASE = """\
version: "t1"
input:
  stages:
    - type: blacklist
      rules:
        - {id: default.kill, category: violence, literals: [kill]}
overrides:
  tenants:
    acme:
      input:
        stages:
          - type: blacklist
            rules:
              - {id: acme.secret, category: confidential, action: flag, literals: [project x]}
  routes:
    /v1/completions:
      input:
        stages:
          - type: blacklist
            rules:
              - {id: route.code, category: policy, action: redact, regexes: ['api_key=\\w+']}
tests:
  - {text: "kill it", expect: block, rule: default.kill}
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def verdict(policy, text: str, tenant: str | None = None, route: str | None = None):
    return asyncio.run(Pipeline(policy).inspect([text], Context("input", tenant, route)))


def test_precedence_route_over_tenant_over_default(tmp_path):
    policy = load_policy(write(tmp_path, BASE))
    assert verdict(policy, "kill it").rule_id == "default.kill"
    # The tenant's override replaces the default stages for that tenant.
    assert verdict(policy, "kill it", tenant="acme").action == "allow"
    assert verdict(policy, "about project x", tenant="acme").rule_id == "acme.secret"
    # The route's override wins over the tenant's.
    routed = verdict(policy, "use api_key=abc123 now", tenant="acme", route="/v1/completions")
    assert (routed.action, routed.rule_id) == ("redact", "route.code")
    assert routed.replacement == "use [REDACTED] now"
    assert verdict(policy, "about project x", tenant="acme", route="/v1/completions").action == "allow"
    # Another tenant on another route: the default.
    assert verdict(policy, "kill it", tenant="other", route="/v1/chat/completions").rule_id == "default.kill"


@pytest.mark.parametrize(
    ("broken", "expected"),
    [
        (BASE.replace("  stages:\n    - type", "  stages:\n   - type", 1), ":5: invalid YAML"),
        (BASE.replace("category: violence", "category: violence, severity: 3"),
         ":6: input.stages.0.rules.0.severity: unknown field"),
        (BASE.replace("'api_key=\\w+'", "'api_key=(\\w+'"),
         ":21: overrides.routes./v1/completions.input.stages.0.rules.0.regexes: Value error, invalid regex"),
        (BASE.replace('version: "t1"\n', ""), ":1: version: Field required"),
        (BASE.replace("literals: [kill]", "literals: []"), ":6: input.stages.0.rules.0: Value error, a rule needs"),
    ],
)
def test_broken_policies_name_file_and_line(tmp_path, broken, expected):
    path = write(tmp_path, broken)
    with pytest.raises(PolicyError) as raised:
        load_policy(path)
    assert f"{path}{expected}" in str(raised.value)


SHARED = """\
version: "t2"
rule_sets:
  harmful:
    - {id: weapons.bomb, category: illegal, literals: [pipe bomb, 制作炸弹], lexicons: [words.txt]}
input:
  stages:
    - type: blacklist
      rule_sets: [harmful]
      rules:
        - {id: input.only, category: policy, action: flag, literals: [secret]}
output:
  stages:
    - type: blacklist
      rule_sets: [harmful]
"""


def test_a_rule_set_guards_both_directions_with_its_lexicons(tmp_path):
    (tmp_path / "words.txt").write_text("nail bomb\n", encoding="utf-8")
    policy = load_policy(write(tmp_path, SHARED))
    pipeline = Pipeline(policy)
    for direction in ("input", "output"):
        for text in ("how to build a pipe bomb", "教我制作炸弹", "a nail bomb"):
            found = asyncio.run(pipeline.inspect([text], Context(direction)))
            assert (found.action, found.rule_id) == ("block", "weapons.bomb"), (direction, text)
    assert asyncio.run(pipeline.inspect(["a secret"], Context("input"))).rule_id == "input.only"
    assert asyncio.run(pipeline.inspect(["a secret"], Context("output"))).action == "allow"
    # The lexicon file is a source of the policy (hot reload watches it), read once.
    assert policy.source_files.count(tmp_path / "words.txt") == 1


@pytest.mark.parametrize(
    ("broken", "expected"),
    [
        (SHARED.replace("rule_sets: [harmful]\n      rules", "rule_sets: [harmfull]\n      rules"),
         ":8: input.stages.0.rule_sets.0: unknown rule set 'harmfull' (rule_sets: harmful)"),
        (SHARED.replace("id: input.only", "id: weapons.bomb"),
         ":8: input.stages.0.rule_sets: rule ids used more than once in this stage: weapons.bomb"),
        (SHARED[:SHARED.rindex("      rule_sets")] + "      redact_mask: x\n",
         "output.stages.0: Value error, a blacklist stage needs `rules` or `rule_sets`"),
    ],
)
def test_rule_set_mistakes_name_file_and_line(tmp_path, broken, expected):
    (tmp_path / "words.txt").write_text("nail bomb\n", encoding="utf-8")
    path = write(tmp_path, broken)
    with pytest.raises(PolicyError) as raised:
        load_policy(path)
    assert expected in str(raised.value)


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([WARDGATE, "policy", *args], capture_output=True, text=True, timeout=60)


def test_shipped_default_policy_validates_and_passes_its_golden_tests():
    default = str(ROOT / "policies" / "default.yaml")
    validated = run_cli("validate", default)
    assert validated.returncode == 0, validated.stderr
    assert "valid" in validated.stdout
    tested = run_cli("test", default)
    assert tested.returncode == 0, tested.stdout
    assert " 0 failed" in tested.stdout


@pytest.mark.parametrize("name", ["strict", "permissive", "per-tenant"])
def test_shipped_examples_validate_and_pass_their_golden_tests(name):
    example = str(ROOT / "policies" / "examples" / f"{name}.yaml")
    validated = run_cli("validate", example)
    assert validated.returncode == 0, validated.stderr
    assert f"{example}: valid" in validated.stdout
    tested = run_cli("test", example)
    assert tested.returncode == 0, tested.stdout
    assert " 0 failed" in tested.stdout and "FAIL" not in tested.stdout


def test_per_tenant_example_refuses_with_a_message_and_reads_its_own_lexicon():
    policy = load_policy(ROOT / "policies" / "examples" / "per-tenant.yaml")
    assert policy.on_block.mode == "refusal" and policy.on_block.message
    # Its tenant lexicon is read relative to the example, wherever the process runs.
    assert ROOT / "policies" / "examples" / "acme_codenames.txt" in policy.source_files


def test_policy_test_fails_on_a_failing_golden_case(tmp_path):
    path = write(tmp_path, BASE + '  - {text: "a harmless sentence about kill switches", expect: allow}\n')
    result = run_cli("test", str(path))
    assert result.returncode == 1
    assert "FAIL" in result.stdout and "1 passed, 1 failed" in result.stdout


def test_policy_validate_refuses_a_broken_file_without_traceback(tmp_path):
    path = write(tmp_path, BASE.replace("kill]", "kill"))
    result = run_cli("validate", str(path))
    assert result.returncode == 2
    assert f"{path}:" in result.stderr and "Traceback" not in result.stderr
