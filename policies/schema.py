"""The policy file format (pydantic), and loading a file with errors that name file, line and field.

A policy names its version, the stages that run on `input` and on `output`, per-tenant and
per-route overrides (precedence: route > tenant > default; an override replaces that direction's
stage list), what a block answers (a coded error, or a refusal returned as a normal completion),
and golden `tests` that must pass before the policy can become active. This module is data only:
it loads no model.

A blacklist rule may also name lexicon files (`lexicons:`), one term a line; `load_policy` reads them
and appends their terms to the rule's `literals`. The loaded policy remembers every file it was
built from, with the bytes read at load time (`source_files`, `source_bytes`, `policy_digest`), so
that hot reload can watch them and a version can be named by its content.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal
from urllib.parse import urlsplit

import regex
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from classifiers.labels import LABELS
from filters.guard_model import BUNDLED_URL_ENV, FAMILIES, SHIELDGEMMA_HARM_TYPES
from filters.moderation_hook import OPENAI_LABELS, template_has_text
from filters.normalize import normalize
from policies.yaml_source import YamlDocument, YamlSourceError, line_of, parse_yaml

if TYPE_CHECKING:
    import yaml

Action = Literal["allow", "flag", "redact", "block"]
Label = Literal[LABELS]
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
    # Lexicon files whose terms become literals of this rule: a path relative to the policy file,
    # or `builtin:NAME` for policies/lexicons/NAME.txt shipped in the package.
    lexicons: list[Annotated[str, Field(min_length=1)]] = Field(default_factory=list)
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
        if not self.literals and not self.regexes and not self.lexicons:
            raise ValueError("a rule needs at least one literal, regex or lexicon")
        return self


class BlacklistStage(BaseModel):
    model_config = _STRICT
    type: Literal["blacklist"]
    redact_mask: str = "[REDACTED]"
    # Names of the policy's `rule_sets` whose rules this stage runs before its own: one rule list
    # can guard both directions (a harmful instruction is as harmful in a completion as in a prompt).
    rule_sets: list[Annotated[str, Field(min_length=1)]] = Field(default_factory=list)
    rules: list[BlacklistRuleSpec] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique_ids(self) -> BlacklistStage:
        if not self.rules and not self.rule_sets:
            raise ValueError("a blacklist stage needs `rules` or `rule_sets`")
        ids = [rule.id for rule in self.rules]
        duplicates = sorted({rule_id for rule_id in ids if ids.count(rule_id) > 1})
        if duplicates:
            raise ValueError(f"rule ids used more than once: {', '.join(duplicates)}")
        return self


class ClassifierStage(BaseModel):
    """The risk classifier: a text scoring at or above a `block` threshold is blocked, else at or
    above a `flag` threshold flagged. Thresholds are per label; each direction has its own stages,
    so its own thresholds."""

    model_config = _STRICT
    type: Literal["classifier"]
    # `builtin` = the artifact shipped in classifiers/; else a directory (relative to the policy file):
    # a wardgate artifact, or any local BERT sequence-classification checkpoint whose labels are ours.
    model: Annotated[str, Field(min_length=1)] = "builtin"
    quantize: Literal["int8", "none"] = "int8"
    block: dict[Label, Annotated[float, Field(ge=0, le=1)]] = Field(default_factory=lambda: {"unsafe": 0.5})
    flag: dict[Label, Annotated[float, Field(ge=0, le=1)]] = Field(default_factory=dict)


class ModerationCache(BaseModel):
    model_config = _STRICT
    max_entries: Annotated[int, Field(ge=1, le=10_000_000)] = 10000
    ttl_s: Annotated[float, Field(gt=0)] = 300


class ServiceStage(BaseModel):
    """What every stage that calls a service has: where, how long it may take, how many calls at once, a
    cache, a token, and `on_failure`: what a text gets when the service gives no usable answer."""

    model_config = _STRICT
    url: Annotated[str, Field(min_length=1)]
    timeout_s: Annotated[float, Field(gt=0, le=60)] = 2.0
    max_concurrency: Annotated[int, Field(ge=1, le=4096)] = 32
    cache: ModerationCache | None = None
    auth_env: Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")] | None = None
    on_failure: Literal["block", "allow", "flag"] = "block"

    @field_validator("url")
    @classmethod
    def _http_url(cls, url: str) -> str:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{url!r} is not an http:// or https:// URL with a host")
        return url

    @field_validator("auth_env")
    @classmethod
    def _auth_env_set(cls, name: str | None) -> str | None:
        # Checked when the policy loads, so that a missing secret stops the load, not every request.
        if name is not None and not os.environ.get(name):
            raise ValueError(f"environment variable {name} is not set (the service's token)")
        return name


class ModerationStage(ServiceStage):
    """An external moderation service (filters/moderation_hook): thresholds work as the classifier's."""

    type: Literal["moderation"]
    format: Literal["openai", "webhook"] = "openai"
    model: Annotated[str, Field(min_length=1)] | None = None  # openai only
    request: dict[str, Any] | None = None  # webhook only: the JSON template, `{text}` in its strings
    response: dict[Label, Annotated[str, Field(min_length=1)]] = Field(default_factory=dict)  # webhook only
    block: dict[Label, Annotated[float, Field(ge=0, le=1)]] = Field(default_factory=lambda: {"unsafe": 0.5})
    flag: dict[Label, Annotated[float, Field(ge=0, le=1)]] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _format_fields(self) -> ModerationStage:
        if self.format == "openai":
            if self.request is not None or self.response:
                raise ValueError("`request` and `response` are for format: webhook (openai has a fixed format)")
            produced = OPENAI_LABELS
        else:
            if self.model is not None:
                raise ValueError("`model` is for format: openai (put it in the webhook's `request`)")
            if not self.response:
                raise ValueError("format: webhook needs a `response` mapping (label: dotted.path)")
            if self.request is not None and not template_has_text(self.request):
                raise ValueError("the webhook `request` template never says {text}: the text would not be sent")
            bad_paths = [path for path in self.response.values() if "" in path.split(".")]
            if bad_paths:
                raise ValueError(f"response paths with an empty part: {', '.join(bad_paths)}")
            produced = frozenset(self.response)
        unscored = sorted({*self.block, *self.flag} - produced)
        if unscored:
            raise ValueError(f"thresholds on labels this hook does not score: {', '.join(unscored)}")
        return self


