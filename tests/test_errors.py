"""The CLI's one error boundary: a user's bad file, path, disk or setting ends in one line naming the file and
exit 2; an interrupt, exit 130; a bug, exit 1 and how to report it; `--debug` adds the traceback."""
import errno
import json
import os

import pytest
import yaml
from safetensors import SafetensorError

from marsrm.commands import train as train_command
from marsrm.cli import main
from marsrm.data import DataError

PAIR = {"prompt": "What is 2 + 2?", "chosen": "4", "rejected": "5"}


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")
    return path


@pytest.fixture
def pairs(tmp_path):
    return write_jsonl(tmp_path / "pairs.jsonl", [PAIR, {**PAIR, "chosen": "four"}])


def train(tmp_path, data, *extra, output=None):
    return main(["train", "--data", str(data), "--output", str(output or tmp_path / "run"), "--mode", "head",
                 "--train-size", "1", "--no-progress", *extra])


def error_line(capsys, command="train") -> str:
    """The one stderr line of a user error."""
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"marsrm {command}: error: "), lines[0]
    return lines[0]


def test_data_path_that_is_a_directory(tmp_path, capsys):
    (tmp_path / "folder.jsonl").mkdir()
    assert train(tmp_path, tmp_path / "folder.jsonl") == 2
    assert "folder.jsonl" in error_line(capsys)


def test_data_file_without_read_permission(tmp_path, pairs, capsys):
    pairs.chmod(0)
    if os.access(pairs, os.R_OK):
        pytest.skip("running as root: file permissions do not stop reads")
    assert train(tmp_path, pairs) == 2
    assert "pairs.jsonl" in error_line(capsys)


def test_output_path_under_a_regular_file(tmp_path, pairs, capsys):
    (tmp_path / "notes.txt").write_text("a file, not a folder")
    assert train(tmp_path, pairs, output=tmp_path / "notes.txt" / "runs" / "one") == 2
    line = error_line(capsys)
    assert "notes.txt" in line and "Not a directory" in line


def test_full_disk(tmp_path, pairs, capsys, monkeypatch):
    def no_space(path, text):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(train_command, "atomic_write_text", no_space)
    assert train(tmp_path, pairs) == 2
    line = error_line(capsys)
    assert "config.yaml: No space left on device; free some disk space" in line


def test_a_full_disk_during_an_atomic_write_names_the_file(tmp_path, pairs, capsys, monkeypatch):
    """A real write that fails for space carries no file name; the atomic writer adds the file it was writing."""
    from pathlib import Path

    real = Path.write_text

    def no_space(self, *args, **kwargs):
        if self.name.startswith(".config.yaml."):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", no_space)
    assert train(tmp_path, pairs) == 2
    line = error_line(capsys)
    assert "config.yaml: No space left on device; free some disk space" in line and str(tmp_path) in line


@pytest.mark.parametrize("record, where", [
    ({**PAIR, "rejected": "five \ud800"}, "field 'rejected' holds a lone surrogate '\\ud800' at character 6"),
    ({"chosen": [{"role": "user", "content": "hi \udfff"}, {"role": "assistant", "content": "a"}],
      "rejected": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "b"}]},
     "field 'chosen' message 1 holds a lone surrogate"),
    ({"chosen": "\n\nHuman: hi\n\nAssistant: a\ud83d", "rejected": "\n\nHuman: hi\n\nAssistant: b"},
     "field 'chosen' holds a lone surrogate"),
])
def test_lone_surrogate_names_file_line_and_field(tmp_path, capsys, record, where):
    data = tmp_path / "pairs.jsonl"
    # line 1: the record with "?" for each surrogate; line 2: json.dumps writes it as the escape "\ud800"
    clean = json.loads(json.dumps(record, ensure_ascii=False).encode("utf-8", "replace"))
    data.write_text(json.dumps(clean) + "\n" + json.dumps(record) + "\n", encoding="ascii")
    assert train(tmp_path, data) == 2
    assert f"pairs.jsonl:2: {where}" in error_line(capsys)


