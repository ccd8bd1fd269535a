"""The docs say what runs: every command line in README.md and docs/*.md parses with the real
parser, every `python -c` snippet runs, every relative link leads somewhere, and measured
figures live in docs/results.md only.

Command lines are taken from fenced code blocks, indented code lines and inline code spans
(backslash continuations joined, `# comments` dropped, `&&` and `;` chains split): `segjax
<command> ...`, `python -m segjax <command> ...`, `python scripts/<name>.py ...` and the
checkout's tools with an argparse command line (TOOLS). Nothing is run: argparse parses the
words, so placeholders such as `/path/to/competition` are fine.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.util
import io
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest

from segjax.cli.commands import COMMANDS, parser_of

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# Generated pages (their generators are tested elsewhere): their figures are their own.
GENERATED = {"cli.md", "experiments.md", "pretrained.md"}

# scripts/<name>.py is `segjax <name>` for these; scripts/benchmark.py and
# scripts/experiments.py have their own parsers.
SCRIPT_COMMANDS = {"train", "submit", "evaluate", "predict", "export"}
# The checkout's tools whose command line the docs show: the file whose main() builds the
# parser. A tools/ or benchmarks/ command that is in neither TOOLS nor SKIPPED fails.
TOOLS = {
    "scripts/experiments.py": "scripts/experiments.py",
    "tools/offline_wheels.py": "tools/offline_wheels.py",
    "tools/run_exported.py": "tools/run_exported.py",
    "tools/migrate_run.py": "tools/migrate_run.py",
    "benchmarks/tpu_compile.py": "benchmarks/tpu_compile.py",
    "benchmarks.compare_peer": "benchmarks/compare_peer.py",
    "tools/pretrained_table.py": "tools/pretrained_table.py",
}
SKIPPED = {  # command -> why it is not parsed
    "tools/cli_reference.py": "no command line: it rewrites docs/cli.md",
    "benchmarks.pytorch_peer": "imports torch first (its budget counts the import); "
    "benchmarks.compare_peer, which is parsed, runs it with these flags",
}


@dataclasses.dataclass(frozen=True)
class Snippet:
    page: Path
    line: int
    text: str
    inline: bool = False  # a code span in prose: `segjax predict` alone names the command

    def where(self) -> str:
        try:
            return f"{self.page.relative_to(ROOT)}:{self.line}"
        except ValueError:
            return f"{self.page}:{self.line}"


FENCE = re.compile(r"^\s*(```|~~~)")
SPAN = re.compile(r"(?<!`)`([^`]+)`(?!`)")
COMMAND_START = re.compile(r"^[!$]?\s*(segjax\b|python3? )")
MENTIONS_COMMAND = re.compile(r"(?:^|[\s!$])(?:segjax|python3?)(?:\s|$)")


def code_snippets(page: Path) -> list[Snippet]:
    """Each line of a fenced block and each indented command line (continuations joined), and
    each inline code span, with the line it starts on."""
    found, prose = [], []
    in_fence, pending = False, None
    for number, line in enumerate(page.read_text().splitlines(), 1):
        if FENCE.match(line):
            in_fence, pending = not in_fence, None
            continue
        indented = line.startswith("  ") and COMMAND_START.match(line.strip())
        if in_fence or pending or indented:
            start, text = pending or (number, "")
            text = f"{text} {line.strip()}".strip()
            if text.endswith("\\"):
                pending = (start, text[:-1].rstrip())
                continue
            pending = None
            found.append(Snippet(page, start, text))
        else:
            prose.append((number, line))
    text = "\n".join(line for _, line in prose)
    starts = [number for number, _ in prose]
    for match in SPAN.finditer(text):
        line = starts[text.count("\n", 0, match.start())]
        found.append(Snippet(page, line, " ".join(match.group(1).split()), inline=True))
    return found


def split_commands(snippet: Snippet) -> list[list[str]]:
    """The commands of one snippet that segjax's docs vouch for: lists of words. A snippet
    that names segjax or python but is not valid shell raises ValueError."""
    text = snippet.text.lstrip("!$ ")
    if not MENTIONS_COMMAND.search(text):
        return []
    words = shlex.split(text, comments=True)
    commands, current = [], []
    for word in [*words, ";"]:
        if word in ("&&", "||", ";", "|"):
            while current and (re.match(r"^\w+=", current[0]) or current[0] == "time"):
                current = current[1:]
            if current:
                commands.append(current)
            current = []
        else:
            current.append(word)
    return [c for c in commands if c[0] in ("segjax", "python", "python3")]


class _ArgumentError(Exception):
    pass


class _Parsed(Exception):
    def __init__(self, parser: argparse.ArgumentParser):
        super().__init__()
        self.parser = parser


_MAIN_PARSERS: dict[str, argparse.ArgumentParser] = {}


def parser_from_main(path: str) -> argparse.ArgumentParser:
    """The parser that `path`'s main() builds, taken at its parse_args (so nothing runs)."""
    if path not in _MAIN_PARSERS:
        name = "docs_" + re.sub(r"\W", "_", path)
        spec = importlib.util.spec_from_file_location(name, ROOT / path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)

        def grab(self, args=None, namespace=None):
            raise _Parsed(self)

        with mock.patch.object(argparse.ArgumentParser, "parse_args", grab):
            try:
                module.main()
            except _Parsed as parsed:
                _MAIN_PARSERS[path] = parsed.parser
            else:
                raise AssertionError(f"{path}: main() returned without parsing arguments")
    return _MAIN_PARSERS[path]


