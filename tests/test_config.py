import argparse
from dataclasses import dataclass

import pytest

from marsrm.config import ConfigError, build_parser, resolve, setting, to_yaml


@dataclass
class Example:
    """An example command."""

    name: str = setting("a", "a name")
    size: int | None = setting(3, "a size")
    rate: float = setting(0.5, "a rate")
    flag: bool = setting(False, "a flag")
    items: list[str] = setting(["x"], "some items")
    kind: str = setting("one", "a kind", choices=["one", "two"])

    def validate(self):
        if self.rate < 0:
            raise ConfigError("setting 'rate': must be ≥ 0")


def parse(argv):
    return resolve(Example, build_parser(Example, argparse.ArgumentParser()).parse_args(argv))


def test_defaults_yaml_then_flags(tmp_path):
    assert parse([]) == Example()
    config_file = tmp_path / "c.yaml"
    config_file.write_text("name: from-yaml\nsize: 7\nflag: true\nitems: [p, q]\n")
    config = parse(["--config", str(config_file), "--size", "9", "--items", "r,s"])
    assert (config.name, config.size, config.flag, config.items) == ("from-yaml", 9, True, ["r", "s"])
    assert parse(["--config", str(config_file), "--no-flag"]).flag is False
    assert "name: from-yaml" in to_yaml(parse(["--config", str(config_file)]))


def test_none_sets_an_optional_setting_to_none_from_the_command_line(tmp_path):
    config_file = tmp_path / "c.yaml"
    config_file.write_text("size: 7\n")
    assert parse(["--size", "none"]).size is None
    assert parse(["--config", str(config_file), "--size", "NULL"]).size is None  # the flag wins over the file
    assert parse(["--size", "4"]).size == 4
    with pytest.raises(SystemExit):  # a setting that cannot be None still refuses the word
        parse(["--rate", "none"])


def test_unknown_or_bad_yaml_settings_are_named(tmp_path):
    config_file = tmp_path / "c.yaml"
    config_file.write_text("nmae: typo\n")
    with pytest.raises(ConfigError, match="unknown setting 'nmae'"):
        parse(["--config", str(config_file)])
    config_file.write_text("size: lots\n")
    with pytest.raises(ConfigError, match="'size'"):
        parse(["--config", str(config_file)])
    config_file.write_text("flag: 3\n")
    with pytest.raises(ConfigError, match="'flag'"):
        parse(["--config", str(config_file)])
    with pytest.raises(ConfigError, match="does not exist"):
        parse(["--config", str(tmp_path / "missing.yaml")])


def test_validate_runs_and_choices_are_enforced():
    with pytest.raises(ConfigError, match="rate"):
        parse(["--rate", "-1"])
    with pytest.raises(SystemExit):
        parse(["--kind", "three"])


def test_help_documents_every_field(capsys):
    parser = build_parser(Example, argparse.ArgumentParser())
    text = parser.format_help()
    for flag in ("--name", "--size", "--rate", "--flag", "--items", "--kind", "--config"):
        assert flag in text
    assert "a rate (default: 0.5)" in text
