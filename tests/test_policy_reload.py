"""Hot reload under a live gateway, GET /admin/policy, and the policy history: diff, history, rollback."""

from __future__ import annotations

import hashlib
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import WARDGATE, audit_events
from tests.test_errors import assert_coded_error

ADMIN_KEY = "wg-test-admin"
USER_KEY = "wg-test-user"

POLICY = """\
version: "VERSION"
input:
  stages:
    - type: blacklist
      rules:
        - id: banned.terms
          category: test
          literals: [LITERALS]
tests:
  - {text: "say forbidden-word", expect: block, rule: banned.terms}
  - {text: "a harmless sentence", expect: allow}
"""


def policy_text(version: str, literals: str = "forbidden-word") -> str:
    return POLICY.replace("VERSION", version).replace("LITERALS", literals)


def write(path: Path, text: str) -> None:
    """Replace the file the way editors and ConfigMap updates do: a new file renamed over the old."""
    temporary = path.with_suffix(".tmp")
    temporary.write_text(text, encoding="utf-8")
    temporary.replace(path)


def _key_entry(key_id: str, key: str, role: str) -> str:
    digest = hashlib.sha256(key.encode()).hexdigest()
    return f"  - {{id: {key_id}, tenant: t-{key_id}, role: {role}, sha256: {digest}}}\n"


@pytest.fixture()
def live(start_gateway, upstream, tmp_path):
    """A gateway with admin and user keys whose policy file the test may edit."""
    policy = tmp_path / "policy.yaml"
    write(policy, policy_text("v1"))
    config = tmp_path / "wardgate.yaml"
    config.write_text("api_keys:\n" + _key_entry("admin", ADMIN_KEY, "admin") + _key_entry("user", USER_KEY, "user"))
    state = tmp_path / "state"
    gateway = start_gateway("--config", str(config), "--upstream", upstream.url, "--policy", str(policy),
                            env={"WARDGATE_STATE_DIR": str(state)})
    return gateway, policy, state


def chat(gateway, content: str, key: str = USER_KEY) -> httpx.Response:
    body = {"model": "echo", "messages": [{"role": "user", "content": content}]}
    return httpx.post(gateway.url + "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"},
                      timeout=10)


def admin_policy(gateway, key: str | None = ADMIN_KEY) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.get(gateway.url + "/admin/policy", headers=headers, timeout=10)


