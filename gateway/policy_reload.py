"""The active policy and its hot reload; `GET /admin/policy`.

The gateway polls the files the active policy was built from (the policy file and its lexicons).
A changed file is loaded once it has stopped changing for one poll interval (an editor or a
ConfigMap update may write it in several steps), validated, compiled and its golden tests run, all
before it becomes active. A file that fails any of this never replaces the running policy; the
reason is logged, counted, kept for `GET /admin/policy` and written to the policy history.

Polling `stat()` rather than inotify: it costs microseconds a second, and it sees Kubernetes'
ConfigMap updates, which swap a symlinked directory instead of writing the file.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import structlog
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import Scope

from classifiers.deployment import ClassifierDeployment
from classifiers.labels import ClassifierError
from gateway.auth import Authenticator
from gateway.breakers import Breakers
from gateway.enforcement import Enforcer
from gateway.errors import GatewayError, error_response
from gateway.exchange import Exchange, begin_exchange, exchange_of
from gateway.pipeline import golden_failures, load_pipeline
from gateway.rollout import GuardRails, Rollout, RolloutMode, VersionStats, breach
from gateway.telemetry import Metrics
from gateway.verdict import strongest
from policies.history import HistoryError, PolicyHistory
from policies.schema import PolicyError
from privacy.audit.record import new_record
from privacy.audit.writer import AuditUnavailable, AuditWriter

log = structlog.get_logger("wardgate.policy")

# Shadow evaluations run after their responses; this many at once at most, so that they cannot pile up.
MAX_SHADOW_IN_FLIGHT = 64


def prepare(path: Path, breakers: Breakers | None = None, classifiers: ClassifierDeployment | None = None) -> Enforcer:
    """An enforcer for the policy file, with the classifier the deployment has activated; raises
    PolicyError (file:line) if it cannot be used."""
    try:
        deployed = classifiers.active() if classifiers is not None else None
    except ClassifierError as exc:
        raise PolicyError(str(exc)) from None
    return Enforcer(load_pipeline(path, breakers, deployed))


def changed_part(new: Enforcer, old: Enforcer) -> str:
    """What a new version changes, for the names of its events: `policy` (its files, perhaps with the
    classifier) or `classifier` alone."""
    return "classifier" if new.digest == old.digest else "policy"


async def failed_golden_tests(enforcer: Enforcer) -> list[str]:
    """`file:line: ...` for each golden test of the policy that fails; a policy with any is never activated."""
    return golden_failures(await enforcer.pipeline.run_golden_tests(), enforcer.policy)


@dataclass(frozen=True)
class ActivePolicy:
    enforcer: Enforcer
    activated_at: float

    @property
    def digest(self) -> str:
        """The version's identity in a rollout: its policy files and the activated classifier it uses."""
        return self.enforcer.version_key

    def describe(self) -> dict:
        policy = self.enforcer.policy
        return {
            "version": policy.version,
            "digest": self.enforcer.digest,
            "classifier_digest": self.enforcer.classifier_digest,
            "files": [str(path) for path in policy.source_files],
            "activated_at": _iso(self.activated_at),
            "golden_tests": len(policy.tests),
        }


@dataclass(frozen=True)
class Refusal:
    at: float
    path: str
    reason: str
    digest: str | None

    def describe(self) -> dict:
        return {"at": _iso(self.at), "path": self.path, "reason": self.reason, "digest": self.digest}


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="milliseconds")


