"""The configuration and CLI references of the documentation, generated from the code that defines
them (the `Settings` model and the click commands), so that they cannot drift apart; a test compares
the committed pages with what this prints. `make docs` writes them:

    python -m gateway.reference docs/reference
"""

from __future__ import annotations

import json
import sys
import types
import typing
from pathlib import Path

import click
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from gateway.cli import main as cli_main
from gateway.config import Settings

GENERATED = "<!-- generated from the code by `make docs` (python -m gateway.reference); do not edit -->"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _type_name(annotation: object) -> str:
    if typing.get_origin(annotation) is typing.Literal:
        return " \\| ".join(f"`{value}`" for value in typing.get_args(annotation))
    arguments = [argument for argument in typing.get_args(annotation) if argument is not type(None)]
    if typing.get_origin(annotation) is list:
        return "list"
    if arguments and typing.get_origin(annotation) in (typing.Union, types.UnionType, typing.Annotated):
        return _type_name(arguments[0])
    return {str: "string", int: "integer", float: "number", bool: "boolean", Path: "path"}.get(
        annotation, "object")  # type: ignore[call-overload]


def _default(field: FieldInfo) -> str:
    if field.default_factory is None:
        return "none" if field.default is None else f"`{field.default}`"
    value = field.default_factory()  # type: ignore[call-arg]
    if isinstance(value, BaseModel):
        value = value.model_dump(exclude_none=True)
    if isinstance(value, list | dict):
        return f"`{json.dumps(value)}`"
    return "see meaning"  # computed on the machine it runs on (a path under the user's home)


def _serve_options() -> dict[str, str]:
    """Setting name -> the `wardgate serve` option that sets it."""
    serve = cli_main.commands["serve"]
    return {param.name: ", ".join(f"`{opt}`" for opt in param.opts) for param in serve.params
            if isinstance(param, click.Option) and param.name in Settings.model_fields}


def configuration_markdown() -> str:
    options = _serve_options()
    rows = [
        f"| `{name}` | `WARDGATE_{name.upper()}` | {options.get(name, '—')} | {_type_name(field.annotation)} | "
        f"{_default(field)} | {_cell(field.description or '')} |"
        for name, field in Settings.model_fields.items()
    ]
    return "\n".join([
        GENERATED, "", "# Configuration reference", "",
        "Every setting of `wardgate serve`, in the order `gateway/config.py` declares them. A setting comes, in "
        "rising precedence, from its default, the YAML file (`--config FILE` or `WARDGATE_CONFIG`), its "
        "environment variable (lists and objects as JSON) and its command-line option where it has one; see "
        "[Configuration](../configuration.md).", "",
        "| setting | environment | option | type | default | meaning |",
        "| --- | --- | --- | --- | --- | --- |",
        *rows, "",
    ])


def _commands(group: click.Group, path: list[str]) -> typing.Iterator[tuple[list[str], click.Command]]:
    for name in sorted(group.commands):
        command = group.commands[name]
        if command.hidden:
            continue
        yield [*path, name], command
        if isinstance(command, click.Group):
            yield from _commands(command, [*path, name])


def cli_markdown() -> str:
    lines = [GENERATED, "", "# CLI reference", "",
             "Every command of `wardgate` (after `make run` or `make test`: `.venv/bin/wardgate`, or `wardgate` "
             "with the environment activated by `. .venv/bin/activate`). `wardgate COMMAND --help` prints the "
             "same.", ""]
    lines += ["| command | what it does |", "| --- | --- |"]
    commands = list(_commands(cli_main, ["wardgate"]))
    for path, command in commands:
        anchor = "-".join(path)
        lines.append(f"| [`{' '.join(path)}`](#{anchor}) | {_cell(command.get_short_help_str(limit=120))} |")
    for path, command in commands:
        # The group's settings (`-h` beside `--help`), as when the command runs: click caches a command's help
        # option from the first context that asks, so a bare context would render it one way or the other.
        context = click.Context(command, info_name=" ".join(path), **cli_main.context_settings)
        lines += ["", f"## {' '.join(path)} {{#{'-'.join(path)}}}", "",
                  "```", f"{' '.join(path)} {' '.join(command.collect_usage_pieces(context))}".rstrip(), "```", ""]
        if command.help:
            lines += [click.unstyle(command.help).replace("\b\n", "").strip(), ""]
        records = [record for param in command.get_params(context)
                   if param.name != "help" and (record := param.get_help_record(context)) is not None]
        if records:
            lines += ["| option | meaning |", "| --- | --- |"]
            lines += [f"| `{_cell(opts)}` | {_cell(text)} |" for opts, text in records]
    return "\n".join(lines) + "\n"


PAGES = {"configuration.md": configuration_markdown, "cli.md": cli_markdown}


def main(directory: str) -> None:
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    for name, render in PAGES.items():
        (out / name).write_text(render(), encoding="utf-8")


if __name__ == "__main__":
    main(sys.argv[1])
