"""Config dataclasses → command line: YAML `--config` first, then command-line overrides on top.

Each command has one dataclass; a field's `metadata["help"]` is its `--help` text. Field names map to
flags with dashes (`train_size` → `--train-size`); booleans get `--flag` / `--no-flag`; a setting that may
be None takes `none` (`--train-size none`: every pair but the held-out ones).

Every setting is checked once, before any work, from what its field declares (`check_settings`): its type
(an `int` is a whole number, a `float` a finite one, a `bool` true or false: nothing is coerced), its
`choices`, and its bounds (`ge`, `gt`, `le`, `lt` in `setting(...)`). A class's own `validate()` adds the
checks that relate settings to each other.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import operator
import sys
import types
import typing
from pathlib import Path

import yaml

# A settings file is a few hundred bytes; these bound what a hostile one can make the loader build.
YAML_MAX_BYTES = 1 << 20
YAML_MAX_NODES = 100_000


class ConfigError(ValueError):
    """A setting is invalid: the message names the setting and what is allowed."""


def setting(default, help: str, **metadata):
    """A config field with its `--help` text, and optionally `choices` and bounds `ge`, `gt`, `le`, `lt`.

    A default that is itself a settings dataclass makes a section: its fields are flags `--NAME.FIELD` and a
    mapping `NAME: {FIELD: …}` in YAML."""
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata={"help": help, **metadata})
    if dataclasses.is_dataclass(default):
        return dataclasses.field(default_factory=lambda: dataclasses.replace(default),
                                 metadata={"help": help, **metadata})
    return dataclasses.field(default=default, metadata={"help": help, **metadata})


def _renamed(cls) -> dict[str, str]:
    """{old flat name: 'section.field'} of a config class whose settings moved into a section."""
    return getattr(cls, "RENAMED_SETTINGS", {})


def nest(cls, values: dict, origin: str, echo=None) -> dict:
    """`values` with dotted keys (`bon.ns`) and old flat names (`bon_ns`, with a note to `echo`) gathered into
    their sections' mappings, and dashes read as underscores."""
    out: dict = {}
    for key, value in values.items():
        name = str(key).replace("-", "_")
        if name in _renamed(cls) and not isinstance(value, dict):  # a mapping under a section's own name is it
            new = _renamed(cls)[name]
            if echo is not None:
                section, _, field = new.partition(".")
                echo(f"note: {origin}: setting '{name}' is now '{new}' ({section}: {{{field}: …}} in YAML, "
                     f"--{new.replace('_', '-')} as a flag); the old name still works")
            name = new
        section, dot, field = name.partition(".")
        if dot:
            if not isinstance(out.get(section, {}), dict):
                raise ConfigError(f"{origin}: setting '{section}': expected a mapping of its settings")
            out.setdefault(section, {})[field] = value
        elif isinstance(value, dict) and isinstance(out.get(name), dict):
            out[name] = {**out[name], **value}
        else:
            out[name] = value
    return out


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


_KIND_NAMES = {bool: "true or false", int: "a whole number", float: "a number", str: "text"}


def read_value(value, kind):
    """`value` (from YAML or the command line) as `kind`, refusing what would only pass by coercion
    (16.9 or true as a whole number, a number as true/false): TypeError/ValueError saying what was expected."""
    if typing.get_origin(kind) is list:
        (item,) = typing.get_args(kind)
        if isinstance(value, (dict, bool)):
            raise TypeError("expected a list")
        items = value if isinstance(value, list) else [x.strip() for x in str(value).split(",") if x.strip()]
        return [read_value(x, item) for x in items]
    expected = _KIND_NAMES.get(kind, getattr(kind, "__name__", str(kind)))
    if kind is bool:
        if isinstance(value, bool):
            return value
    elif isinstance(value, bool) or isinstance(value, (list, dict)):
        pass
    elif kind is int:
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            return int(value.strip().replace("_", ""))
    elif kind is float:
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            return float(value)  # YAML reads 1e-3 (no dot) as text
    elif kind is str:
        if isinstance(value, (str, int, float)):
            return str(value)
    else:
        return kind(value)
    raise TypeError(f"expected {expected}")


_BOUNDS = {"ge": (operator.ge, "≥"), "gt": (operator.gt, ">"), "le": (operator.le, "≤"), "lt": (operator.lt, "<")}


