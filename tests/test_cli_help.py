"""``--help`` imports no torch, names the registries' entries, and gives every default once."""

from __future__ import annotations

import argparse
import importlib
import subprocess
import sys

import pytest

import vaeconverge
from vaeconverge.bbvi.config import BBVIConfig
from vaeconverge.cli.main import BUILTIN_CHOICES, DEFAULT_EPS, DefaultsFormatter, build_parser
from vaeconverge.cli.reference import subcommands
from vaeconverge.config import RunConfig

HEAVY = ("torch", "numpy", "scipy", "sklearn", "matplotlib")

# Every --help of the command in a fresh interpreter; then what that loaded.
HELP_EVERYWHERE = f"""
import contextlib, io, sys
from vaeconverge.cli.main import build_parser, main
from vaeconverge.cli.reference import subcommands

for argv in [["--help"], *([name, "--help"] for name, _, _ in subcommands(build_parser()))]:
    with contextlib.redirect_stdout(io.StringIO()) as out:
        assert main(argv) == 0, argv
    assert out.getvalue().startswith("usage: vaeconverge"), argv
print(sorted(name for name in {HEAVY!r} if name in sys.modules))
"""


def test_help_of_every_command_imports_no_torch():
    done = subprocess.run([sys.executable, "-c", HELP_EVERYWHERE], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]", f"--help imported {done.stdout.strip()}"


def test_a_submodule_imported_first_does_not_shadow_the_export_of_its_name():
    """Python sets a submodule on its package once imported: ``vaeconverge.bbvi.train`` must stay the function."""
    code = ("import vaeconverge.bbvi.train; from vaeconverge.bbvi import train; "
            "assert train.__module__ == 'vaeconverge.bbvi.train' and callable(train), train")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("package", [vaeconverge, vaeconverge.bbvi], ids=["vaeconverge", "vaeconverge.bbvi"])
def test_the_lazy_names_are_the_exported_ones(package):
    exports = type(package).exports  # registry.lazy_exports's table: name -> its module
    assert sorted(exports) == sorted(package.__all__)
    for name, home in exports.items():
        assert getattr(package, name) is getattr(importlib.import_module(home, package.__name__), name)
        assert name in dir(package)


def test_an_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'fitt'"):
        vaeconverge.fitt  # noqa: B018


@pytest.mark.parametrize(("module", "name"), list(BUILTIN_CHOICES))
def test_the_written_out_choices_are_the_builtin_entries(module, name):
    assert tuple(getattr(importlib.import_module(module), name)) == BUILTIN_CHOICES[module, name]


def test_the_written_out_epsilon_is_the_optimizers():
    from vaeconverge.optim import DEFAULT_EPS as OPTIM_EPS

    assert DEFAULT_EPS == OPTIM_EPS


def _options(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if a.option_strings and a.help is not argparse.SUPPRESS]


PARSERS = subcommands(build_parser())


@pytest.mark.parametrize(("command", "parser"), [(name, sub) for name, _, sub in PARSERS], ids=[p[0] for p in PARSERS])
def test_every_default_is_shown_once_and_no_empty_one(command, parser):
    formatter = DefaultsFormatter(parser.prog)
    for action in _options(parser):
        flag, default, text = action.option_strings[-1], action.default, formatter.help_text(action)
        expanded = (action.help or "") % {**vars(action), "prog": parser.prog}
        if action.nargs == 0 or default is None or default == []:  # flags, and options without a default
            assert text == expanded, f"{command} {flag}: {text}"
            continue
        assert action.help, f"{command} {flag} has a default but no help text to show it in"
        if "default" in action.help:  # the text says it already
            assert text == expanded, f"{command} {flag}: {text}"
        else:
            value = " ".join(map(str, default)) if isinstance(default, list | tuple) else str(default)
            assert text == f"{expanded} (default: {value})", f"{command} {flag}: {text}"


def test_defaults_come_from_the_configurations(monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")  # one line per option
    train, bbvi = (next(sub for name, _, sub in PARSERS if name == command).format_help()
                   for command in ("train", "bbvi"))
    run, fit = RunConfig(), BBVIConfig()
    assert f"(default: {run.model})" in train and f"(default: {run.steps})" in train
    assert f"(default: {' '.join(map(str, run.adam_betas))})" in train
    assert f"(default: {fit.target})" in bbvi and f"(default: {fit.lr})" in bbvi
    assert "--quiet" in train and "(default: False)" not in train


def test_the_core_count_is_no_default_in_the_help(monkeypatch):
    from vaeconverge import runtime

    monkeypatch.setattr(runtime, "_allowed_cpus", lambda: list(range(987654)))
    monkeypatch.setenv("COLUMNS", "400")
    assert runtime.available_cores() == 987654
    for _, _, sub in subcommands(build_parser()):
        assert "987654" not in sub.format_help()
