"""Config dataclasses → command line: YAML `--config` first, then command-line overrides on top.

Each command has one dataclass; a field's `metadata["help"]` is its `--help` text. Field names map to
flags with dashes (`train_size` → `--train-size`); booleans get `--flag` / `--no-flag`; a setting that may
be None takes `none` (`--train-size none`: every pair but the held-out ones).
"""
from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from pathlib import Path

import yaml


class ConfigError(ValueError):
    """A setting is invalid: the message names the setting and what is allowed."""


def setting(default, help: str, **metadata):
    """A config field with its `--help` text (and optional `choices`)."""
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata={"help": help, **metadata})
    return dataclasses.field(default=default, metadata={"help": help, **metadata})


def _base_type(annotation):
    """(type, optional) for `int`, `int | None`, `list[str]`, …"""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _base_type(args[0])[0], True
    return annotation, False


class _NoneGiven:
    """What `--flag none` (or `null`) reads as for a setting that may be None: "set it to None"."""

    def __repr__(self):
        return "none"


NONE_GIVEN = _NoneGiven()


def _or_none(convert):
    return lambda text: NONE_GIVEN if str(text).strip().lower() in ("none", "null") else convert(text)


def _converter(kind):
    if typing.get_origin(kind) is list:
        (item,) = typing.get_args(kind)
        return lambda text: [item(x.strip()) for x in str(text).split(",") if x.strip()]
    return kind


def build_parser(cls, parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add `--config` and one flag per field of dataclass `cls` to `parser`."""
    parser.add_argument("--config", type=Path, help="YAML file of settings; command-line flags override it")
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.metadata.get("cli") is False:
            continue
        kind, optional = _base_type(hints[f.name])
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        help_text = f"{f.metadata.get('help', '')} (default: {default})".replace("%", "%%")  # argparse formats help
        if kind is bool:
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        else:
            convert = _or_none(_converter(kind)) if optional else _converter(kind)
            parser.add_argument(flag, dest=f.name, type=convert, default=None,
                                choices=f.metadata.get("choices"), help=help_text, metavar=f.name.upper())
    return parser


def from_mapping(cls, values: dict, origin: str = "config"):
    """Build `cls` from a dict, refusing unknown keys (a typo must not pass silently)."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        name = key.replace("-", "_")
        if name not in names:
            raise ConfigError(f"{origin}: unknown setting '{key}' (known: {', '.join(sorted(names))})")
        kind, optional = _base_type(hints[name])
        if value is None and optional:
            kwargs[name] = None
            continue
        try:
            if typing.get_origin(kind) is list and isinstance(value, list):
                kwargs[name] = [typing.get_args(kind)[0](v) for v in value]
            elif kind is bool and not isinstance(value, bool):
                raise TypeError("expected true or false")
            else:
                kwargs[name] = _converter(kind)(value)
        except (TypeError, ValueError) as err:
            raise ConfigError(f"{origin}: setting '{key}': cannot read {value!r} as {getattr(kind, '__name__', kind)} ({err})")
    return cls(**kwargs)


def resolve(cls, args: argparse.Namespace):
    """YAML (if `--config`) then every flag the user actually gave; then `validate()` if the class has one."""
    values = {}
    if getattr(args, "config", None):
        path = Path(args.config)
        if not path.exists():
            raise ConfigError(f"{path}: config file does not exist")
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML ({str(err).splitlines()[0]})")
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping of setting: value")
        values.update(loaded)
    for f in dataclasses.fields(cls):
        given = getattr(args, f.name, None)
        if given is not None:
            values[f.name] = None if given is NONE_GIVEN else given
    config = from_mapping(cls, values, origin=str(getattr(args, "config", None) or "command line"))
    if hasattr(config, "validate"):
        config.validate()
    return config


def to_yaml(config) -> str:
    return yaml.safe_dump(dataclasses.asdict(config), sort_keys=False)