def _problem(value, kind, f) -> str | None:
    """Why `value` does not fit field `f` of declared `kind`, or None."""
    if typing.get_origin(kind) is list:
        if not isinstance(value, list):
            return f"expected a list (got {value!r})"
        (item,) = typing.get_args(kind)
        return next((p for p in (_problem(v, item, f) for v in value) if p), None)
    if dataclasses.is_dataclass(kind):
        return None if isinstance(value, kind) else f"expected a mapping of its settings (got {value!r})"
    fits = {bool: lambda v: isinstance(v, bool),
            int: lambda v: isinstance(v, int) and not isinstance(v, bool),
            float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v),
            str: lambda v: isinstance(v, str)}.get(kind, lambda v: True)
    if not fits(value):
        what = "a finite number" if kind is float else _KIND_NAMES.get(kind, str(kind))
        return f"must be {what} (got {value!r})"
    choices = f.metadata.get("choices")
    if choices is not None and value not in choices:
        return f"choose one of {', '.join(map(str, choices))} (got {value!r})"
    for key, (compare, sign) in _BOUNDS.items():
        bound = f.metadata.get(key)
        if bound is not None and not compare(value, bound):
            return f"must be {sign} {bound} (got {value!r})"
    return None


def check_settings(config, prefix: str = "") -> None:
    """Check every field of `config` against its declared type, choices and bounds; ConfigError names the first
    that fails (`section.field` for a section's). No setting is read or coerced here: a value that fails is
    reported as given."""
    hints = typing.get_type_hints(type(config))
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        kind, optional = _base_type(hints[f.name])
        name = prefix + f.name
        if value is None:
            if optional:
                continue
            raise ConfigError(f"setting '{name}': needs a value")
        if dataclasses.is_dataclass(kind) and isinstance(value, kind):
            check_settings(value, f"{name}.")
            continue
        problem = _problem(value, kind, f)
        if problem:
            error = ConfigError(f"setting '{name}': {problem}")
            error.setting = name
            raise error


def load_yaml(path: str | Path, what: str = "config file"):
    """The YAML document at `path`, read safely: plain data only, at most YAML_MAX_BYTES, and at most
    YAML_MAX_NODES nodes once aliases are expanded (a file of nested aliases cannot exhaust memory)."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: {what} does not exist")
    if not path.is_file():
        raise ConfigError(f"{path}: {what} is not a file")
    if path.stat().st_size > YAML_MAX_BYTES:
        raise ConfigError(f"{path}: {what} is larger than {YAML_MAX_BYTES >> 20} MiB; a settings file is far smaller")
    try:
        text = path.read_text(encoding="utf-8")
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: {what} is not UTF-8 text ({err.reason} at byte {err.start})")
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({' '.join(str(err).split())})")
    if node is None:
        return None
    if _expanded_nodes(node, {}) > YAML_MAX_NODES:
        raise ConfigError(f"{path}: {what} expands to more than {YAML_MAX_NODES:,} values through its aliases; "
                          "refusing to read it")
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({' '.join(str(err).split())})")


def _expanded_nodes(node, seen: dict) -> int:
    """Nodes in the document once every alias is expanded, counted without expanding (memoised per node)."""
    key = id(node)
    if key not in seen:
        seen[key] = 0  # a recursive alias counts once per visit (safe_load refuses recursion anyway)
        children = node.value if isinstance(node.value, list) else []
        flat = [c for child in children for c in (child if isinstance(child, tuple) else (child,))]
        seen[key] = min(YAML_MAX_NODES + 1, 1 + sum(_expanded_nodes(c, seen) for c in flat))
    return seen[key]


def build_parser(cls, parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add `--config` and one flag per field of dataclass `cls` to `parser` (`--section.field` for a section's)."""
    parser.add_argument("--config", type=Path, help="YAML file of settings; command-line flags override it")
    _add_flags(cls, parser)
    for old in _renamed(cls):  # the old flat flags keep working (hidden from --help)
        kind, _ = _leaf_kind(cls, _renamed(cls)[old])
        if kind is bool:
            parser.add_argument("--" + old.replace("_", "-"), dest=old, action=argparse.BooleanOptionalAction,
                                default=None, help=argparse.SUPPRESS)
        else:
            parser.add_argument("--" + old.replace("_", "-"), dest=old, type=str, default=None, help=argparse.SUPPRESS)
    return parser


def _leaf_kind(cls, path: str):
    """(type, optional) of the setting at dotted `path` of `cls`."""
    head, _, rest = path.partition(".")
    kind, optional = _base_type(typing.get_type_hints(cls)[head])
    return _leaf_kind(kind, rest) if rest else (kind, optional)