Band = tuple[Annotated[float, Field(ge=0, le=1)], Annotated[float, Field(ge=0, le=1)]]
# The stages whose scores a guard model's `when` can read.
SCORING_STAGES = ("classifier", "moderation")


class GuardModelStage(ServiceStage):
    """A guard model behind an OpenAI-compatible chat endpoint (filters/guard_model). With `when`, it is
    asked only about texts that an earlier stage scored inside a band (a cascade: the classifier's
    uncertain middle); with `sample`, also about that share of all texts, for calibration (recorded,
    not enforced); with neither, about every text."""

    type: Literal["guard_model"]
    family: Literal[FAMILIES]
    model: Annotated[str, Field(min_length=1)]  # the name the server serves the guard under
    when: dict[Literal[SCORING_STAGES], Annotated[dict[Label, Band], Field(min_length=1)]] | None = None
    sample: Annotated[float, Field(ge=0, le=1)] | None = None
    max_concurrency: Annotated[int, Field(ge=1, le=4096)] = 16
    unsafe: Literal["block", "flag"] = "block"
    controversial: Literal["block", "flag", "allow"] = "flag"  # qwen3guard's middle tier
    max_tokens: Annotated[int, Field(ge=1, le=32768)] | None = None
    # A response is judged with its prompt: the prompt's last characters, up to this many.
    max_prompt_chars: Annotated[int, Field(ge=0, le=1_000_000)] = 4000
    threshold: Annotated[float, Field(ge=0, le=1)] = 0.5  # shieldgemma: P(Yes) that violates
    harm_types: list[Literal[SHIELDGEMMA_HARM_TYPES]] | None = None  # shieldgemma; default: all four
    policy: Annotated[str, Field(min_length=1)] | None = None  # gpt_oss_safeguard; default: ours

    @field_validator("url", mode="before")
    @classmethod
    def _bundled(cls, url: Any) -> Any:
        """`bundled`: the guard model server `wardgate serve --guard-model DIR` started (resolved at load)."""
        if url != "bundled":
            return url
        base = os.environ.get(BUNDLED_URL_ENV)
        if not base:
            raise ValueError("`url: bundled` names the guard model server that `wardgate serve --guard-model DIR` "
                             "starts, and none was started: give --guard-model, or the guard server's URL")
        return base + "/v1/chat/completions"

    @model_validator(mode="after")
    def _family_fields(self) -> GuardModelStage:
        if self.harm_types is not None and self.family != "shieldgemma":
            raise ValueError("`harm_types` is for family: shieldgemma")
        if self.policy is not None and self.family != "gpt_oss_safeguard":
            raise ValueError("`policy` is for family: gpt_oss_safeguard (the others have a fixed taxonomy)")
        for stage, bands in (self.when or {}).items():
            for label, (low, high) in bands.items():
                if low > high:
                    raise ValueError(f"when.{stage}.{label}: the band [{low}, {high}] is empty (low > high)")
        return self


