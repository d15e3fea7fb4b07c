"""The policy file format (pydantic), and loading a file with errors that name file, line and field.

A policy names its version, the stages that run on `input` and on `output`, per-tenant and
per-route overrides (precedence: route > tenant > default; an override replaces that direction's
stage list), what a block answers (a coded error, or a refusal returned as a normal completion),
and golden `tests` that must pass before the policy can become active. This module is data only:
it loads no model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import regex
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from policies.yaml_source import YamlSourceError, line_of, read_yaml

Action = Literal["allow", "flag", "redact", "block"]
Direction = Literal["input", "output"]
_STRICT = ConfigDict(extra="forbid")


class PolicyError(Exception):
    """The policy cannot be used; every problem is one line `file:line: field: message`."""


class BlacklistRuleSpec(BaseModel):
    model_config = _STRICT
    id: Annotated[str, Field(min_length=1)]
    category: Annotated[str, Field(min_length=1)]
    action: Literal["flag", "redact", "block"] = "block"
    literals: list[str] = Field(default_factory=list)
    regexes: list[str] = Field(default_factory=list)
    allow: list[str] = Field(default_factory=list)

    @field_validator("regexes")
    @classmethod
    def _compiles(cls, patterns: list[str]) -> list[str]:
        for pattern in patterns:
            try:
                regex.compile(pattern, regex.IGNORECASE | regex.V1)
            except regex.error as exc:
                raise ValueError(f"invalid regex {pattern!r}: {exc}") from None
        return patterns

    @model_validator(mode="after")
    def _has_patterns(self) -> BlacklistRuleSpec:
        if not self.literals and not self.regexes:
            raise ValueError("a rule needs at least one literal or regex")
        return self


class BlacklistStage(BaseModel):
    model_config = _STRICT
    type: Literal["blacklist"]
    redact_mask: str = "[REDACTED]"
    rules: Annotated[list[BlacklistRuleSpec], Field(min_length=1)]

    @model_validator(mode="after")
    def _unique_ids(self) -> BlacklistStage:
        ids = [rule.id for rule in self.rules]
        duplicates = sorted({rule_id for rule_id in ids if ids.count(rule_id) > 1})
        if duplicates:
            raise ValueError(f"rule ids used more than once: {', '.join(duplicates)}")
        return self


Stage = Annotated[BlacklistStage, Field(discriminator="type")]


class DirectionStages(BaseModel):
    model_config = _STRICT
    stages: list[Stage] = Field(default_factory=list)


class Override(BaseModel):
    model_config = _STRICT
    input: DirectionStages | None = None
    output: DirectionStages | None = None


class Overrides(BaseModel):
    model_config = _STRICT
    tenants: dict[str, Override] = Field(default_factory=dict)
    routes: dict[str, Override] = Field(default_factory=dict)


class OnBlock(BaseModel):
    model_config = _STRICT
    mode: Literal["error", "refusal"] = "error"
    message: str = "I can't help with that."


class GoldenTest(BaseModel):
    model_config = _STRICT
    text: str
    direction: Direction = "input"
    expect: Action
    rule: str | None = None
    tenant: str | None = None
    route: str | None = None


class Policy(BaseModel):
    model_config = _STRICT
    version: Annotated[str, Field(min_length=1)]
    description: str = ""
    on_block: OnBlock = Field(default_factory=OnBlock)
    input: DirectionStages = Field(default_factory=DirectionStages)
    output: DirectionStages = Field(default_factory=DirectionStages)
    overrides: Overrides = Field(default_factory=Overrides)
    tests: list[GoldenTest] = Field(default_factory=list)

    def stages_for(self, direction: Direction, tenant: str | None = None, route: str | None = None) -> list[Stage]:
        """The stages that apply: the route's override, else the tenant's, else the default."""
        for override in (self.overrides.routes.get(route or ""), self.overrides.tenants.get(tenant or "")):
            chosen = getattr(override, direction) if override is not None else None
            if chosen is not None:
                return chosen.stages
        return getattr(self, direction).stages


def load_policy(path: Path) -> Policy:
    """Parse and validate a policy file; raises PolicyError naming file, line and field."""
    try:
        document = read_yaml(path)
    except YamlSourceError as exc:
        if exc.reason == "unreadable":
            raise PolicyError(f"{path}: cannot read the policy: {exc.problem}") from None
        raise PolicyError(f"{path}:{exc.line}: invalid YAML: {exc.problem}") from None
    if not isinstance(document.data, dict):
        raise PolicyError(f"{path}:1: a policy is a mapping with at least `version`")
    try:
        return Policy.model_validate(document.data)
    except ValidationError as exc:
        lines = []
        for error in exc.errors(include_url=False):
            loc = [part for part in error["loc"] if not (isinstance(part, str) and part == "blacklist")]
            field = ".".join(str(part) for part in loc) or "(top level)"
            message = "unknown field" if error["type"] == "extra_forbidden" else error["msg"]
            lines.append(f"{path}:{line_of(document.root, loc)}: {field}: {message}")
        raise PolicyError("\n".join(lines)) from None
