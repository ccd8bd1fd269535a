"""The `segjax` command: `segjax train|submit|evaluate|predict|export [flags]`."""

from __future__ import annotations

import sys

from segjax.cli.commands import COMMANDS, run


def overview() -> str:
    width = max(map(len, COMMANDS))
    lines = [
        "usage: segjax <command> [flags]   (segjax <command> --help for its flags)",
        "",
        "UNet-family person segmentation in JAX, and Kaggle submissions.",
        "",
        "commands:",
        *(f"  {name:{width}s}  {command.help}" for name, command in COMMANDS.items()),
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """`segjax <command> [flags]`, also `python -m segjax`."""
    args = sys.argv[1:] if argv is None else list(argv)
    if not args or args[0] in ("-h", "--help"):
        print(overview(), file=sys.stdout if args else sys.stderr)
        sys.exit(0 if args else 2)
    if args[0] == "--version":
        from importlib.metadata import version

        print(f"segjax {version('segjax')}")
        return
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        print(
            f"segjax: error: unknown command {name!r} (choose from {', '.join(COMMANDS)})",
            file=sys.stderr,
        )
        sys.exit(2)
    run(name, rest, prog=f"segjax {name}", own_process=argv is None)