Stage = Annotated[BlacklistStage | ClassifierStage | ModerationStage | GuardModelStage, Field(discriminator="type")]
STAGE_TYPES = ("blacklist", "classifier", "moderation", "guard_model")


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


class Streaming(BaseModel):
    """How output is judged in pieces. A stream releases text only once every stage has judged it:
    no character of a span a stage blocks reaches the client, and a streamed answer gets the verdict
    the same answer gets whole."""

    model_config = _STRICT
    # The blacklist: streamed text is released only once this much judged text follows it, or more
    # where a blocking rule can match a longer span (its longest literal, its widest bounded regex), so
    # that a term split across events is caught before any part of it is sent. A match longer than that
    # (words joined by long runs of separators, or padded with invisible characters) can straddle text
    # already sent.
    holdback_chars: Annotated[int, Field(ge=0, le=65536)] = 64
    # The classifier and the moderation hook judge a completion in windows of this many characters,
    # streamed or not (~30 English tokens; 128 Chinese characters are about one 126-token classifier
    # window). A stream's first text waits for its first window: this is the delay they add to a stream.
    window_chars: Annotated[int, Field(ge=16, le=65536)] = 128
    # Consecutive windows share this many characters: a phrase up to this long is always judged whole.
    # More overlap, more windows per answer (a 300-character answer: 4 windows at 128/64, 1 when
    # not windowed).
    window_overlap_chars: Annotated[int, Field(ge=0, le=65535)] = 64

    @model_validator(mode="after")
    def _windows_advance(self) -> Streaming:
        if self.window_overlap_chars >= self.window_chars:
            raise ValueError("window_overlap_chars must be smaller than window_chars")
        return self


class AuditSettings(BaseModel):
    """What the audit log keeps of this policy's requests."""

    model_config = _STRICT
    # none: a salted digest only; redacted: personal data and secrets masked; full: the text as sent.
    retention: Literal["none", "redacted", "full"] = "redacted"
    # Stored texts older than this are purged (records and digests stay, so the chain still verifies).
    retention_days: Annotated[float, Field(gt=0)] | None = 90
    # The store is down or cannot keep up: spill to a local file (replayed later), or answer 503.
    on_store_failure: Literal["spill", "fail_closed"] = "spill"