class PolicyManager:
    def __init__(self, path: Path, metrics: Metrics, history: PolicyHistory | None, poll_s: float,
                 audit: AuditWriter | None = None, rollout_mode: RolloutMode = "direct",
                 canary_share: float = 0.1, rails: GuardRails | None = None,
                 breakers: Breakers | None = None, classifiers: ClassifierDeployment | None = None) -> None:
        """Loads `path` now; raises PolicyError if it cannot be used (the gateway must not start).
        `classifiers`: the deployment whose activated classifier `builtin` means, watched like the files."""
        self.path = path
        self.classifiers = classifiers
        self.metrics = metrics
        self.history = history
        self.audit = audit
        self.breakers = breakers
        self.rollout_mode = rollout_mode
        self.canary_share = canary_share
        self.rails = rails or GuardRails()
        # The version before the active one (what a breach restores), a canary or shadow version on
        # trial, the trial's record, and the recent outcomes of the active version (the baseline).
        self.previous: ActivePolicy | None = None
        self.candidate: ActivePolicy | None = None
        self.rollout: Rollout | None = None
        self.baseline = VersionStats()
        self.previous_baseline: VersionStats | None = None
        self._background: set[asyncio.Task] = set()
        self.poll_s = poll_s
        enforcer = prepare(path, breakers, classifiers)
        self.active = ActivePolicy(enforcer, time.time())
        self.last_refusal: Refusal | None = None
        self.history_error: str | None = None
        self._seen = self._fingerprint()
        self._watcher: asyncio.Task | None = None
        metrics.set_active_policy(enforcer.policy.version, enforcer.digest)

    @property
    def enforcer(self) -> Enforcer:
        return self.active.enforcer

    async def start(self) -> None:
        """Raises PolicyError if the policy's golden tests fail: it must not serve a single request."""
        failures = await failed_golden_tests(self.active.enforcer)
        if failures:
            raise PolicyError("\n".join(failures))
        await self._write_history("record_activation", self.active.enforcer.policy, "activated", "startup")
        await self._audit_event("policy_activated", self.active.enforcer, reason="startup")
        self._watcher = asyncio.create_task(self._watch())

    async def stop(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher

    def _fingerprint(self) -> tuple:
        """What `stat()` says about each watched file: any edit, replacement or removal changes it."""
        fingerprint = []
        watched = (self.path, *self.active.enforcer.policy.source_files[1:])
        for path in watched + ((self.classifiers.pointer,) if self.classifiers is not None else ()):
            try:
                stat = os.stat(path)
            except OSError:
                fingerprint.append(None)
            else:
                fingerprint.append((stat.st_mtime_ns, stat.st_size, stat.st_ino))
        return tuple(fingerprint)

    async def _watch(self) -> None:
        previous = self._seen
        while True:
            await asyncio.sleep(self.poll_s)
            current = self._fingerprint()
            if current == self._seen or current != previous:  # unchanged, or still being written
                previous = current
                continue
            # What was loaded is what was seen: an edit landing during the reload is seen next time.
            # (If the reload changed the set of lexicon files, the next poll's fingerprint has another
            # shape and costs one reload that finds the same digest.)
            self._seen = current
            try:
                await self.reload()
            except Exception:  # the watcher must outlive any surprise; the running policy stays
                log.exception("policy_reload_failed", path=str(self.path))

    async def reload(self) -> bool:
        """Try the policy file as it is now; True if it became active."""
        try:
            enforcer = await asyncio.to_thread(prepare, self.path, self.breakers, self.classifiers)
        except PolicyError as exc:
            await self._refuse(str(exc), None)
            return False
        if enforcer.version_key == self.active.digest:
            return False  # touched or rewritten with the same content
        # Golden tests run with the classifier the version uses: they gate a new classifier too.
        part = changed_part(enforcer, self.active.enforcer)
        failures = await failed_golden_tests(enforcer)
        if failures:
            await self._refuse("\n".join(failures), enforcer.digest, enforcer.classifier_digest)
            if part == "classifier" and self.classifiers is not None:  # else a restart would refuse to start
                await self._point_classifier_back(self.active.enforcer.classifier_digest, "failed golden tests")
            return False
        reason = "file changed" if part == "policy" else "classifier activated"
        self.rollout = Rollout(enforcer.version_key, self.rollout_mode, self.canary_share)
        if self.rollout_mode != "direct":  # on trial beside the active version
            self.candidate = ActivePolicy(enforcer, time.time())
            log.info(f"{part}_trial_started", mode=self.rollout_mode, version=enforcer.policy.version,
                     digest=enforcer.digest, classifier_digest=enforcer.classifier_digest,
                     running_version=self.active.enforcer.policy.version)
            await self._audit_event(f"{part}_{self.rollout_mode}_started", enforcer, reason=reason,
                                    running_version=self.active.enforcer.policy.version)
            return True
        await self._activate(enforcer, reason)
        return True

    async def _activate(self, enforcer: Enforcer, reason: str) -> None:
        previous = self.active.enforcer.policy.version
        part = changed_part(enforcer, self.active.enforcer)
        self.previous, self.active = self.active, ActivePolicy(enforcer, time.time())
        self.previous_baseline, self.baseline = self.baseline, VersionStats()
        self.metrics.set_active_policy(enforcer.policy.version, enforcer.digest)
        self.metrics.policy_reloads.labels("activated").inc()
        log.info(f"{part}_activated", path=str(self.path), version=enforcer.policy.version, digest=enforcer.digest,
                 classifier_digest=enforcer.classifier_digest, previous_version=previous, reason=reason)
        if part == "policy":  # the policy history keeps policy files; classifiers have their own
            await self._write_history("record_activation", enforcer.policy, "activated", reason)
        await self._audit_event(f"{part}_activated", enforcer, reason=reason, previous_version=previous)

    # -- rollout -----------------------------------------------------------------------------------
    def enforcer_for(self, request_id: str) -> Enforcer:
        """The version that enforces this request: the canary for its share of requests, else the active one."""
        candidate, rollout = self.candidate, self.rollout
        if candidate is not None and rollout is not None and rollout.mode == "canary" and rollout.takes(request_id):
            return candidate.enforcer
        return self.active.enforcer

    def observe(self, exchange: Exchange) -> None:
        """One request's outcome, counted for the version that handled it; judges a trial."""
        digest = exchange.version_key
        if digest is None:
            return
        blocked = any(verdict.action == "block" for verdict in exchange.verdicts.values())
        failed = (exchange.error_code or "").startswith("WG9")
        inspect_ms = sum(sum(stages.values()) for stages in exchange.stage_ms.values())
        rollout = self.rollout
        if rollout is not None and digest == rollout.digest:
            rollout.stats.observe(blocked, failed, inspect_ms)
            self._judge(rollout)
        elif digest == self.active.digest:
            self.baseline.observe(blocked, failed, inspect_ms)

    def spawn_shadow(self, texts: list[str], scope: Scope) -> None:
        """Run `shadow` in the background: the response has gone, nothing waits for it. Under load
        that outruns it, requests beyond MAX_SHADOW_IN_FLIGHT evaluations are not shadowed (a sample)."""
        if self.rollout is not None and self.rollout.mode == "shadow" and len(self._background) < MAX_SHADOW_IN_FLIGHT:
            self._spawn(self.shadow(texts, scope))

    async def shadow(self, texts: list[str], scope: Scope) -> None:
        """Evaluate the shadow version on a request's input texts (after its response has gone); a
        decision that differs from the enforced one is logged (rule ids, no text) and counted."""
        candidate, rollout = self.candidate, self.rollout
        if candidate is None or rollout is None or rollout.mode != "shadow":
            return
        exchange = exchange_of(scope)
        enforced = exchange.verdicts.get("input")
        # A record of its own: the shadow's verdicts and timings stay out of the request's.
        shadow_scope = {"path": scope["path"]}
        begin_exchange(shadow_scope, exchange.request_id).tenant = exchange.tenant
        started = time.perf_counter()
        verdicts = await candidate.enforcer.verdicts(texts, shadow_scope, "input")
        shadow = strongest(verdicts)
        enforced_action = enforced.action if enforced is not None else "allow"
        if shadow.action != enforced_action:
            rollout.shadow_differences += 1
            self.metrics.shadow_differences.inc()
            log.info("policy_shadow_difference", request_id=exchange.request_id, shadow_action=shadow.action,
                     shadow_rule_id=shadow.rule_id, enforced_action=enforced_action,
                     enforced_rule_id=enforced.rule_id if enforced is not None else None)
        rollout.stats.observe(shadow.action == "block", False, (time.perf_counter() - started) * 1000)
        self._judge(rollout)

    def _judge(self, rollout: Rollout) -> None:
        baseline = self.baseline if rollout.mode != "direct" else self.previous_baseline
        problem = breach(rollout.stats, baseline, self.rails)
        if problem is not None:
            self.rollout = None
            self._spawn(self._roll_back(rollout, problem))
        elif rollout.watched_long_enough(self.rails):
            self.rollout = None
            self._spawn(self._conclude(rollout))

    def _spawn(self, coroutine) -> None:
        task = asyncio.create_task(coroutine)
        self._background.add(task)  # keep a reference until it is done
        task.add_done_callback(self._background.discard)

    async def _roll_back(self, rollout: Rollout, problem: str) -> None:
        if rollout.mode == "direct":
            bad, restored = self.active, self.previous
            if restored is None:
                return
            self.active, self.previous = restored, None
            self.baseline, self.previous_baseline = self.previous_baseline or VersionStats(), None
            self.metrics.set_active_policy(restored.enforcer.policy.version, restored.enforcer.digest)
        else:
            bad, restored, self.candidate = self.candidate, self.active, None
        part = changed_part(bad.enforcer, restored.enforcer)
        self.metrics.policy_rollbacks.labels(rollout.mode).inc()
        log.warning(f"{part}_rolled_back", version=bad.enforcer.policy.version, digest=bad.enforcer.digest,
                    classifier_digest=bad.enforcer.classifier_digest, mode=rollout.mode, reason=problem,
                    restored_version=restored.enforcer.policy.version, trial=rollout.describe())
        reason = f"automatic: {problem}"
        if part == "policy":
            await self._write_history("record_activation", restored.enforcer.policy, "rollback", reason)
        elif self.classifiers is not None:
            await self._point_classifier_back(restored.enforcer.classifier_digest, reason)
        await self._audit_event(f"{part}_rolled_back", restored.enforcer, reason=reason,
                                rolled_back_version=bad.enforcer.policy.version,
                                rolled_back_digest=bad.enforcer.digest,
                                rolled_back_classifier_digest=bad.enforcer.classifier_digest, trial=rollout.describe())

    async def _point_classifier_back(self, digest: str | None, reason: str) -> None:
        """Make the deployment name the restored classifier again, so that a restart does not bring
        back the one that breached; the watcher is told it has seen the change."""
        try:
            await asyncio.to_thread(self.classifiers.restore, digest, reason)
        except (ClassifierError, OSError) as exc:
            log.error("classifier_pointer_not_restored", error=str(exc), pointer=str(self.classifiers.pointer))
        self._seen = self._fingerprint()

    async def _conclude(self, rollout: Rollout) -> None:
        """The watch ended without a breach: a canary or shadow version takes over."""
        if rollout.mode == "direct" or self.candidate is None:
            return
        candidate, self.candidate = self.candidate, None
        await self._activate(candidate.enforcer, f"{rollout.mode} passed its guard rails")

    async def _refuse(self, reason: str, digest: str | None, classifier_digest: str | None = None) -> None:
        self.last_refusal = Refusal(time.time(), str(self.path), reason, digest)
        self.metrics.policy_reloads.labels("refused").inc()
        log.warning("policy_refused", path=str(self.path), reason=reason,
                    running_version=self.active.enforcer.policy.version)
        await self._write_history("record_refusal", self.path, reason, digest)
        await self._audit_event("policy_refused", None, reason=reason, refused_digest=digest,
                                refused_classifier_digest=classifier_digest,
                                running_version=self.active.enforcer.policy.version)

    async def _audit_event(self, event: str, enforcer: Enforcer | None, **fields: object) -> None:
        """An admin event in the audit log. Like the history, failing to write it is logged, not fatal:
        the policy change has happened either way."""
        if self.audit is None:
            return
        if enforcer is not None:
            fields.update(policy_version=enforcer.policy.version, policy_digest=enforcer.digest,
                          classifier_digest=enforcer.classifier_digest)
        try:
            await self.audit.commit(new_record("event", event=event, policy_path=str(self.path), **fields))
        except AuditUnavailable as exc:
            log.error("audit_event_lost", audit_event=event, error=str(exc))

    async def _write_history(self, method: str, *args: object) -> None:
        """History is for rollback and forensics: failing to write it is logged, never fatal."""
        if self.history is None:
            return
        try:
            await asyncio.to_thread(getattr(self.history, method), *args)
            self.history_error = None
        except HistoryError as exc:
            self.history_error = str(exc)
            log.error("policy_history_unavailable", error=str(exc))

    async def describe(self) -> dict:
        recent = []
        if self.history is not None:
            try:
                events = await asyncio.to_thread(self.history.events, 20)
            except HistoryError as exc:
                self.history_error = str(exc)
            else:
                recent = [{"at": _iso(event.at), "event": event.event, "version": event.version,
                           "digest": event.digest, "reason": event.reason} for event in events]
        return {
            "active": self.active.describe(),
            "trial": self.rollout.describe() if self.rollout is not None else None,
            "rollout": {"mode": self.rollout_mode, "canary_share": self.canary_share,
                        "guard_rails": self.rails.__dict__},
            "last_refusal": self.last_refusal.describe() if self.last_refusal else None,
            "watching": {"path": str(self.path), "poll_interval_s": self.poll_s},
            "history": {"path": str(self.history.path) if self.history else None, "error": self.history_error,
                        "recent": recent},
        }


class AdminPolicyEndpoint:
    """`GET /admin/policy`: the active policy, the last refused file and the recent history."""

    def __init__(self, manager: PolicyManager | None, authenticator: Authenticator) -> None:
        self.manager = manager
        self.authenticator = authenticator

    async def get(self, request: Request) -> Response:
        try:
            self.authenticator.authenticate_admin(request.scope)
        except GatewayError as error:
            return error_response(request.scope, error)
        if self.manager is None:
            return JSONResponse({"active": None, "detail": "no policy: the gateway runs with --policy none"})
        return JSONResponse(await self.manager.describe())
