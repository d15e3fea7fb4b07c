"""Offline scoring and evaluation of JSONL files: what compliance teams run to judge a policy.

Input: one JSON object per line with a non-empty string "text"; for evaluation also the truth,
as "unsafe" (0/1) and optionally a 0/1 per category; for a response judged with its prompt (a guard model
cascade), "prompt". Every line is checked before any is scored,
and a bad one is reported as `file:line: problem`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from classifiers.labels import LABELS, ClassifierError


@dataclass(frozen=True)
class Row:
    text: str
    truth: dict[str, float]
    line: int = 0  # in the file, for errors found after reading
    user: str | None = None  # the `user_field` value, when asked for
    prompt: str | None = None  # the prompt a response answers, when asked for


def read_rows(path: Path, need_truth: bool = False, user_field: str | None = None,
              with_prompt: bool = False) -> list[Row]:
    rows = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ClassifierError(f"{path}: cannot read: {exc}") from None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ClassifierError(f"{path}:{number}: not JSON: {exc.msg}") from None
        text = record.get("text") if isinstance(record, dict) else None
        if not isinstance(text, str):
            raise ClassifierError(f"{path}:{number}: needs a \"text\" string")
        if not text.strip():
            raise ClassifierError(f"{path}:{number}: \"text\" is empty")
        truth = {name: record[name] for name in LABELS if name in record}
        if any(value not in (0, 1, True, False) for value in truth.values()):
            raise ClassifierError(f"{path}:{number}: labels must be 0 or 1")
        if need_truth and "unsafe" not in truth:
            raise ClassifierError(f"{path}:{number}: needs \"unsafe\": 0 or 1 to evaluate")
        user = record.get(user_field) if user_field else None
        if user_field and (isinstance(user, bool) or not isinstance(user, str | int) or not str(user).strip()):
            raise ClassifierError(f"{path}:{number}: needs \"{user_field}\" (a non-empty string or an integer)")
        prompt = record.get("prompt") if with_prompt else None
        if prompt is not None and (not isinstance(prompt, str) or not prompt.strip()):
            raise ClassifierError(f"{path}:{number}: \"prompt\" must be a non-empty string")
        rows.append(Row(text, {name: float(value) for name, value in truth.items()}, number,
                        None if user is None else str(user), prompt))
    if not rows:
        raise ClassifierError(f"{path}: no lines to score")
    return rows


def score_line(scores: np.ndarray) -> str:
    return json.dumps({"unsafe": round(float(scores[0]), 6),
                       "categories": {name: round(float(value), 6) for name, value in zip(LABELS[1:], scores[1:],
                                                                                          strict=True)}})


def metrics(scores: np.ndarray, truth: np.ndarray, threshold: float) -> dict[str, float]:
    """AUPRC, and precision, recall, F1 and false-positive rate at `threshold`."""
    order = np.argsort(-scores, kind="stable")
    hits = truth[order]
    positives = float(truth.sum())
    auprc = float((np.cumsum(hits) / np.arange(1, len(hits) + 1) * hits).sum() / positives) if positives else float(
        "nan")
    predicted = scores >= threshold
    true_positives = float((predicted & (truth > 0)).sum())
    precision = true_positives / max(1, int(predicted.sum()))
    recall = true_positives / positives if positives else float("nan")
    negatives = float((truth == 0).sum())
    return {"auprc": auprc, "precision": precision, "recall": recall,
            "f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
            "fpr": float((predicted & (truth == 0)).sum()) / negatives if negatives else float("nan"),
            "positives": int(positives), "negatives": int(negatives)}
