"""docs/cli.md is the parser rendered now, and the rendering names every command and option."""

from __future__ import annotations

import argparse
from pathlib import Path

from vaeconverge.cli.main import build_parser
from vaeconverge.cli.reference import cli_reference, subcommands, write_cli_reference
from vaeconverge.config import RunConfig

CLI_MD = Path(__file__).resolve().parent.parent / "docs" / "cli.md"


def test_docs_cli_md_is_the_parser_rendered_now():
    assert CLI_MD.read_text(encoding="utf-8") == cli_reference(), (
        "docs/cli.md differs from the parser: regenerate it with `make docs` (or `python docs/generate.py --only cli`)")


def test_every_command_and_option_is_in_the_reference():
    reference = cli_reference()
    for name, _, sub in subcommands(build_parser()):
        assert f"## vaeconverge {name}\n" in reference
        assert f"(#vaeconverge-{name})" in reference
        for action in sub._actions:
            if action.help is not argparse.SUPPRESS and not isinstance(action, argparse._HelpAction):
                choices = "{" + ",".join(action.choices) + "}" if action.choices else None
                shown = action.option_strings[-1] if action.option_strings else action.metavar or choices or action.dest
                assert f"- `{shown}" in reference, f"{name} {shown}"


def test_an_option_shows_its_form_choices_default_and_help():
    from vaeconverge.nn import MODELS

    parser = next(sub for name, _, sub in subcommands(build_parser()) if name == "train")
    model = next(action for action in parser._actions if "--model" in action.option_strings)
    line = next(line for line in cli_reference().splitlines() if line.startswith("- `--model "))
    assert line == f"- `--model {{{','.join(MODELS)}}}`: {model.help} (default: {RunConfig().model})"


def test_help_text_markup_is_escaped():
    reference = cli_reference()
    assert "$VAECONVERGE\\_DATA" in reference and "$VAECONVERGE_DATA" not in reference


def test_writing_renders_the_same_page(tmp_path):
    write_cli_reference(tmp_path / "cli.md")
    assert (tmp_path / "cli.md").read_text(encoding="utf-8") == cli_reference()
