"""A new policy version under live traffic: watched by guard rails, rolled back on a breach, promoted
when it passes — in direct, canary and shadow mode — without a request failing because of it."""

from __future__ import annotations

import re
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from tests.conftest import audit_events
from tests.test_policy_reload import write

POLICY = """\
version: "VERSION"
input:
  stages:
    - type: blacklist
      rules:
        - {id: banned, category: test, literals: [LITERALS]}
"""


def policy_text(version: str, literals: str) -> str:
    return POLICY.replace("VERSION", version).replace("LITERALS", literals)


def started(start_gateway, upstream, tmp_path: Path, mode: str, watch_s: float = 60, share: float = 0.5):
    policy, config = tmp_path / "policy.yaml", tmp_path / "wardgate.yaml"
    write(policy, policy_text("v1", "never-said"))
    config.write_text(f"rollout_mode: {mode}\nrollout_canary_share: {share}\nrollout_watch_s: {watch_s}\n"
                      "rollout_min_requests: 10\nguard_max_block_rate_increase: 0.3\n")
    gateway = start_gateway("--config", str(config), "--upstream", upstream.url, "--policy", str(policy),
                            "--audit-dsn", str(tmp_path / "audit.sqlite3"))
    return gateway, policy


def chat(gateway, text: str) -> httpx.Response:
    return httpx.post(gateway.url + "/v1/chat/completions", timeout=30,
                      json={"model": "echo", "messages": [{"role": "user", "content": text}]})


def traffic(gateway, count: int) -> list[int]:
    with ThreadPoolExecutor(4) as pool:
        return [response.status_code for response in pool.map(lambda _: chat(gateway, "hello there"), range(count))]


def metric(gateway, name: str) -> float:
    text = httpx.get(gateway.url + "/metrics", timeout=30).text
    found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def active_version(gateway) -> str:
    text = httpx.get(gateway.url + "/metrics", timeout=30).text
    return re.search(r'^wardgate_policy_info\{digest="[0-9a-f]+",version="([^"]+)"\} 1\.0$', text, re.MULTILINE)[1]


def wait_for(predicate, timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def events(tmp_path: Path) -> list[tuple[str, str | None]]:
    return [(body["event"], body.get("policy_version")) for body in audit_events(tmp_path / "audit.sqlite3")
            if body["event"] != "admin_access"]


def test_a_version_whose_block_rate_jumps_is_rolled_back_under_live_traffic(start_gateway, upstream, tmp_path):
    gateway, policy = started(start_gateway, upstream, tmp_path, "direct")
    assert traffic(gateway, 12) == [200] * 12  # the baseline: v1 blocks nothing of this
    write(policy, policy_text("v2", "hello"))  # passes validation, then blocks nearly everything
    wait_for(lambda: active_version(gateway) == "v2")
    statuses = traffic(gateway, 40)
    # Never a failure because of the rollback: v2's blocks, then v1's answers.
    assert set(statuses) <= {200, 400} and statuses.count(400) >= 10
    wait_for(lambda: active_version(gateway) == "v1")
    assert traffic(gateway, 5) == [200] * 5
    assert metric(gateway, 'wardgate_policy_rollbacks_total{mode="direct"}') == 1.0
    assert events(tmp_path)[-1] == ("policy_rolled_back", "v1")
    [rollback] = [body for body in audit_events(tmp_path / "audit.sqlite3") if body["event"] == "policy_rolled_back"]
    assert rollback["rolled_back_version"] == "v2" and "block rate" in rollback["reason"]


def test_a_canary_serves_its_share_and_is_withdrawn_on_a_breach(start_gateway, upstream, tmp_path):
    gateway, policy = started(start_gateway, upstream, tmp_path, "canary", share=0.5)
    assert traffic(gateway, 12) == [200] * 12
    write(policy, policy_text("v2", "hello"))
    wait_for(lambda: ("policy_canary_started", "v2") in events(tmp_path))
    assert active_version(gateway) == "v1"  # the canary does not take over
    statuses = traffic(gateway, 60)
    assert set(statuses) <= {200, 400}
    assert 10 <= statuses.count(400) <= 45  # about half went to the canary, until it was withdrawn
    wait_for(lambda: metric(gateway, 'wardgate_policy_rollbacks_total{mode="canary"}') == 1.0)
    assert traffic(gateway, 10) == [200] * 10
    assert active_version(gateway) == "v1"


def test_a_shadow_version_is_never_enforced_and_is_promoted_when_it_passes(start_gateway, upstream, tmp_path):
    gateway, policy = started(start_gateway, upstream, tmp_path, "shadow", watch_s=1)
    assert traffic(gateway, 12) == [200] * 12
    write(policy, policy_text("v2", "hello"))  # would block everything: only logged and counted
    wait_for(lambda: ("policy_shadow_started", "v2") in events(tmp_path))
    assert traffic(gateway, 20) == [200] * 20
    wait_for(lambda: metric(gateway, 'wardgate_policy_rollbacks_total{mode="shadow"}') == 1.0)
    assert metric(gateway, "wardgate_policy_shadow_differences_total") >= 10
    # A harmless change passes its watch and takes over.
    write(policy, policy_text("v3", "never-said, also-never-said"))
    wait_for(lambda: ("policy_shadow_started", "v3") in events(tmp_path))
    time.sleep(1.1)  # rollout_watch_s: 1
    assert traffic(gateway, 12) == [200] * 12
    wait_for(lambda: active_version(gateway) == "v3")
    assert ("policy_activated", "v3") in events(tmp_path)


def test_a_version_that_stays_within_its_guard_rails_is_kept(start_gateway, upstream, tmp_path):
    gateway, policy = started(start_gateway, upstream, tmp_path, "direct", watch_s=1)
    assert traffic(gateway, 12) == [200] * 12
    write(policy, policy_text("v2", "never-said, also-never-said"))
    wait_for(lambda: active_version(gateway) == "v2")
    time.sleep(1.1)
    assert traffic(gateway, 15) == [200] * 15
    assert active_version(gateway) == "v2"
    assert metric(gateway, 'wardgate_policy_rollbacks_total{mode="direct"}') == 0.0