def parse(parser: argparse.ArgumentParser, words: list[str]) -> str | None:
    """argparse's message for `words`, or None when they parse (`--help` parses)."""

    def error(message):
        raise _ArgumentError(message)

    parser.error = error
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        try:
            parser.parse_args(words)
        except _ArgumentError as err:
            return str(err)
        except SystemExit as stop:  # --help
            return None if stop.code in (0, None) else f"exit status {stop.code}"
    return None


def check_command(words: list[str], inline: bool = False) -> str | None:
    """What is wrong with one documented command line, or None. An inline mention without
    arguments (`segjax predict`, `python scripts/submit.py`) only has to name a command."""
    if words[0] != "segjax" and len(words) < 2:
        return None  # python alone
    if words[0] == "segjax" or words[1:3] == ["-m", "segjax"]:
        rest = words[1:] if words[0] == "segjax" else words[3:]
        if not rest or re.fullmatch(r"<\w+>", rest[0]):
            return None  # `segjax`, `segjax <command> --help`: not a command line
        if rest[0].startswith("-"):
            return None if rest[0] in ("-h", "--help", "--version") else f"unknown {rest[0]}"
        if rest[0] not in COMMANDS:
            return f"unknown command {rest[0]!r} (segjax has {', '.join(COMMANDS)})"
        if inline and len(rest) == 1:
            return None
        return parse(parser_of(rest[0], prog=f"segjax {rest[0]}"), rest[1:])
    if words[1] == "-c":
        return None  # run by test_python_c_snippets_run
    if words[1] == "-m":
        target, args = words[2], words[3:]
        if not target.startswith("benchmarks."):
            return None  # python -m pip, pytest, ...: not segjax's
    else:
        found = re.search(r"(?:^|/)((?:scripts|tools|benchmarks)/\w+\.py)$", words[1])
        if not found:
            return None  # a script outside the checkout's script folders
        target, args = found.group(1), words[2:]
    if target in SKIPPED:
        return None
    if target.startswith("scripts/"):
        name = target[len("scripts/") : -len(".py")]
        if not (ROOT / target).is_file():
            return f"{target}: no such script"
        if inline and not args:
            return None
        if name in SCRIPT_COMMANDS:
            return parse(parser_of(name, prog=target), args)
        if name == "benchmark":
            from benchmarks.benchmark import benchmark_parser

            return parse(benchmark_parser(), args)
    if target not in TOOLS:
        return f"{target}: neither in TOOLS nor in SKIPPED of tests/test_docs.py"
    message = parse(parser_from_main(TOOLS[target]), args)
    if message is None and target == "benchmarks.compare_peer" and "--segjax-flags" in args:
        flags = shlex.split(args[args.index("--segjax-flags") + 1])
        message = parse(parser_of("train"), flags)
        message = message and f"--segjax-flags, as segjax train's flags: {message}"
    return message