def wait_for(condition, timeout_s: float = 10.0) -> float:
    """Seconds until `condition()` held; fails the test if it never did."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if condition():
            return time.monotonic() - started
        time.sleep(0.05)
    raise AssertionError(f"condition not met within {timeout_s} s")


def active_version(gateway) -> str:
    return admin_policy(gateway).json()["active"]["version"]


def test_an_edit_takes_effect_without_a_restart(live):
    gateway, policy, _ = live
    assert chat(gateway, "say new-term").status_code == 200
    write(policy, policy_text("v2", "forbidden-word, new-term"))
    wait_for(lambda: active_version(gateway) == "v2")
    error = assert_coded_error(chat(gateway, "say new-term"), "WG1001")
    assert error["rule_id"] == "banned.terms"
    described = admin_policy(gateway).json()
    assert described["active"]["digest"] == hashlib.sha256(
        len(policy.read_bytes()).to_bytes(8, "big") + policy.read_bytes()).hexdigest()
    assert described["last_refusal"] is None
    metrics = httpx.get(gateway.url + "/metrics").text
    assert f'wardgate_policy_info{{digest="{described["active"]["digest"]}",version="v2"}} 1.0' in metrics
    assert 'version="v1"' not in metrics
    assert 'wardgate_policy_reloads_total{result="activated"} 1.0' in metrics
    # Every request is logged with the version that judged it.
    blocked = [line for line in gateway.wait_for_log(lambda line: line.get("policy_version") == "v2")
               if line.get("error_code") == "WG1001"][-1]
    assert (blocked["policy_version"], blocked["policy_digest"]) == ("v2", described["active"]["digest"])


BROKEN_EDITS = {
    "yaml syntax": (lambda text: text.replace("literals: [forbidden-word]", "literals: [forbidden-word"),
                    "invalid YAML"),
    "unknown field": (lambda text: text.replace("category: test", "category: test\n          severity: high"),
                      ":8: input.stages.0.rules.0.severity: unknown field"),
    "bad regex": (lambda text: text.replace("literals: [forbidden-word]", "regexes: ['(unclosed']"),
                  "invalid regex"),
    "failing golden test": (lambda text: text.replace("literals: [forbidden-word]", "literals: [other-word]"),
                            ":10: tests.0: golden test failed: expected block banned.terms, got allow"),
}


def test_a_broken_edit_never_replaces_the_running_policy(live):
    gateway, policy, _ = live
    good = policy.read_text()
    for name, (breaks, reason) in BROKEN_EDITS.items():
        before = admin_policy(gateway).json()["last_refusal"]
        write(policy, breaks(good.replace('"v1"', f'"broken {name}"')))
        wait_for(lambda before=before: admin_policy(gateway).json()["last_refusal"] != before)
        refusal = admin_policy(gateway).json()["last_refusal"]
        assert refusal["reason"].startswith(str(policy)) and reason in refusal["reason"], (name, refusal)
        assert active_version(gateway) == "v1", name
        assert_coded_error(chat(gateway, "say forbidden-word"), "WG1001")
        assert chat(gateway, "say other-word").status_code == 200
    metrics = httpx.get(gateway.url + "/metrics").text
    assert f'wardgate_policy_reloads_total{{result="refused"}} {len(BROKEN_EDITS)}.0' in metrics
    refused = [line for line in gateway.log_lines() if line.get("event") == "policy_refused"]
    assert len(refused) == len(BROKEN_EDITS) and all(line["running_version"] == "v1" for line in refused)
    # Fixing the file activates it.
    write(policy, policy_text("v3"))
    wait_for(lambda: active_version(gateway) == "v3")


def test_admin_policy_needs_an_admin_key(live, start_gateway, upstream):
    gateway, _, _ = live
    assert_coded_error(admin_policy(gateway, key=None), "WG3003")
    assert_coded_error(admin_policy(gateway, key="wrong"), "WG3003")
    assert_coded_error(admin_policy(gateway, key=USER_KEY), "WG3004")
    assert admin_policy(gateway).status_code == 200
    # With no admin key configured the endpoint stays closed.
    open_gateway = start_gateway("--upstream", upstream.url)
    error = assert_coded_error(admin_policy(open_gateway, key=None), "WG3003")
    assert "role: admin" in error["message"]


def run_cli(*args: str, state: Path) -> subprocess.CompletedProcess:
    return subprocess.run([WARDGATE, "policy", *args, "--state-dir", str(state)], capture_output=True, text=True,
                          timeout=60)


def test_history_and_rollback_work_after_a_restart(live, start_gateway, upstream, tmp_path):
    gateway, policy, state = live
    v1 = policy.read_text()
    write(policy, policy_text("v2", "forbidden-word, new-term"))
    wait_for(lambda: active_version(gateway) == "v2")
    write(policy, "version: [")  # refused: history records it too
    wait_for(lambda: admin_policy(gateway).json()["last_refusal"] is not None)
    gateway.stop()

    history = run_cli("history", state=state)
    assert history.returncode == 0, history.stderr
    rows = history.stdout.splitlines()[1:]
    assert [row.split()[2:4] for row in rows] == [["refused", "-"], ["activated", "v2"], ["activated", "v1"]]

    rollback = run_cli("rollback", state=state)  # to the version before the active v2
    assert rollback.returncode == 0, rollback.stderr
    assert policy.read_text() == v1
    assert "version v1" in rollback.stdout
    # Each policy change is an admin event in the audit log too, the rollback by the CLI included.
    events = [(body["event"], body.get("policy_version")) for body in audit_events(state / "audit.sqlite3")
              if body["event"] != "admin_access"]
    assert events == [("policy_activated", "v1"), ("policy_activated", "v2"), ("policy_refused", None),
                      ("policy_rolled_back", "v1")]

    restarted = start_gateway("--config", str(tmp_path / "wardgate.yaml"), "--upstream", upstream.url,
                              "--policy", str(policy), env={"WARDGATE_STATE_DIR": str(state)})
    assert active_version(restarted) == "v1"
    assert chat(restarted, "say new-term").status_code == 200
    # A named version can be restored too, under the live gateway.
    assert run_cli("rollback", "v2", state=state).returncode == 0
    wait_for(lambda: active_version(restarted) == "v2")
    assert_coded_error(chat(restarted, "say new-term"), "WG1001")


def test_rollback_refuses_an_unknown_version_and_an_empty_history(tmp_path):
    state = tmp_path / "state"
    empty = run_cli("rollback", state=state)
    assert empty.returncode == 2 and "no earlier policy version" in empty.stderr
    unknown = run_cli("rollback", "v9", state=state)
    assert unknown.returncode == 2 and "no stored policy version 'v9'" in unknown.stderr
    assert "Traceback" not in empty.stderr + unknown.stderr


def test_policy_diff(tmp_path):
    old, new = tmp_path / "old.yaml", tmp_path / "new.yaml"
    old.write_text(policy_text("v1", "forbidden-word, gone-word"))
    new.write_text(policy_text("v2", "forbidden-word, new-term").replace("category: test", "category: test\n"
                                                                           "          action: flag"))
    changed = subprocess.run([WARDGATE, "policy", "diff", str(old), str(new)], capture_output=True, text=True)
    assert changed.returncode == 1
    assert changed.stdout.splitlines() == [
        "version: 'v1' -> 'v2'",
        "input: ~ rule banned.terms: action block -> flag; literals +1 ('new-term') -1 ('gone-word')",
    ]
    same = subprocess.run([WARDGATE, "policy", "diff", str(old), str(old)], capture_output=True, text=True)
    assert (same.returncode, same.stdout.strip()) == (0, "no differences")
    missing = subprocess.run([WARDGATE, "policy", "diff", str(old), "no-such-version", "--state-dir",
                              str(tmp_path / "state")], capture_output=True, text=True)
    assert missing.returncode == 2 and "neither a policy file nor a version" in missing.stderr


def active_digest(gateway) -> str:
    """The digest label of wardgate_policy_info{version="v1"} (there is exactly one)."""
    [line] = [line for line in httpx.get(gateway.url + "/metrics").text.splitlines()
              if line.startswith("wardgate_policy_info{")]
    assert 'version="v1"' in line
    return line.split('digest="')[1].split('"')[0]


def test_a_lexicon_edit_reloads_the_policy(start_gateway, upstream, tmp_path):
    lexicon = tmp_path / "lists" / "terms.txt"
    lexicon.parent.mkdir()
    write(lexicon, "# banned terms\nforbidden-word\n")
    policy = tmp_path / "policy.yaml"
    write(policy, policy_text("v1").replace("literals: [forbidden-word]", "lexicons: [lists/terms.txt]"))
    gateway = start_gateway("--upstream", upstream.url, "--policy", str(policy))
    body = {"model": "echo", "messages": [{"role": "user", "content": "say lexicon-term"}]}
    assert httpx.post(gateway.url + "/v1/chat/completions", json=body).status_code == 200
    digest_before = active_digest(gateway)
    write(lexicon, "# banned terms\nforbidden-word\nlexicon-term\n")
    wait_for(lambda: httpx.post(gateway.url + "/v1/chat/completions", json=body).status_code == 400)
    # Same version string, new content: the digest tells them apart.
    assert active_digest(gateway) != digest_before
    assert 'wardgate_policy_reloads_total{result="activated"} 1.0' in httpx.get(gateway.url + "/metrics").text
    # An emptied lexicon is refused: the running policy keeps its terms.
    write(lexicon, "# nothing left\n")
    wait_for(lambda: 'result="refused"} 1.0' in httpx.get(gateway.url + "/metrics").text)
    assert httpx.post(gateway.url + "/v1/chat/completions", json=body).status_code == 400
