"""Which classifier `model: builtin` means in one deployment, and how it got there.

The shipped artifact serves until someone activates another one (`wardgate classifier activate DIR`,
for example the output of `wardgate dp-train`). Activation copies the artifact into the state
directory under its digest — what serves can no longer change under the gateway, and a rollback
always finds the bytes it names — and points `classifiers/active.json` at it. A running gateway
watches that pointer like its policy files: the new classifier goes through the same rollout
(direct, canary or shadow, under guard rails) and is taken back out by itself on a breach, which
points the file back. Every change is a line in `classifiers/history.jsonl`.

A policy that names a model directory of its own keeps it: the deployment replaces only `builtin`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from classifiers.labels import ClassifierError

SHIPPED = "shipped"  # names the packaged artifact in the history and on the command line
ARTIFACT_FILES = ("config.json", "delta.safetensors")
OPTIONAL_FILES = ("MODEL_CARD.md",)


def artifact_digest(directory: Path) -> str:
    """sha256 over the artifact's files, each preceded by its name and length: the same bytes give the
    same digest wherever they lie."""
    digest = hashlib.sha256()
    for name in ARTIFACT_FILES:
        try:
            data = (directory / name).read_bytes()
        except OSError as exc:
            raise ClassifierError(f"{directory}: not a classifier artifact: {exc.strerror}: {name}") from None
        digest.update(name.encode() + len(data).to_bytes(8, "big") + data)
    return digest.hexdigest()


@dataclass(frozen=True)
class DeployedClassifier:
    digest: str
    path: str  # the copy under the state directory that serves
    source: str  # where it was activated from
    activated_at: float
    reason: str


@dataclass(frozen=True)
class DeploymentEvent:
    at: float
    event: str  # activated | rolled_back
    digest: str  # SHIPPED for the packaged artifact
    source: str | None
    reason: str


class ClassifierDeployment:
    def __init__(self, state_dir: Path) -> None:
        self.root = state_dir / "classifiers"
        self.pointer = self.root / "active.json"
        self.history_path = self.root / "history.jsonl"

    def active(self) -> DeployedClassifier | None:
        """The activated classifier, or None where the shipped one serves."""
        try:
            raw = json.loads(self.pointer.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise ClassifierError(f"{self.pointer}: unreadable ({exc}); `wardgate classifier rollback --to "
                                  f"{SHIPPED}` rewrites it") from None
        if raw is None:
            return None
        try:
            return DeployedClassifier(**raw)
        except TypeError as exc:
            raise ClassifierError(f"{self.pointer}: not a deployment pointer ({exc})") from None

    def activate(self, source: Path, reason: str) -> DeployedClassifier:
        """Copy the artifact at `source` in (once per digest) and make it the active one. Raises
        ClassifierError if `source` is not an artifact this wardgate reads."""
        from classifiers.artifact import read_config  # torch: only where a classifier is handled

        read_config(source)  # format and fields, before anything is copied
        digest = artifact_digest(source)
        target = self.root / digest[:16]
        if not target.is_dir():
            staging = self.root / f".{digest[:16]}.{os.getpid()}"
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir(parents=True)
            for name in ARTIFACT_FILES + tuple(name for name in OPTIONAL_FILES if (source / name).is_file()):
                shutil.copyfile(source / name, staging / name)
            if artifact_digest(staging) != digest:
                shutil.rmtree(staging)
                raise ClassifierError(f"{source}: the artifact changed while it was being copied; try again")
            os.replace(staging, target)
        deployed = DeployedClassifier(digest, str(target.resolve()), str(source.resolve()), time.time(), reason)
        self._point_at(deployed, "activated", reason)
        return deployed

    def restore(self, digest: str | None, reason: str) -> DeployedClassifier | None:
        """Point back at an earlier activated digest (or a unique prefix of it), or at the shipped
        artifact for None or SHIPPED."""
        if digest is None or digest == SHIPPED:
            self._point_at(None, "rolled_back", reason)
            return None
        matches = [path for path in self.root.glob(f"{digest[:16]}*") if path.is_dir()
                   and not path.name.startswith(".")] if len(digest) >= 6 else []
        if len(matches) != 1:
            raise ClassifierError(f"no single activated classifier with digest {digest!r} in {self.root}"
                                  " (see `wardgate classifier deployed`)")
        full = artifact_digest(matches[0])
        source = next((event.source for event in reversed(self.history()) if event.digest == full), None)
        deployed = DeployedClassifier(full, str(matches[0].resolve()), source or str(matches[0]), time.time(), reason)
        self._point_at(deployed, "rolled_back", reason)
        return deployed

    def previous(self) -> str:
        """The digest that served before the active one (SHIPPED for the packaged artifact)."""
        active = self.active()
        current = active.digest if active is not None else SHIPPED
        for event in reversed(self.history()):
            if event.digest != current:
                return event.digest
        return SHIPPED

    def history(self) -> list[DeploymentEvent]:
        try:
            lines = self.history_path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return []
        events = []
        for line in lines:
            try:
                events.append(DeploymentEvent(**json.loads(line)))
            except (ValueError, TypeError):
                continue  # a line cut short by a crash mid-append: the pointer, not the history, decides
        return events

    def _point_at(self, deployed: DeployedClassifier | None, event: str, reason: str) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        temporary = self.pointer.with_name(f".active.json.{os.getpid()}")
        temporary.write_text(json.dumps(asdict(deployed) if deployed is not None else None), encoding="utf-8")
        os.replace(temporary, self.pointer)
        line = DeploymentEvent(time.time(), event, deployed.digest if deployed else SHIPPED,
                               deployed.source if deployed else None, reason)
        with self.history_path.open("a", encoding="utf-8") as history:
            history.write(json.dumps(asdict(line), ensure_ascii=False) + "\n")