def leaf_settings(cls, prefix: str = ""):
    """Every setting of `cls` as (dotted path, field, type, optional), sections' settings included."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        kind, optional = _base_type(hints[f.name])
        if dataclasses.is_dataclass(kind):
            yield from leaf_settings(kind, f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", f, kind, optional


def _add_flags(cls, parser: argparse.ArgumentParser, prefix: str = "") -> None:
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.metadata.get("cli") is False:
            continue
        kind, optional = _base_type(hints[f.name])
        if dataclasses.is_dataclass(kind):
            _add_flags(kind, parser, f"{prefix}{f.name}.")
            continue
        flag = "--" + prefix + f.name.replace("_", "-")
        dest = prefix + f.name
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        help_text = f.metadata.get("help", "")
        if default is not None:
            help_text += f" (default: {default})"
        elif not any(word in help_text for word in ("default", "none")):  # else the help says what None means
            help_text += " (default: none)"
        help_text = help_text.replace("%", "%%")  # argparse formats help
        if kind is bool:
            parser.add_argument(flag, dest=dest, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        else:  # read as text here; `from_mapping` reads it as the field's type, so a flag and YAML fail alike
            choices = f.metadata.get("choices")
            if choices:
                help_text += f"; one of {', '.join(map(str, choices))}"
            parser.add_argument(flag, dest=dest, type=_or_none(str) if optional else str, default=None,
                                help=help_text, metavar=f.name.upper())


def from_mapping(cls, values: dict, origin: str = "config", prefix: str = ""):
    """Build `cls` from a dict, refusing unknown keys (a typo must not pass silently); a section's settings are
    named `prefix` + their name (`bon.ns`) in errors."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        name = str(key).replace("-", "_")
        if name not in names:
            raise ConfigError(f"{origin}: unknown setting '{prefix}{key}' (known: {', '.join(sorted(names))})")
        kind, optional = _base_type(hints[name])
        if value is None and optional:
            kwargs[name] = None
            continue
        if dataclasses.is_dataclass(kind):  # a section: a mapping of its own settings
            if isinstance(value, kind):
                kwargs[name] = value
            elif isinstance(value, dict):
                kwargs[name] = from_mapping(kind, value, origin=origin, prefix=f"{prefix}{name}.")
            else:
                raise ConfigError(f"{origin}: setting '{prefix}{key}': expected a mapping of its settings "
                                  f"(got {value!r})")
            continue
        try:
            kwargs[name] = read_value(value, kind)
        except (TypeError, ValueError):
            expected = _KIND_NAMES.get(kind, getattr(kind, "__name__", str(kind)))
            if typing.get_origin(kind) is list:
                expected = f"a list of {_KIND_NAMES.get(typing.get_args(kind)[0], 'values')} (comma-separated)"
            raise ConfigError(f"{origin}: setting '{prefix}{key}': expected {expected} (got {value!r})") from None
    return cls(**kwargs)


def resolve(cls, args: argparse.Namespace):
    """YAML (if `--config`) then every flag the user actually gave; then `validate()` if the class has one."""
    note = lambda line: print(f"marsrm: {line}", file=sys.stderr)  # noqa: E731
    values = {}
    if getattr(args, "config", None):
        path = Path(args.config)
        loaded = load_yaml(path) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping of setting: value")
        values = nest(cls, loaded, str(path), echo=note)
    given = {}
    for name in [path for path, *_ in leaf_settings(cls)] + list(_renamed(cls)):
        flag = getattr(args, name, None)
        if flag is not None:
            given[name] = None if flag is NONE_GIVEN else flag
    given = nest(cls, given, "command line", echo=note)
    config = from_mapping(cls, values, origin=str(getattr(args, "config", None) or "command line"))
    if given:
        merged = {**values, **{k: ({**values[k], **v} if isinstance(v, dict) and isinstance(values.get(k), dict)
                                   else v) for k, v in given.items()}}
        config = from_mapping(cls, merged, origin="command line")
    try:
        check_settings(config)
    except ConfigError as err:
        named = getattr(err, "setting", "")
        from_file = named.partition(".")[0] in values and not _given(given, named)
        if from_file:
            raise ConfigError(f"{args.config}: {err}") from None
        raise
    if hasattr(config, "validate"):
        config.validate()
    return config


def _given(given: dict, path: str) -> bool:
    section, _, field = path.partition(".")
    return section in given and (not field or not isinstance(given[section], dict) or field in given[section])


def to_yaml(config) -> str:
    return yaml.safe_dump(dataclasses.asdict(config), sort_keys=False)
