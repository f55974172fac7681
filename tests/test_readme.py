"""README and ``medmamba --help`` agree: every command README names exists, every option its
Commands table lists exists on that command, and every command has complete help."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from medmamba.cli import build_parser

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


COMMANDS = _subcommands(build_parser())


def _command_parser(words: list[str]) -> argparse.ArgumentParser:
    """The parser of `medmamba w1 [w2]` (benchmark has targets)."""
    parser = COMMANDS[words[0]]
    targets = _subcommands(parser)
    return targets[words[1]] if targets and len(words) > 1 and words[1] in targets else parser


def test_every_command_named_in_readme_exists():
    code = "\n".join(re.findall(r"```.*?```", README, flags=re.S) + re.findall(r"`[^`\n]+`", README))
    named = re.findall(r"(?<![\w/.-])medmamba ([a-z][a-z-]*)(?: ([a-z]+))?", code)
    assert {n for n, _ in named} >= set(COMMANDS), "README does not walk through every command"
    for name, target in named:
        assert name in COMMANDS, f"README names `medmamba {name}`, which does not exist"
        targets = _subcommands(COMMANDS[name])
        if targets:
            assert target in targets, f"README names `medmamba {name} {target}`, which does not exist"


def _table_rows() -> list[str]:
    section = README.split("## Commands", 1)[1].split("\n## ", 1)[0]
    return [line for line in section.splitlines() if line.startswith("| `medmamba ")]


def test_every_option_of_the_commands_table_exists():
    rows = _table_rows()
    assert {r.split()[2].strip("`") for r in rows} >= set(COMMANDS) - {"benchmark"}
    for row in rows:
        usage = row.split("|")[1]
        words = usage.strip(" `").split()[1:]
        parser = _command_parser(words)
        options = {s for a in parser._actions for s in a.option_strings}
        for option in re.findall(r"(--[a-z][a-z-]*)", usage):
            assert option in options, f"README's `{' '.join(words[:2])}` lists {option}, which it does not take"


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_has_complete_help(name):
    parser = COMMANDS[name]
    assert parser.description, f"`medmamba {name}` has no description"
    for sub in [parser, *_subcommands(parser).values()]:
        for action in sub._actions:
            if action.option_strings and action.dest != "help":
                assert action.help, f"`medmamba {name}` option {action.option_strings} has no help"
        sub.format_help()
