"""Activating another classifier artifact, rolling it out under guard rails and back — by itself on a
breach or a failed golden test, or by hand with `wardgate classifier rollback`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from classifiers.deployment import SHIPPED, ClassifierDeployment, artifact_digest
from classifiers.labels import ClassifierError
from classifiers.registry import BUILTIN_DIR
from privacy.audit.store import AuditFilter, open_store
from tests.conftest import audit_events
from tests.test_audit_cli import wardgate
from tests.test_policy_reload import write
from tests.test_rollout import active_version, chat, events, metric, traffic, wait_for

POLICY = """\
version: "with-classifier"
input:
  stages:
    - type: classifier
      block: {unsafe: 0.5}
"""
GOLDEN = '\ntests:\n  - {text: "hello there", expect: allow}\n'


def trigger_happy_artifact(directory: Path) -> Path:
    """The shipped weights with a calibration that calls everything unsafe: loads and scores fine, and
    blocks every request. The graph is the shipped one's (calibration is applied to its logits)."""
    shutil.copytree(BUILTIN_DIR, directory)
    config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    for key in ("calibration", "calibration_int8"):
        if config.get(key):
            config[key] = {label: [1.0, 30.0] for label in config[key]}
    (directory / "config.json").write_text(json.dumps(config), encoding="utf-8")
    return directory


def test_activate_copies_the_artifact_under_its_digest_and_rollback_points_back(tmp_path):
    deployment = ClassifierDeployment(tmp_path / "state")
    assert deployment.active() is None and deployment.previous() == SHIPPED
    source = trigger_happy_artifact(tmp_path / "candidate")
    deployed = deployment.activate(source, "test")
    assert deployed.digest == artifact_digest(source) != artifact_digest(BUILTIN_DIR)
    # What serves is a copy: editing or deleting the source changes nothing.
    shutil.rmtree(source)
    assert artifact_digest(Path(deployed.path)) == deployed.digest
    assert deployment.active() == deployed and deployment.previous() == SHIPPED
    assert deployment.restore(SHIPPED, "back") is None and deployment.active() is None
    assert deployment.previous() == deployed.digest
    again = deployment.restore(deployed.digest[:8], "forward again")
    assert again.digest == deployed.digest and again.path == deployed.path
    assert [event.event for event in deployment.history()] == ["activated", "rolled_back", "rolled_back"]
    with pytest.raises(ClassifierError, match="no single activated classifier"):
        deployment.restore("abcdef12", "unknown")


def test_a_damaged_pointer_is_an_error_that_says_how_to_fix_it(tmp_path):
    deployment = ClassifierDeployment(tmp_path)
    deployment.root.mkdir()
    deployment.pointer.write_text("{not json", encoding="utf-8")
    with pytest.raises(ClassifierError, match="classifier rollback --to shipped"):
        deployment.active()


def test_cli_activate_refuses_what_is_not_an_artifact_and_records_what_it_activates(tmp_path):
    state = tmp_path / "state"
    (tmp_path / "empty").mkdir()
    refused = wardgate("classifier", "activate", str(tmp_path / "empty"), "--state-dir", str(state))
    assert refused.returncode == 2 and "cannot activate" in refused.stderr and "config.json" in refused.stderr
    assert not (state / "classifiers" / "active.json").exists()

    source = trigger_happy_artifact(tmp_path / "candidate")
    activated = wardgate("classifier", "activate", str(source), "--state-dir", str(state))
    assert activated.returncode == 0, activated.stderr
    digest = artifact_digest(source)
    assert "activated classifier " + digest[:16] in activated.stdout
    shown = wardgate("classifier", "deployed", "--state-dir", str(state))
    assert f"active: {digest[:16]}" in shown.stdout and "activated" in shown.stdout
    rolled = wardgate("classifier", "rollback", "--state-dir", str(state))
    assert rolled.returncode == 0 and "active classifier: shipped" in rolled.stdout
    assert ClassifierDeployment(state).active() is None
    recorded = [(body["event"], body["classifier_digest"]) for body in audit_events(state / "audit.sqlite3")]
    assert recorded == [("classifier_activated", digest), ("classifier_rolled_back", SHIPPED)]