class Policy(BaseModel):
    model_config = _STRICT
    version: Annotated[str, Field(min_length=1)]
    description: str = ""
    # Named lists of blacklist rules that stages of either direction include with `rule_sets:`.
    rule_sets: dict[Annotated[str, Field(min_length=1)], Annotated[list[BlacklistRuleSpec], Field(min_length=1)]] \
        = Field(default_factory=dict)
    on_block: OnBlock = Field(default_factory=OnBlock)
    streaming: Streaming = Field(default_factory=Streaming)
    input: DirectionStages = Field(default_factory=DirectionStages)
    output: DirectionStages = Field(default_factory=DirectionStages)
    overrides: Overrides = Field(default_factory=Overrides)
    audit: AuditSettings = Field(default_factory=AuditSettings)
    # Content parts of a type, or with a key, that the OpenAI schema does not have: the gateway cannot
    # tell what the model would read there. reject: refuse the request (WG4010); strip: forward it
    # without them.
    unknown_content: Literal["reject", "strip"] = "reject"
    # Images, audio, files and token-id prompts, which no stage can read: forward them uninspected
    # (the audit record lists them) or refuse the request (WG4011).
    non_text_content: Literal["allow", "reject"] = "allow"
    tests: list[GoldenTest] = Field(default_factory=list)
    # (resolved path, bytes as read) of the policy file, then of each lexicon file; set by load_policy.
    _sources: tuple[tuple[Path, bytes], ...] = PrivateAttr(default=())

    @property
    def source_files(self) -> tuple[Path, ...]:
        """The files this policy was built from: the policy file, then each lexicon file (absolute)."""
        return tuple(path for path, _ in self._sources)

    @property
    def source_bytes(self) -> tuple[tuple[Path, bytes], ...]:
        """(path, bytes) of each source file as it was read when the policy was loaded."""
        return self._sources

    def stage_lists(self) -> Iterator[tuple[tuple[str | int, ...], list[Stage]]]:
        """Every stage list with its location in the file: the defaults', then each override's."""
        for direction in ("input", "output"):
            yield (direction, "stages"), getattr(self, direction).stages
        for kind, overrides in (("tenants", self.overrides.tenants), ("routes", self.overrides.routes)):
            for name, override in overrides.items():
                for direction in ("input", "output"):
                    chosen = getattr(override, direction)
                    if chosen is not None:
                        yield ("overrides", kind, name, direction, "stages"), chosen.stages

    def stages_for(self, direction: Direction, tenant: str | None = None, route: str | None = None) -> list[Stage]:
        """The stages that apply: the route's override, else the tenant's, else the default."""
        for override in (self.overrides.routes.get(route or ""), self.overrides.tenants.get(tenant or "")):
            chosen = getattr(override, direction) if override is not None else None
            if chosen is not None:
                return chosen.stages
        return getattr(self, direction).stages


def policy_digest(policy: Policy) -> str:
    """sha256 (hex) over the bytes of every source file as read at load time, each prefixed by its
    length (8 bytes, big-endian) so that moving bytes from one file to the next changes the digest."""
    if not policy.source_bytes:
        raise ValueError("the policy was not loaded from a file (use load_policy): it has no digest")
    digest = hashlib.sha256()
    for _, data in policy.source_bytes:
        digest.update(len(data).to_bytes(8, "big") + data)
    return digest.hexdigest()


BUILTIN_PREFIX = "builtin:"


def builtin_lexicons() -> list[str]:
    """Names usable as `builtin:NAME`: the .txt files in policies/lexicons/ (package data)."""
    return sorted(entry.name.removesuffix(".txt") for entry in files("policies").joinpath("lexicons").iterdir()
                  if entry.name.endswith(".txt"))


def _lexicon_path(reference: str, policy_dir: Path) -> Path:
    """The file a `lexicons` entry names; raises ValueError (worded for the policy's author)."""
    if reference.startswith(BUILTIN_PREFIX):
        name = reference.removeprefix(BUILTIN_PREFIX)
        if name not in builtin_lexicons():
            raise ValueError(f"unknown builtin lexicon {name!r} (shipped: {', '.join(builtin_lexicons())})")
        # A real directory for a normal or an editable install; a zipped install is not supported.
        return Path(str(files("policies").joinpath("lexicons", f"{name}.txt")))
    return policy_dir / Path(reference).expanduser()


def _absolute(path: Path) -> Path:
    # Absolute and normalised, but symlinks are kept: a Kubernetes ConfigMap swaps the directory a
    # symlinked file points into, and a watcher must keep stat()ing the name, not the old target.
    return Path(os.path.abspath(path))