def problems(pages: list[Path]) -> list[str]:
    found = []
    for page in pages:
        for snippet in code_snippets(page):
            try:
                commands = split_commands(snippet)
            except ValueError as err:
                found.append(f"{snippet.where()}: {snippet.text}\n    not shell words: {err}")
                continue
            for words in commands:
                message = check_command(words, snippet.inline)
                if message:
                    found.append(f"{snippet.where()}: {shlex.join(words)}\n    {message}")
    return found


def documented_commands() -> list[tuple[Snippet, list[str]]]:
    """Every command the docs show (a snippet that is not shell words is left to
    test_every_documented_command_line_parses, which names it)."""
    found = []
    for page in PAGES:
        for snippet in code_snippets(page):
            with contextlib.suppress(ValueError):
                found += [(snippet, words) for words in split_commands(snippet)]
    return found


def test_every_documented_command_line_parses():
    found = problems(PAGES)
    assert not found, "commands in the docs that their parser refuses:\n" + "\n".join(found)


def test_the_commands_are_found_where_the_docs_show_them():
    """The extraction is not silently empty: the README's quick start, a fenced command with
    continuation lines, an inline span across lines and a generated page's indented commands."""
    found = {(s.page.name, " ".join(words)) for s, words in documented_commands()}
    assert ("README.md", "python scripts/train.py --arch attn") in found
    assert ("README.md", "python scripts/submit.py") in found
    assert any(p == "kaggle.md" and c.startswith("segjax train --resume") for p, c in found)
    joined = "segjax train --data-dir ../shared/data/ccp_person --image-size 192x128"
    assert any(p == "results.md" and c.startswith(joined) for p, c in found)
    assert sum(p == "experiments.md" for p, _ in found) >= 10
    kinds = {" ".join(c.split()[:2]) for _, c in found}
    assert {"segjax train", "python scripts/train.py", "python scripts/benchmark.py"} <= kinds
    assert len(found) >= 40


