"""One loaded classifier per (model directory, quantisation) per process, shared by every policy
version and stage that names it: a policy reload does not reload a model it already has."""

from __future__ import annotations

import functools
from importlib.resources import files
from pathlib import Path

from classifiers.model import ClassifierError
from classifiers.runtime import MicroBatcher, RiskClassifier

BUILTIN_DIR = Path(str(files("classifiers").joinpath("wardgate-risk")))


def resolve(model: str) -> Path:
    directory = BUILTIN_DIR if model == "builtin" else Path(model)
    if not (directory / "config.json").is_file():
        raise ClassifierError(f"{directory}: no classifier here (config.json missing)"
                              + (" — the bundled artifact is not built yet" if model == "builtin" else ""))
    return directory


@functools.cache
def shared_batcher(model: str, quantize: str) -> MicroBatcher:
    return MicroBatcher(RiskClassifier.load(resolve(model), quantize))
