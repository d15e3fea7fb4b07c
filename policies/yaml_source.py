"""Reading a YAML file once, keeping its node tree, so that errors can name the line of any field."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml


class YamlSourceError(Exception):
    """The file cannot be read (`unreadable`) or is not valid YAML (`syntax`, with line and column)."""

    def __init__(self, reason: Literal["unreadable", "syntax"], problem: str, line: int = 1, column: int = 1) -> None:
        super().__init__(problem)
        self.reason = reason
        self.problem = problem
        self.line = line
        self.column = column


@dataclass(frozen=True)
class YamlDocument:
    data: Any  # None for an empty file
    root: yaml.Node | None


def read_yaml(path: Path) -> YamlDocument:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise YamlSourceError("unreadable", str(exc)) from None
    return parse_yaml(text)


def parse_yaml(text: str) -> YamlDocument:
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
        data = loader.construct_document(root) if root is not None else None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc)
        raise YamlSourceError("syntax", problem, *((mark.line + 1, mark.column + 1) if mark else ())) from None
    finally:
        loader.dispose()
    return YamlDocument(data, root)


def line_of(node: yaml.Node | None, loc: list[str | int] | tuple[str | int, ...]) -> int:
    """The line (1-based) of the deepest YAML node on a validation error's path."""
    line = node.start_mark.line + 1 if node is not None else 1
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            found = next((value for key, value in node.value if key.value == part), None)
            if found is None:
                key_node = next((key for key, _ in node.value if key.value == part), None)
                return key_node.start_mark.line + 1 if key_node is not None else line
            node = found
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
        else:
            break
        line = node.start_mark.line + 1
    return line