def test_policy_test_runs_the_golden_tests_with_the_activated_classifier(tmp_path):
    policy, state = tmp_path / "policy.yaml", tmp_path / "state"
    write(policy, POLICY + GOLDEN)
    ClassifierDeployment(state).activate(trigger_happy_artifact(tmp_path / "candidate"), "test")
    shipped = wardgate("policy", "test", str(policy))
    assert shipped.returncode == 0 and "1 passed, 0 failed" in shipped.stdout
    activated = wardgate("policy", "test", str(policy), "--state-dir", str(state))
    assert activated.returncode == 1 and "0 passed, 1 failed" in activated.stdout


def _gateway(start_gateway, upstream, tmp_path: Path, policy_text: str):
    policy, config, state = tmp_path / "policy.yaml", tmp_path / "wardgate.yaml", tmp_path / "state"
    write(policy, policy_text)
    config.write_text("rollout_mode: direct\nrollout_watch_s: 60\nrollout_min_requests: 10\n"
                      "guard_max_block_rate_increase: 0.3\npolicy_poll_s: 0.1\n")
    gateway = start_gateway("--config", str(config), "--upstream", upstream.url, "--policy", str(policy),
                            "--audit-dsn", str(tmp_path / "audit.sqlite3"), env={"WARDGATE_STATE_DIR": str(state)})
    return gateway, ClassifierDeployment(state)


def test_an_activated_classifier_that_blocks_too_much_is_rolled_back_under_live_traffic(
        start_gateway, upstream, tmp_path):
    gateway, deployment = _gateway(start_gateway, upstream, tmp_path, POLICY)
    assert traffic(gateway, 12) == [200] * 12  # the shipped classifier lets a greeting through
    deployed = deployment.activate(trigger_happy_artifact(tmp_path / "candidate"), "test")
    wait_for(lambda: ("classifier_activated", "with-classifier") in events(tmp_path))
    statuses = traffic(gateway, 40)
    # Never a failure because of the rollback: the new classifier's blocks, then the shipped one's answers.
    assert set(statuses) <= {200, 400} and statuses.count(400) >= 10
    wait_for(lambda: ("classifier_rolled_back", "with-classifier") in events(tmp_path))
    assert traffic(gateway, 5) == [200] * 5
    assert metric(gateway, 'wardgate_policy_rollbacks_total{mode="direct"}') == 1.0
    assert active_version(gateway) == "with-classifier"
    # The deployment names the shipped classifier again: a restart does not bring the bad one back.
    assert deployment.active() is None
    assert [event.event for event in deployment.history()] == ["activated", "rolled_back"]
    [rollback] = [body for body in audit_events(tmp_path / "audit.sqlite3")
                  if body["event"] == "classifier_rolled_back"]
    store = open_store(str(tmp_path / "audit.sqlite3"))
    try:
        blocked = [row for row in store.query(AuditFilter(kind="request"), limit=100)
                   if row.body.get("decision") == "block"]
    finally:
        store.close()
    assert rollback["rolled_back_classifier_digest"] == deployed.digest and "block rate" in rollback["reason"]
    # Each decision names the classifier that made it.
    assert blocked and {row.body["classifier_digest"] for row in blocked} == {deployed.digest}


def test_a_classifier_that_fails_the_policys_golden_tests_never_serves(start_gateway, upstream, tmp_path):
    gateway, deployment = _gateway(start_gateway, upstream, tmp_path, POLICY + GOLDEN)
    deployed = deployment.activate(trigger_happy_artifact(tmp_path / "candidate"), "test")
    wait_for(lambda: ("policy_refused", None) in events(tmp_path))
    wait_for(lambda: deployment.active() is None)  # pointed back at once
    assert chat(gateway, "hello there").status_code == 200
    [refused] = [body for body in audit_events(tmp_path / "audit.sqlite3") if body["event"] == "policy_refused"]
    assert "hello there" in refused["reason"] and refused["refused_classifier_digest"] == deployed.digest
    assert deployment.history()[-1].reason == "failed golden tests"
