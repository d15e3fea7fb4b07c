"""Writes the project-written training sets next to this file (one JSONL per set), from the templates and
fillers in templates/ (one YAML file per set, written for wardgate; the format is in templates/README.md).
They fill the gaps of the public data (no sexual-content text, no sexual_minors text, no Chinese jailbreaks
or self-harm, few Chinese threats/insults) and add hard negatives: safe prompts with trigger words.

Nothing here is copied from a public dataset or benchmark. The sexual_minors set is short request
*descriptions*, the kind a moderation dataset holds, never sexual content.

    python classifiers/extra_data/generate.py     # deterministic: rewrites the same files

Each line: {"text", "labels", "lang", "written_by": "wardgate project", "set", "template"}. A label absent
from "labels" is unknown (masked in training).
"""

import hashlib
import itertools
import json
import re
import string
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from classifiers.labels import CATEGORIES, LABELS, ClassifierError

HERE = Path(__file__).resolve().parent
TEMPLATE_DIR = HERE / "templates"
WRITTEN_BY = "wardgate project"

Category = Literal[CATEGORIES]
Values = Annotated[list[str], Field(min_length=1)]


@dataclass
class Template:
    pattern: str  # str.format pattern; its fields are filled from `fillers`
    fillers: dict[str, list[str]]
    labels: dict[str, int]


def expand(t: Template) -> list[str]:
    names = sorted(t.fillers)
    texts = [
        t.pattern.format(**dict(zip(names, c, strict=True))) for c in itertools.product(*(t.fillers[n] for n in names))
    ]
    return [re.sub(r"\ba (8|11|18)\b", r"an \1", text) for text in texts]  # "an 8-year-old"