def test_mapped_field_that_no_row_has(tmp_path, pairs, capsys):
    assert train(tmp_path, pairs, "--prompt-field", "question") == 2
    line = error_line(capsys)
    assert ("pairs.jsonl:1: field 'question' is missing from every row: no such column (columns: chosen, prompt, "
            "rejected); pass the one that holds the prompt to --prompt-field") in line


def test_mapped_field_missing_from_some_rows(tmp_path, capsys):
    rows = [{"question": "q", "chosen": "a", "rejected": "b"}] * 2 + [{"chosen": "a", "rejected": "b"}]
    data = write_jsonl(tmp_path / "pairs.jsonl", rows)
    assert train(tmp_path, data, "--prompt-field", "question") == 2
    line = error_line(capsys)
    assert "pairs.jsonl:3: field 'question' is missing (the record has: chosen, rejected)" in line
    assert "--prompt-field" in line


def test_mapped_field_that_a_later_row_has(tmp_path, capsys):
    rows = [{"chosen": "a", "rejected": "b"}, {"question": "q", "chosen": "a", "rejected": "b"}]
    data = write_jsonl(tmp_path / "pairs.jsonl", rows)
    assert train(tmp_path, data, "--prompt-field", "question") == 2
    line = error_line(capsys)
    assert "pairs.jsonl:1: field 'question' is missing (the record has: chosen, rejected)" in line


def test_multi_line_message_is_folded(tmp_path, pairs, capsys, monkeypatch):
    def fail(config, echo=print):
        raise DataError("pairs.jsonl: first\nsecond\n")

    monkeypatch.setattr(train_command, "train", fail)
    assert train(tmp_path, pairs) == 2
    assert error_line(capsys) == "marsrm train: error: pairs.jsonl: first second"


@pytest.mark.parametrize("error, text", [
    (IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), "pairs.jsonl"), "pairs.jsonl: Is a directory"),
    (PermissionError(errno.EACCES, os.strerror(errno.EACCES), "pairs.jsonl"), "pairs.jsonl: Permission denied"),
    (OSError(errno.EXDEV, os.strerror(errno.EXDEV), "a.tmp", None, "b"), "a.tmp -> b: Invalid cross-device link"),
    (SafetensorError("Error while deserializing header: header too large"), "deserializing header"),
    (UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte"), "invalid start byte"),
    (yaml.YAMLError("while parsing a block mapping\n  in line 1"), "while parsing a block mapping in line 1"),
], ids=lambda value: type(value).__name__ if isinstance(value, Exception) else "")
def test_every_user_error_type_is_one_line_and_exit_2(tmp_path, pairs, capsys, monkeypatch, error, text):
    def fail(config, echo=print):
        raise error

    monkeypatch.setattr(train_command, "train", fail)
    assert train(tmp_path, pairs) == 2
    assert text in error_line(capsys)


def bug(config, echo=print):
    return 1 / 0


def test_internal_error_exits_1_and_says_how_to_report(tmp_path, pairs, capsys, monkeypatch):
    monkeypatch.setattr(train_command, "train", bug)
    assert train(tmp_path, pairs) == 1
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("marsrm train: internal error in marsrm (ZeroDivisionError: division by zero)")
    assert "--debug" in lines[0] and "report" in lines[0]


@pytest.mark.parametrize("before", [True, False])
def test_debug_shows_the_traceback(tmp_path, pairs, capsys, monkeypatch, before):
    monkeypatch.setattr(train_command, "train", bug)
    argv = ["train", "--data", str(pairs), "--output", str(tmp_path / "run")]
    assert main(["--debug", *argv] if before else [*argv, "--debug"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("Traceback (most recent call last):") and "in bug" in err
    assert err.splitlines()[-1].startswith("marsrm train: internal error in marsrm")


def test_debug_with_a_user_error_keeps_exit_2(tmp_path, capsys):
    assert main(["--debug", "train", "--data", str(tmp_path / "missing.jsonl"), "--output", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.splitlines()[-1].startswith("marsrm train: error: ")


def test_interrupt_exits_130(tmp_path, pairs, capsys, monkeypatch):
    def interrupted(config, echo=print):
        raise KeyboardInterrupt

    monkeypatch.setattr(train_command, "train", interrupted)
    assert train(tmp_path, pairs) == 130
    assert capsys.readouterr().err.splitlines() == ["marsrm train: interrupted"]