def parse_lexicon(path: Path, data: bytes) -> list[str]:
    """The terms of a lexicon file: one a line, UTF-8 (a BOM is ignored), lines that are blank or
    start with '#' skipped, whitespace trimmed. Raises PolicyError naming `lexicon:line` for a line that is not UTF-8 or
    a term that normalises to nothing (it could never match)."""
    terms, problems = [], []
    for number, raw in enumerate(data.removeprefix(b"\xef\xbb\xbf").split(b"\n"), start=1):
        try:
            line = " ".join(raw.decode("utf-8").split())  # runs of whitespace inside a term: one space
        except UnicodeDecodeError as exc:
            problems.append(f"{path}:{number}: not UTF-8 ({exc.reason} at byte {exc.start})")
            continue
        if not line or line.startswith("#"):
            continue
        if not normalize(line).text.strip():
            problems.append(f"{path}:{number}: term {line!r} is empty once normalised: it can never match")
            continue
        terms.append(line)
    if not terms and not problems:
        # An emptied lexicon would silently disarm its rules: refuse it instead.
        problems.append(f"{path}:1: the lexicon has no terms (only blank lines and comments)")
    if problems:
        raise PolicyError("\n".join(problems))
    return terms


def _read_lexicons(policy: Policy, path: Path, root: yaml.Node | None) -> list[tuple[Path, bytes]]:
    """Append each rule's lexicon terms to its literals; returns the lexicon files read, in order."""
    read: dict[Path, tuple[bytes, list[str]]] = {}  # by absolute path: a file shared by rules is read once
    problems = []
    for stages_loc, stages in policy.stage_lists():
        for stage_index, stage in enumerate(stages):
            for rule_index, rule in enumerate(stage.rules if isinstance(stage, BlacklistStage) else []):
                terms: list[str] = []
                for entry_index, reference in enumerate(rule.lexicons):
                    loc = [*stages_loc, stage_index, "rules", rule_index, "lexicons", entry_index]
                    where = f"{path}:{line_of(root, loc)}: {'.'.join(str(part) for part in loc)}"
                    try:
                        shown = _lexicon_path(reference, path.parent)
                        lexicon = _absolute(shown)
                        if lexicon not in read:
                            data = lexicon.read_bytes()
                            read[lexicon] = (data, parse_lexicon(shown, data))
                    except ValueError as exc:
                        problems.append(f"{where}: {exc}")
                        continue
                    except OSError as exc:
                        problems.append(f"{where}: cannot read lexicon {reference!r}: {exc.strerror or exc}")
                        continue
                    except PolicyError as exc:
                        problems.append(str(exc))
                        continue
                    terms += read[lexicon][1]
                # Written literals first; a term listed twice would be matched twice.
                rule.literals = list(dict.fromkeys([*rule.literals, *terms]))
    if problems:
        raise PolicyError("\n".join(dict.fromkeys(problems)))
    return [(lexicon, data) for lexicon, (data, _) in read.items()]


