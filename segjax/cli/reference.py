"""Every command's flags as a markdown page (docs/cli.md), from the same parsers as --help."""

from __future__ import annotations

import argparse

from segjax.cli.commands import COMMANDS, parser_of

HEADER = """# Command-line reference

Generated from segjax's settings by `python tools/cli_reference.py`; do not edit by hand (a
test fails when this page and the flags differ). `segjax <command> --help` shows the same.
`python scripts/<command>.py` takes the same flags as `segjax <command>`.
"""


def _flags(action: argparse.Action) -> str:
    if not action.option_strings:
        return f"`{action.metavar or action.dest}`"
    names = []
    for name in action.option_strings:
        takes_value = action.nargs != 0 and not isinstance(
            action, argparse._StoreConstAction | argparse._StoreTrueAction
        )
        value = action.metavar or (
            f"{{{','.join(map(str, action.choices))}}}" if action.choices else action.dest.upper()
        )
        names.append(f"`{name} {value}`" if takes_value else f"`{name}`")
    return ", ".join(names)


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _row(action: argparse.Action) -> str:
    return f"| {_cell(_flags(action))} | {_cell(action.help or '')} |"


def markdown() -> str:
    """docs/cli.md."""
    parts = [HEADER]
    for name, command in COMMANDS.items():
        parser = parser_of(name, prog=f"segjax {name}")
        parts.append(f"## segjax {name}\n\n{command.description}\n")
        for group in parser._action_groups:
            actions = [a for a in group._group_actions if not isinstance(a, argparse._HelpAction)]
            if not actions:
                continue
            title = {"positional arguments": "arguments", "options": "flags"}.get(
                group.title, group.title
            )
            parts.append(f"### {title}\n\n| flag | meaning |\n|---|---|")
            parts.append("\n".join(_row(a) for a in actions) + "\n")
    return "\n".join(parts)
