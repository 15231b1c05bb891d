"""The command line's reference in Markdown, rendered from its parser so that docs/cli.md cannot drift from
``--help``: every command with its description, and each option with its metavar, choices, default and help."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from .main import DefaultsFormatter, build_parser

_MARKDOWN = re.compile(r"([\\`*_<\[\]])")  # what Markdown would read as markup in a help text


def subcommands(parser: argparse.ArgumentParser) -> list[tuple[str, str, argparse.ArgumentParser]]:
    """Each command of ``parser``: its name, its one-line help and its parser, in the order they were added."""
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    helps = {choice.dest: choice.help or "" for choice in commands._choices_actions}
    return [(name, helps[name], sub) for name, sub in commands.choices.items()]


def cli_reference() -> str:
    """The reference of the ``vaeconverge`` command as a Markdown page."""
    parser = build_parser()
    commands = subcommands(parser)
    lines = ["# Command-line reference", "",
             "<!-- Rendered from the parser by `make docs`: edit the help texts in src/vaeconverge/cli/main.py, "
             "not this page. -->", "",
             "## vaeconverge", "", _markdown(parser.description or ""), "",
             *(f"- [`vaeconverge {name}`](#vaeconverge-{name}): {_markdown(text)}" for name, text, _ in commands),
             "", "Every command takes `-h`, `--help`: its options, as below.", "", *_arguments(parser)]
    for name, _, sub in commands:
        lines += [f"## vaeconverge {name}", "", _markdown(sub.description or ""), "", *_arguments(sub)]
    return "\n".join(lines).rstrip("\n") + "\n"


def _arguments(parser: argparse.ArgumentParser) -> list[str]:
    """The arguments of ``parser`` by group, one item each, ``-h`` and the commands left out."""
    formatter = DefaultsFormatter(parser.prog)
    lines = []
    for group in parser._action_groups:
        actions = [action for action in group._group_actions
                   if action.help is not argparse.SUPPRESS
                   and not isinstance(action, argparse._HelpAction | argparse._SubParsersAction)]
        if actions:
            lines += [f"### {group.title}", ""]
            lines += [f"- `{formatter.invocation(action)}`: {_markdown(formatter.help_text(action))}"
                      for action in actions]
            lines.append("")
    return lines


def _markdown(text: str) -> str:
    """``text`` with its Markdown markup characters escaped."""
    return _MARKDOWN.sub(r"\\\1", text)


def write_cli_reference(path: Path) -> None:
    """Write the ``vaeconverge`` command's reference to ``path`` (docs/cli.md), rendered whole first, so that a
    failure leaves the page there as it was."""
    text = cli_reference()
    Path(path).write_text(text, encoding="utf-8")
