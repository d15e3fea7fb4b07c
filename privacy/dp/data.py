"""The private training data: one JSONL line per example, in the format `wardgate classifier eval`
reads ("text", "unsafe" 0/1, optionally a 0/1 per category), checked line by line, de-duplicated and
grouped into privacy units: one example each, or with a user field all of a user's examples (capped).
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from pathlib import Path

from classifiers.data import Example, deduplicate, detect_lang, make_example
from classifiers.labels import CATEGORIES, ClassifierError
from classifiers.scoring import read_rows


@dataclass(frozen=True)
class PrivateData:
    units: list[list[Example]]  # the privacy units: what one person's presence or absence changes
    user_field: str | None
    lines: int
    duplicates: int  # lines dropped as the same text (case and whitespace folded) as an earlier one
    capped: int  # examples dropped by the per-user cap
    sha256: str  # of the file: a checkpoint only resumes on the same data

    @property
    def examples(self) -> int:
        return sum(len(unit) for unit in self.units)


def _example(path: Path, row) -> Example:
    unsafe = row.truth["unsafe"] >= 0.5
    positive = [name for name in CATEGORIES if row.truth.get(name) == 1.0]
    if positive and not unsafe:
        raise ClassifierError(f"{path}:{row.line}: {', '.join(positive)} is 1 but \"unsafe\" is 0")
    return make_example(row.text, source=path.name, lang=detect_lang(row.text), unsafe=unsafe, pos=positive,
                        neg=[name for name in CATEGORIES if row.truth.get(name) == 0.0], group=row.user or "")


def read_private_data(path: Path, user_field: str | None = None, max_per_user: int = 8,
                      seed: int = 0) -> PrivateData:
    """Every line checked (a bad one stops everything, named as file:line) before any is used."""
    rows = read_rows(path, need_truth=True, user_field=user_field)
    examples = [_example(path, row) for row in rows]
    kept = deduplicate(examples)
    if not user_field:
        units = [[example] for example in kept]
        capped = 0
    else:
        by_user: dict[str, list[Example]] = {}
        for example in kept:
            by_user.setdefault(example.group, []).append(example)
        # The cap bounds what one user can move the model by; which examples are kept is seeded.
        rng = random.Random(seed)
        units = [items if len(items) <= max_per_user else rng.sample(items, max_per_user)
                 for _, items in sorted(by_user.items())]
        capped = len(kept) - sum(len(unit) for unit in units)
    return PrivateData(units=units, user_field=user_field, lines=len(rows), duplicates=len(examples) - len(kept),
                       capped=capped, sha256=hashlib.sha256(path.read_bytes()).hexdigest())


def default_delta(units: int) -> float:
    """1e-5 or 1/N^1.1, whichever is smaller: delta must stay well below 1/N (a mechanism that
    publishes one random unit's data outright has delta 1/N)."""
    return min(1e-5, 1.0 / units ** 1.1)


def check_delta(delta: float, units: int, unit_name: str) -> None:
    if not 0 < delta < 1.0 / units:
        raise ClassifierError(f"--delta {delta:g} must be above 0 and below 1/N = {1.0 / units:.3g} "
                              f"(N = {units} {unit_name}s): at 1/N a run may publish one {unit_name}'s data outright")
