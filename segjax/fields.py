"""Settings declared as dataclass fields: one declaration gives a setting's default, its
command-line flag, help, choices and range, and the checks a value from a flag, a keyword
argument or config.json passes. No JAX import here; `segjax.config` declares the settings."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from segjax.errors import UserError


@dataclasses.dataclass(frozen=True)
class Range:
    """The values a number may take: [low, high], either end open or absent."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False  # low itself is not allowed
    high_open: bool = False

    def refuses(self, value: float) -> str | None:
        """Why `value` is out of range (None when it is in)."""
        too_low = self.low is not None and (
            value < self.low or (self.low_open and value == self.low)
        )
        too_high = self.high is not None and (
            value > self.high or (self.high_open and value == self.high)
        )
        if not (too_low or too_high):
            return None
        if self.high is None:
            return f"must be {'greater than' if self.low_open else 'at least'} {self.low:g}"
        if self.low is None:
            return f"must be {'less than' if self.high_open else 'at most'} {self.high:g}"
        left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
        return f"must be in {left}{self.low:g}, {self.high:g}{right}"


AT_LEAST_1 = Range(1)
NON_NEGATIVE = Range(0)
POSITIVE = Range(0, low_open=True)
FRACTION = Range(0, 1, high_open=True)  # a share that must leave something: [0, 1)
PROBABILITY = Range(0, 1)


def option(
    default: Any,
    help: str,
    choices: tuple[str, ...] | str = (),
    flag: str | None = None,
    metavar: str | None = None,
    valid: Range | None = None,
):
    """A setting with the help text, allowed values and range its command-line flag shows.

    `choices` is a tuple of values, or the name of a registry (`"encoders"`, `"archs"`,
    `"losses"`) whose entries are the values; `flag=""` keeps a field off the command line
    (set by another flag); `valid` is the range a number must be in (`check` enforces it).
    """
    meta = {"help": help, "choices": choices, "flag": flag, "metavar": metavar, "valid": valid}
    return dataclasses.field(default=default, metadata=meta)


# The registries a setting may name (`option(choices="archs")`), filled by the modules that own
# them when they are imported (segjax.models.registry, segjax.losses): settings know no model.
REGISTRIES: dict[str, Callable[[], list[str]]] = {}


def register(name: str, entries: Callable[[], list[str]]) -> None:
    """Make a registry's entries the choices of the settings that name it."""
    REGISTRIES[name] = entries


def choices_of(field: dataclasses.Field) -> list[str] | None:
    """A setting's allowed values: its own tuple, or the entries of the registry it names."""
    named = field.metadata.get("choices")
    if isinstance(named, str):
        return REGISTRIES[named]()
    return list(named) if named else None


def flag_of(field: dataclasses.Field) -> str:
    """A field's flag: --name, or --no-name for a switch that is on by default."""
    name = field.metadata.get("flag") or field.name.replace("_", "-")
    return f"--no-{name}" if field.default is True else f"--{name}"


def setting_value(field: dataclasses.Field, value: Any) -> Any:
    """One setting's value, as `Config.build` takes it: checked as its flag parses it."""
    kind = str(field.type).replace(" ", "")
    where = f"{field.name}={value!r}"
    if isinstance(field.default, tuple):  # a size: N, "HxW" or (H, W)
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if isinstance(value, str):
            try:
                return parse_size(value)
            except ValueError as err:
                raise UserError(f"{where}: {err}") from None
        if isinstance(value, (tuple, list)) and all(isinstance(v, int) for v in value):
            return tuple(value)
        raise UserError(f"{where}: expected N, 'HxW' or (H, W)")
    wanted = {"bool": (bool,), "int": (int,), "float": (int, float), "str": (str,)}.get(kind)
    if wanted and (not isinstance(value, wanted) or (kind != "bool" and isinstance(value, bool))):
        raise UserError(f"{where}: expected {'a number' if kind == 'float' else kind}")
    named = field.metadata.get("choices")
    if named and (not isinstance(named, str) or named in REGISTRIES):
        allowed = choices_of(field)
        if value not in allowed:
            raise UserError(f"{where}: choose one of {', '.join(allowed)}")
    return value


def show(value: Any) -> str:
    """A setting's value as typed on the command line (sizes as HxW)."""
    if isinstance(value, tuple) and all(isinstance(v, int) for v in value):
        return "x".join(map(str, value))
    return str(value)


def parse_size(text: str) -> tuple[int, int]:
    """'256' -> (256, 256); '256x192' -> (256, 192) as (height, width). The model's checks
    say what a size must be at least."""
    parts = text.lower().split("x")
    try:
        sizes = tuple(int(p) for p in parts)
    except ValueError:
        sizes = ()
    if len(sizes) == 1:
        sizes = sizes * 2
    if len(sizes) != 2:
        raise ValueError(f"image size {text!r}: expected N or HxW, e.g. 256 or 256x192")
    return sizes  # type: ignore[return-value]


def check_ranges(settings: Any) -> None:
    """Every number of a settings dataclass in its range, else one UserError naming the flag,
    the value and the range."""
    for field in dataclasses.fields(settings):
        value, valid = getattr(settings, field.name), field.metadata.get("valid")
        if valid is None or value is None or isinstance(value, bool):
            continue
        why = valid.refuses(value)
        if why:
            raise UserError(f"{flag_of(field)} {value:g}: {why}")


def dataclass_from_dict(cls: type, raw: dict[str, Any]) -> Any:
    """A settings dataclass from its JSON record (unknown keys refused)."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(raw) - set(fields)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} keys: {sorted(unknown)}")
    # JSON has no tuples: turn lists back into tuples so configs compare and hash equal.
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()})