def _h(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8")).digest()


def select(templates: list[Template], n: int) -> list[tuple[int, str, dict[str, int]]]:
    """Up to n texts, round-robin over the templates (each template's expansions in hash order), so every
    template is represented and the choice does not depend on filler order."""
    queues = [sorted(set(expand(t)), key=_h) for t in templates]
    out, seen = [], set()
    for i in itertools.count():
        if len(out) >= n or all(i >= len(q) for q in queues):
            break
        for ti, q in enumerate(queues):
            if i < len(q) and q[i] not in seen and len(out) < n:
                seen.add(q[i])
                out.append((ti, q[i], templates[ti].labels))
    return out


# ------------------------------------------------------------------------------------ the file format


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Labelled(_Strict):
    labels: list[Category]  # positive (unsafe with them); none: safe
    unknown: list[Category] = []  # masked in training; every other category is 0

    @model_validator(mode="after")
    def _disjoint(self):
        if both := set(self.labels) & set(self.unknown):
            raise ValueError(f"{sorted(both)} both in labels and in unknown")
        return self


class Variant(_Labelled):
    text: str


class Variants(_Strict):
    field: str
    values: list[Variant] = Field(min_length=1)


class Entry(_Labelled):
    pattern: str | None = None
    patterns: Values | None = None
    fillers: dict[str, Values | str] = {}  # a string names a list in the file's `lists`
    variants: Variants | None = None

    @model_validator(mode="after")
    def _one_pattern_field(self):
        if (self.pattern is None) == (self.patterns is None):
            raise ValueError("needs exactly one of pattern and patterns")
        return self

    def all_patterns(self) -> list[str]:
        return self.patterns or [self.pattern]


class SetFile(_Strict):
    set: str
    lang: Literal["en", "zh"]
    at_most: int = Field(gt=0)
    description: str
    lists: dict[str, Values] = {}
    templates: list[Entry] = Field(min_length=1)

    @model_validator(mode="after")
    def _fields_match_fillers(self):
        for i, e in enumerate(self.templates):
            where = f"templates[{i}] ({e.all_patterns()[0][:50]!r})"
            if unknown := [v for v in e.fillers.values() if isinstance(v, str) and v not in self.lists]:
                raise ValueError(f"{where}: no list named {unknown[0]!r} in lists")
            for v in e.variants.values if e.variants else []:
                if e.variants.field in e.fillers or set(e.labels + v.labels) & set(e.unknown + v.unknown):
                    raise ValueError(f"{where}: variant {v.text!r} clashes with the fillers or the labels")
            given = set(e.fillers) | ({e.variants.field} if e.variants else set())
            used: set[str] = set()
            for pattern in e.all_patterns():
                try:
                    fields = {f for _, f, _, _ in string.Formatter().parse(pattern) if f is not None}
                except ValueError as err:
                    raise ValueError(f"{where}: pattern {pattern!r}: {err}") from None
                if missing := fields - given:
                    raise ValueError(f"{where}: pattern {pattern!r} has no filler for {sorted(missing)}")
                used |= fields
            if unused := given - used:
                raise ValueError(f"{where}: fillers {sorted(unused)} are in no pattern")
        return self

    def expanded(self) -> list[Template]:
        """One Template per pattern (and per variant, each labelled with the entry's labels and its own)."""
        out = []
        for e in self.templates:
            fillers = {f: self.lists[v] if isinstance(v, str) else v for f, v in e.fillers.items()}
            for pattern in e.all_patterns():
                for v in e.variants.values if e.variants else [None]:
                    extra = {e.variants.field: [v.text]} if v else {}
                    positive, unknown = e.labels + (v.labels if v else []), e.unknown + (v.unknown if v else [])
                    out.append(Template(pattern, fillers | extra, label_values(positive, unknown)))
        return out


def label_values(positive: list[str], unknown: list[str]) -> dict[str, int]:
    """Every label known except `unknown`; `positive` ones are 1 (and unsafe with them)."""
    out = {n: 0 for n in LABELS if n not in unknown}
    for n in positive:
        out[n] = 1
    if positive:
        out["unsafe"] = 1
    return out


def load(path: Path) -> SetFile:
    """The set in a template file, validated; a ClassifierError names the file and the entry."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        spec = SetFile.model_validate(raw)
    except yaml.YAMLError as err:
        raise ClassifierError(f"{path}: not valid YAML: {err}") from None
    except ValidationError as err:
        raise ClassifierError("\n".join(f"{path}: {_problem(raw, e)}" for e in err.errors())) from None
    if spec.set != path.stem:
        raise ClassifierError(f"{path}: set {spec.set!r} must be the file's name ({path.stem!r})")
    return spec


def _problem(raw: object, error: dict) -> str:
    loc = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error["loc"]).lstrip(".")
    if error["loc"][:1] == ("templates",) and len(error["loc"]) > 1:  # name the entry by its pattern
        entry = raw["templates"][error["loc"][1]]
        if isinstance(entry, dict) and (pattern := entry.get("pattern") or (entry.get("patterns") or [None])[0]):
            loc = loc.replace("]", f"] ({str(pattern)[:50]!r})", 1)
    message = error["msg"].removeprefix("Value error, ")
    return f"{loc}: {message}" if loc else message


# ------------------------------------------------------------------------------------ writing the sets


def build(template_dir: Path = TEMPLATE_DIR) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for path in sorted(template_dir.glob("*.yaml")):
        spec = load(path)
        rows = select(spec.expanded(), spec.at_most)
        out[spec.set] = [_row(text, lab, spec.lang, spec.set, ti) for ti, text, lab in rows]
    return out


def _row(text: str, lab: dict[str, int], lang: str, name: str, template: int) -> dict:
    return {"text": text, "labels": lab, "lang": lang, "written_by": WRITTEN_BY, "set": name, "template": template}


def render(rows: list[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def main(out_dir: Path = HERE, template_dir: Path = TEMPLATE_DIR) -> None:
    for name, rows in build(template_dir).items():
        (out_dir / f"{name}.jsonl").write_text(render(rows), encoding="utf-8")
        print(f"{name}: {len(rows)}")


if __name__ == "__main__":
    try:
        main()
    except ClassifierError as err:
        sys.exit(str(err))
