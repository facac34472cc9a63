import argparse
from dataclasses import dataclass

import pytest

from marsrm.config import (YAML_MAX_BYTES, ConfigError, build_parser, from_mapping, load_yaml, resolve, setting,
                           to_yaml)


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
    with pytest.raises(ConfigError, match="'rate'"):  # a setting that cannot be None still refuses the word
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
    with pytest.raises(ConfigError, match="setting 'kind': choose one of one, two"):
        parse(["--kind", "three"])


def test_help_documents_every_field(capsys):
    parser = build_parser(Example, argparse.ArgumentParser())
    text = parser.format_help()
    for flag in ("--name", "--size", "--rate", "--flag", "--items", "--kind", "--config"):
        assert flag in text
    assert "a rate (default: 0.5)" in text


@dataclass
class Bounded:
    """Declared bounds, checked by `check_settings` before `validate`."""

    count: int = setting(1, "a count", ge=1)
    share: float = setting(0.5, "a share", ge=0, lt=1)
    seed: int | None = setting(None, "a seed", ge=0)


def parse_bounded(argv):
    return resolve(Bounded, build_parser(Bounded, argparse.ArgumentParser()).parse_args(argv))


@pytest.mark.parametrize("yaml_text, message", [
    ("count: 16.9", "setting 'count': expected a whole number (got 16.9)"),
    ("count: true", "setting 'count': expected a whole number (got True)"),
    ("count: 0", "setting 'count': must be ≥ 1 (got 0)"),
    ("share: .nan", "setting 'share': must be a finite number (got nan)"),
    ("share: 1", "setting 'share': must be < 1 (got 1.0)"),
    ("share: [1]", "setting 'share': expected a number (got [1])"),
    ("seed: -1", "setting 'seed': must be ≥ 0 (got -1)"),
])
def test_yaml_values_are_read_strictly_and_bounded(tmp_path, yaml_text, message):
    config_file = tmp_path / "c.yaml"
    config_file.write_text(yaml_text + "\n")
    with pytest.raises(ConfigError) as caught:
        parse_bounded(["--config", str(config_file)])
    assert message in str(caught.value) and str(config_file) in str(caught.value)  # the file is named


def test_whole_floats_and_text_numbers_are_read():
    assert parse_bounded(["--count", "3", "--share", "1e-3"]) == Bounded(count=3, share=0.001)
    assert from_mapping(Bounded, {"count": 4.0, "share": "2.5e-1"}) == Bounded(count=4, share=0.25)
    with pytest.raises(ConfigError, match="setting 'count': must be ≥ 1"):
        parse_bounded(["--count", "-2"])


def test_a_flag_overrides_a_bad_yaml_value_and_is_blamed_itself(tmp_path):
    config_file = tmp_path / "c.yaml"
    config_file.write_text("count: 0\n")
    assert parse_bounded(["--config", str(config_file), "--count", "2"]).count == 2
    with pytest.raises(ConfigError) as caught:
        parse_bounded(["--config", str(config_file), "--count", "-1"])
    assert "must be ≥ 1 (got -1)" in str(caught.value) and str(config_file) not in str(caught.value)


def test_yaml_with_exploding_aliases_is_refused_without_expanding(tmp_path):
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 10)]  # 10^10 leaves
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("\n".join(lines) + "\n")
    with pytest.raises(ConfigError, match="expands to more than"):
        load_yaml(bomb)
    with pytest.raises(ConfigError, match="bomb.yaml"):
        parse_bounded(["--config", str(bomb)])


def test_yaml_limits_size_and_reads_plain_data_only(tmp_path):
    big = tmp_path / "big.yaml"
    big.write_text("count: 1\n" + "#" * (YAML_MAX_BYTES + 1) + "\n")
    with pytest.raises(ConfigError, match="larger than"):
        load_yaml(big)
    code = tmp_path / "code.yaml"
    code.write_text("count: !!python/object/apply:os.system [echo hi]\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_yaml(code)
    merged = tmp_path / "merge.yaml"  # aliases a plan uses (merge keys) still work
    merged.write_text("base: &b {count: 2}\nother: {<<: *b, share: 0.1}\n")
    assert load_yaml(merged)["other"] == {"count": 2, "share": 0.1}
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"count: \xff\xfe\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_yaml(binary)
