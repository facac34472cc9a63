"""Every setting of every command, given an invalid value in a YAML config or as a flag, ends in one line naming
the setting and exit 2, before any data is read or any output written (property-based over the declared types
and bounds of each command's config)."""
import dataclasses
import math
import typing
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from marsrm import cli
from marsrm.config import _BOUNDS, leaf_settings

COMMANDS = {name: cls for name, (cls, _, _) in cli._commands().items()}


def _fields(cls):
    """(dotted name, field, type) of every setting, a section's included."""
    for name, f, kind, _ in leaf_settings(cls):
        if f.metadata.get("cli") is not False:
            yield name, f, kind


CASES = [(command, name) for command, cls in COMMANDS.items() for name, _, _ in _fields(cls)]


def _number_outside(f, whole: bool):
    """Numbers that break one of the field's declared bounds (nothing when it declares none)."""
    options = []
    for key in _BOUNDS:
        bound = f.metadata.get(key)
        if bound is None:
            continue
        if key in ("ge", "gt"):
            top = bound - 1 if (whole and key == "ge") else bound
            options.append(st.integers(max_value=math.floor(top)) if whole
                           else st.floats(max_value=bound, exclude_max=key == "ge", allow_nan=False))
        else:
            low = bound + 1 if (whole and key == "le") else bound
            options.append(st.integers(min_value=math.ceil(low), max_value=2**70) if whole
                           else st.floats(min_value=bound, exclude_min=key == "le", allow_nan=False))
    return options


def invalid_values(f, kind):
    """A strategy of values that field `f` (of declared `kind`) must refuse, as YAML would hand them over."""
    junk = st.sampled_from([[1, 2], {"a": 1}])
    if typing.get_origin(kind) is list:
        (item,) = typing.get_args(kind)
        inner = invalid_values(f, item)
        return st.one_of(st.lists(inner, min_size=1, max_size=3), st.just({"a": 1}))
    if kind is bool:
        return st.one_of(st.sampled_from(["maybe", "yes please", 2, 0.5]), junk)
    if kind is int:
        return st.one_of(st.floats(allow_nan=True).filter(lambda x: not float(x).is_integer()),
                         st.booleans(), st.sampled_from(["many", "1.5", "ten"]), junk, *_number_outside(f, True))
    if kind is float:
        return st.one_of(st.sampled_from([math.nan, math.inf, -math.inf, "nan", "inf", "-inf", "fast"]),
                         st.booleans(), junk, *_number_outside(f, False))
    if kind is str:
        options = [st.booleans(), junk]
        if f.metadata.get("choices"):
            options.append(st.text(min_size=1, max_size=12).filter(lambda t: t not in f.metadata["choices"]))
        return st.one_of(options)
    raise AssertionError(f"no invalid values for {kind}")


def _flag_text(value, kind, f) -> str | None:
    """How a user would type `value` after the flag, or None where that text would be valid or cannot be typed
    (any text is text; a boolean flag takes no value; a list is typed comma-separated, tried through YAML)."""
    if kind in (int, float) and not isinstance(value, (list, dict)):
        return str(value)
    if kind is str and f.metadata.get("choices") and isinstance(value, str):
        return value
    return None


def _check_refused(capsys, argv, setting, tmp_path):
    rc = cli.main(argv)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert rc == 2, (argv, err)
    assert len(lines) == 1 and lines[0].startswith(f"marsrm {argv[0]}: error:"), err
    assert f"'{setting}'" in lines[0], (setting, lines[0])
    assert not (tmp_path / "out").exists(), "an output was written before the settings were checked"


@pytest.mark.parametrize("command, name", CASES, ids=[f"{c}-{n}" for c, n in CASES])
@settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_an_invalid_setting_is_one_line_and_exit_2(command, name, data, tmp_path, capsys):
    cls = COMMANDS[command]
    _, f, kind = next(item for item in _fields(cls) if item[0] == name)
    value = data.draw(invalid_values(f, kind), label=name)
    missing = str(tmp_path / "no-such-data.jsonl")  # a settings check must come before reading any data
    base = {"output": str(tmp_path / "out")} if "output" in {x.name for x in dataclasses.fields(cls)} else {}
    if "data" in {x.name for x in dataclasses.fields(cls)} and name != "data":
        base["data"] = missing
    config_file = tmp_path / "settings.yaml"
    config_file.write_text(yaml.safe_dump({**base, name: value}, allow_unicode=True))
    _check_refused(capsys, [command, "--config", str(config_file)], name, tmp_path)
    text = _flag_text(value, kind, f)
    if text is not None:
        flags = [f"--{k.replace('_', '-')}={v}" for k, v in base.items()]
        _check_refused(capsys, [command, *flags, f"--{name.replace('_', '-')}={text}"], name, tmp_path)


def test_every_command_is_covered():
    assert {c for c, _ in CASES} == set(COMMANDS) and len(CASES) > 200


PAIRS = str(Path(__file__).parent / "fixtures" / "pool" / "pairs.jsonl")  # 12 HH-format pairs
SMALL = ["--data", PAIRS, "--max-length", "32", "--n-resamples", "20", "--no-progress"]


@pytest.mark.parametrize("command, extra", [
    ("train", ["--train-size", "50"]),  # more pairs than the file has
    ("run", ["--train-size", "8", "--val-size", "9", "--strategy", "none", "--budget", "0"]),
    ("compare", ["--train-size", "8", "--eval-size", "9", "--strategies", "none", "--baseline", "none"]),
    ("train", ["--train-size", "8", "--prompt-field", "question", "--format", "pairs"]),
])
def test_checks_that_need_the_data_come_before_any_weights_or_output(command, extra, tmp_path, capsys, monkeypatch):
    def no_weights(*args, **kwargs):
        raise AssertionError("weights were loaded before the data was checked")

    for command in ("train", "run"):
        monkeypatch.setattr(f"marsrm.commands.{command}.build_model", no_weights)
    monkeypatch.setattr("marsrm.pipeline.build_model", no_weights)  # what compare imports
    rc = cli.main([command, *SMALL, *extra, "--output", str(tmp_path / "out")])
    lines = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and lines[0].startswith(f"marsrm {command}: error:"), lines
    assert not list(tmp_path.iterdir()), "the failed command left files behind"


def test_max_length_beyond_the_backbone_positions_is_refused_before_the_data(tmp_path, capsys):
    rc = cli.main(["train", "--data", str(tmp_path / "missing.jsonl"), "--max-length", "100000",
                   "--output", str(tmp_path / "out")])
    line = capsys.readouterr().err.strip()
    assert rc == 2 and "setting 'max_length': 100000 tokens is more than the backbone" in line and "(512)" in line