def _read_policy_file(path: Path) -> tuple[bytes, YamlDocument]:
    """The file's bytes and their parse: read once, so that the digest and the history name exactly
    what was parsed even while an editor writes the file."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise PolicyError(f"{path}: cannot read the policy: {exc.strerror or exc}") from None
    try:
        return data, parse_yaml(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise PolicyError(f"{path}: cannot read the policy: not UTF-8 ({exc.reason} at byte {exc.start})") from None
    except YamlSourceError as exc:
        raise PolicyError(f"{path}:{exc.line}: invalid YAML: {exc.problem}") from None


def load_policy(path: Path) -> Policy:
    """Parse and validate a policy file and read its lexicons; raises PolicyError naming file, line
    and field (or lexicon file and line)."""
    path = Path(path)  # messages name it as given; the sources keep it absolute
    data, document = _read_policy_file(path)
    if not isinstance(document.data, dict):
        raise PolicyError(f"{path}:1: a policy is a mapping with at least `version`")
    try:
        policy = Policy.model_validate(document.data)
    except ValidationError as exc:
        lines = []
        for error in exc.errors(include_url=False):
            loc = [part for part in error["loc"] if part not in STAGE_TYPES]  # pydantic's union tags
            field = ".".join(str(part) for part in loc) or "(top level)"
            message = "unknown field" if error["type"] == "extra_forbidden" else error["msg"]
            lines.append(f"{path}:{line_of(document.root, loc)}: {field}: {message}")
        raise PolicyError("\n".join(lines)) from None
    _check_cascades(policy, path, document.root)
    _include_rule_sets(policy, path, document.root)
    policy._sources = ((_absolute(path), data), *_read_lexicons(policy, path, document.root))
    _resolve_classifier_models(policy, path, document.root)
    return policy


def _check_cascades(policy: Policy, path: Path, root: yaml.Node | None) -> None:
    """Refuse a guard model whose `when` names a stage that does not run before it in its list: it
    reads the scores of the stages that ran before it."""
    problems = []
    for location, stages in policy.stage_lists():
        for index, stage in enumerate(stages):
            if isinstance(stage, GuardModelStage) and stage.when:
                missing = sorted(set(stage.when) - {before.type for before in stages[:index]})
                if missing:
                    loc = [*location, index, "when"]
                    problems.append(f"{path}:{line_of(root, loc)}: {'.'.join(map(str, loc))}: names "
                                    f"{', '.join(missing)}, which no earlier stage of this list is: a guard "
                                    "model reads the scores of the stages that ran before it")
    if problems:
        raise PolicyError("\n".join(problems))


def _include_rule_sets(policy: Policy, path: Path, root: yaml.Node | None) -> None:
    """Put the rules of each rule set a blacklist stage names in front of its own rules (copies: each
    stage reads its lexicons into its own rules); refuse an unknown set or a rule id that the stage
    would then hold twice."""
    problems = []
    for location, stages in policy.stage_lists():
        for index, stage in enumerate(stages):
            if not isinstance(stage, BlacklistStage) or not stage.rule_sets:
                continue
            included = []
            for entry, name in enumerate(stage.rule_sets):
                where = f"{path}:{line_of(root, [*location, index, 'rule_sets', entry])}: " \
                        f"{'.'.join(map(str, [*location, index, 'rule_sets', entry]))}"
                if name not in policy.rule_sets:
                    known = ", ".join(sorted(policy.rule_sets)) or "none defined"
                    problems.append(f"{where}: unknown rule set {name!r} (rule_sets: {known})")
                    continue
                included += [rule.model_copy(deep=True) for rule in policy.rule_sets[name]]
            ids = [rule.id for rule in [*included, *stage.rules]]
            twice = sorted({rule_id for rule_id in ids if ids.count(rule_id) > 1})
            if twice:
                where = f"{path}:{line_of(root, [*location, index, 'rule_sets'])}: " \
                        f"{'.'.join(map(str, [*location, index, 'rule_sets']))}"
                problems.append(f"{where}: rule ids used more than once in this stage: {', '.join(twice)}")
            stage.rules = [*included, *stage.rules]
    if problems:
        raise PolicyError("\n".join(problems))


def _resolve_classifier_models(policy: Policy, path: Path, root: yaml.Node | None) -> None:
    """Make each classifier stage's `model` directory absolute (relative to the policy file), and
    refuse one that does not exist. The model is loaded later, by the gateway: policies/ loads none."""
    for location, stages in policy.stage_lists():
        for index, stage in enumerate(stages):
            if not isinstance(stage, ClassifierStage) or stage.model == "builtin":
                continue
            directory = Path(stage.model) if Path(stage.model).is_absolute() else path.parent / stage.model
            if not directory.is_dir():
                line = line_of(root, [*location, index, "model"])
                raise PolicyError(f"{path}:{line}: {'.'.join(map(str, location))}.{index}.model: "
                                  f"no model directory {stage.model!r} (looked in {directory})")
            stage.model = str(_absolute(directory))