def test_a_wrong_command_is_named_with_its_file_line_and_argparse_message(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(
        "Text with `segjax submit --no-such-flag` inline.\n"
        "\n"
        "```\n"
        "segjax train --arch attn \\\n"
        "    --epochs many\n"
        "python scripts/nothing.py --x\n"
        "python scripts/train.py --arch attn   # fine\n"
        "cd x && python -m segjax evaluate --split nowhere\n"
        "segjax trian\n"
        "python tools/unknown_tool.py\n"
        "```\n"
    )
    found = problems([page])
    assert len(found) == 6, found
    text = "\n".join(found)
    assert f"{page}:1: segjax submit --no-such-flag" in text
    assert "unrecognized arguments: --no-such-flag" in text
    assert f"{page}:4: segjax train --arch attn --epochs many" in text
    assert "argument --epochs: invalid" in text
    assert f"{page}:6: python scripts/nothing.py" in text and "no such script" in text
    assert f"{page}:8: python -m segjax evaluate" in text and "invalid choice: 'nowhere'" in text
    assert "unknown command 'trian'" in text
    assert "tools/unknown_tool.py: neither in TOOLS" in text


def test_a_main_built_parser_and_the_peer_flags_are_checked():
    assert check_command(["python", "tools/offline_wheels.py", "w", "--jax", "0.7.2"]) is None
    assert "unrecognized" in check_command(["python", "tools/offline_wheels.py", "w", "--x"])
    peer = ["python", "-m", "benchmarks.compare_peer", "--data-dir", "d", "--segjax-flags"]
    assert check_command([*peer, "--ema 0.995"]) is None
    assert "segjax train's flags" in check_command([*peer, "--emma 0.995"])


def python_c_snippets() -> list[pytest.param]:
    return [
        pytest.param(words[2], id=snippet.where())
        for snippet, words in documented_commands()
        if words[1:2] == ["-c"]
    ]


# The generators a snippet may call to make data for a measurement: in the test their
# arguments are checked against their signatures and nothing is made (the one snippet today
# would write 582 photo-sized images, 90 s).
DRY_RUN = """
import inspect
from segjax.data import synthetic
real = synthetic.generate
synthetic.generate = lambda *a, **k: inspect.signature(real).bind(*a, **k)
"""


@pytest.mark.parametrize("code", python_c_snippets())
def test_python_c_snippets_run(code, tmp_path):
    """Every `python -c` in the docs runs as shown (imports, names, arguments), in an empty
    folder, needing no data: a snippet that needs data does not belong in the docs as one."""
    env = {**os.environ, "SEGJAX_CACHE": str(tmp_path / "cache")}
    done = subprocess.run(
        [sys.executable, "-c", DRY_RUN + code],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, f"python -c {code!r} failed:\n{done.stderr[-3000:]}"


LINK = re.compile(r"\]\(([^)\s]+)\)|<img[^>]*\ssrc=\"([^\"]+)\"")


def slugs(page: Path) -> set[str]:
    """GitHub's anchors of a page's headings."""
    seen: dict[str, int] = {}
    found = set()
    in_fence = False
    for line in page.read_text().splitlines():
        if FENCE.match(line):
            in_fence = not in_fence
        if in_fence or not line.startswith("#"):
            continue
        slug = re.sub(r"[^\w\- ]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        found.add(slug if count == 0 else f"{slug}-{count}")
    return found


def test_every_relative_link_and_anchor_exists():
    broken = []
    for page in [*PAGES, ROOT / "CHANGELOG.md"]:
        for number, line in enumerate(page.read_text().splitlines(), 1):
            for match in LINK.finditer(line):
                target = match.group(1) or match.group(2)
                if re.match(r"^[a-z]+:", target):
                    continue  # http:, https:, mailto:
                path, _, anchor = target.partition("#")
                file = (page.parent / path).resolve() if path else page
                if not file.exists():
                    broken.append(f"{page.name}:{number}: {target}: no such file")
                elif anchor and file.suffix == ".md" and anchor not in slugs(file):
                    broken.append(f"{page.name}:{number}: {target}: no such heading")
    assert not broken, "\n".join(broken)


# Figures a measurement gave: speeds, step times, durations and Dice-like scores.
FIGURE = re.compile(
    r"\b\d[\d,]*(?:\.\d+)?\s?(?:img/s|images/s|steps/s|ms\b|GFLOP/s|TFLOP/s)"
    r"|\b\d+ min \d+ s\b"
    r"|(?<![\w.`-])0\.9[0-9]{2,3}\b(?![\w`])"
)


def test_measured_figures_live_in_results_md_only():
    """A hand-written page other than docs/results.md links to a figure instead of repeating
    it (flag values in code, like `--ema 0.995`, are settings, not figures); the README keeps
    one headline row, on the line that links to its measurement."""
    strays = []
    for page in [p for p in PAGES if p.name not in GENERATED | {"results.md"}]:
        in_fence = False
        for number, line in enumerate(page.read_text().splitlines(), 1):
            if FENCE.match(line):
                in_fence = not in_fence
            if in_fence:
                continue
            if page.name == "README.md" and "docs/results.md#" in line:
                continue  # the README's one headline row, which links to where it was measured
            prose = SPAN.sub("", line)
            strays += [f"{page.name}:{number}: {m.group(0)}" for m in FIGURE.finditer(prose)]
    assert not strays, "figures outside docs/results.md:\n" + "\n".join(strays)
    assert FIGURE.search("segjax 12.3 img/s") and FIGURE.search("Dice 0.951 (0.953)")


def test_the_changelog_leads_with_this_version():
    version = re.search(r'^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.M)
    heading = re.search(r"^## (\S+)", (ROOT / "CHANGELOG.md").read_text(), re.M)
    assert heading.group(1) == version.group(1)
