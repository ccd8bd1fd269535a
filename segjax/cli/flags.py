"""Command-line flags generated from the settings' dataclasses: names, help, choices, defaults.

A config field `image_size` becomes `--image-size`; a switch that is on by default becomes
`--no-<name>`; a field whose choices name a registry offers that registry's entries. The parsed
flags map back onto the same dataclasses. No JAX import here.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from segjax.config import Config, check, options, replace
from segjax.errors import UserError
from segjax.fields import choices_of, flag_of, parse_size, show


def choices(field: dataclasses.Field) -> list[str] | None:
    """A field's allowed values: its own tuple, or the entries of the registry it names (the
    registries fill themselves in when imported)."""
    import segjax.losses
    import segjax.models.registry  # noqa: F401

    return choices_of(field)


def _kind(field: dataclasses.Field) -> type:
    """The type a flag's text is parsed as (annotations are strings here: __future__)."""
    text = str(field.type).replace(" ", "")
    for name, kind in (("int", int), ("float", float), ("bool", bool)):
        if text in (name, f"{name}|None"):
            return kind
    return str


_NO_DEMO = object()


def add_field(parser, field: dataclasses.Field, default: Any = None, demo: Any = _NO_DEMO) -> None:
    """The flag of one settings field. It stores None unless typed, so a resume can tell what
    the user asked for; `default` (and the demo preset's value) are shown in the help."""
    default = field.default if default is None else default
    text = field.metadata["help"]
    kind = _kind(field)
    name = field.name.replace("_", "-")
    if kind is bool and field.default is None:  # on, off, or left to the run: --x / --no-x
        pair = parser.add_mutually_exclusive_group()
        on = dict(action="store_true", default=None, help=f"on: {text}")
        pair.add_argument(f"--{name}", dest=field.name, **on)
        pair.add_argument(f"--no-{name}", dest=field.name, action="store_false", help="off")
        return
    if kind is bool:
        text = f"off: {text} (on by default)" if default else text
        switch = dict(action="store_const", const=not default, help=text)
        parser.add_argument(flag_of(field), dest=field.name, **switch)
        return
    shown = ""
    if default is not None and default != "" and default != ():
        demo_text = f"; demo {show(demo)}" if demo is not _NO_DEMO and demo != default else ""
        shown = f" (default {show(default)}{demo_text})"
    parser.add_argument(
        flag_of(field),
        dest=field.name,
        type=kind,
        choices=choices(field),
        metavar=field.metadata.get("metavar"),
        help=text + shown,
    )


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """A flag per setting of config.json, showing the default and the demo preset's value."""
    group = parser.add_argument_group("run settings (saved in config.json)")
    for section, field in options():
        default = getattr(getattr(Config(), section), field.name)
        demo = getattr(getattr(Config.demo(), section), field.name)
        add_field(group, field, default, demo)


def add_option_flags(parser, cls: type, names: tuple[str, ...] | None = None, title: str = ""):
    """Flags of an options dataclass (RunOptions, InferenceOptions), all or `names`."""
    group = parser.add_argument_group(title) if title else parser
    for field in dataclasses.fields(cls):
        if field.metadata.get("flag") != "" and (names is None or field.name in names):
            add_field(group, field)


def option_values(args: argparse.Namespace, cls: type, **extra) -> Any:
    """An options value from parsed flags: typed flags over the dataclass's defaults."""
    given = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(cls)
        if getattr(args, f.name, None) is not None
    }
    values = cls(**{**given, **extra})
    check(values)
    return values


def given_fields(args: argparse.Namespace) -> dict[tuple[str, str], tuple[str, object]]:
    """(section, field) -> (flag, resolved value) for every config flag on the command line."""
    given: dict[tuple[str, str], tuple[str, object]] = {}
    for section, field in options():
        value = getattr(args, field.name)
        if value is None:
            continue
        if isinstance(field.default, tuple):  # a size, N or HxW
            try:
                value = parse_size(value)
            except ValueError as err:
                raise UserError(f"{flag_of(field)}: {err}") from err
        given[(section, field.name)] = (flag_of(field), value)
    return given


def train_config(args: argparse.Namespace) -> Config:
    """The run's Config from parsed flags: defaults, then the demo preset (no --data-dir), then
    the flags."""
    sections: dict[str, dict] = {"data": {}, "model": {}, "train": {}}
    for (section, field), (_, value) in given_fields(args).items():
        sections[section][field] = value
    base = Config() if args.data_dir else Config.demo()
    config = dataclasses.replace(replace(base, **sections), name=args.name or "")
    check(config)
    return config
