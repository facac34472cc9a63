"""End to end through the command line, on small slices of the real HH-RLHF data."""
import json
import subprocess
import sys

import pytest

from marsrm.cli import main


def test_help_lists_every_setting(capsys):
    assert main(["train", "--help"]) == 0
    text = capsys.readouterr().out
    for flag in ("--data", "--mode", "--backbone", "--max-length", "--train-size", "--eval-size", "--val-size",
                 "--seed", "--lr", "--epochs", "--center-rewards-coefficient", "--lora-r", "--output", "--config"):
        assert flag in text


def test_malformed_file_gets_one_line_error_and_exit_2(tmp_path):
    bad = tmp_path / "pairs.jsonl"
    bad.write_text('{"prompt": "a", "chosen": "b", "rejected": "c"}\n{"prompt": "a", "chosen": 5, "rejected": "c"}\n')
    result = subprocess.run([sys.executable, "-m", "marsrm.cli", "train", "--data", str(bad), "--output",
                             str(tmp_path / "run")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "pairs.jsonl:2" in lines[0] and "chosen" in lines[0]


def test_missing_file_and_bad_setting(tmp_path, capsys):
    assert main(["train", "--data", str(tmp_path / "nope.jsonl"), "--output", str(tmp_path / "r")]) == 2
    assert "nope.jsonl" in capsys.readouterr().err
    assert main(["train", "--lr", "-1", "--output", str(tmp_path / "r")]) == 2
    assert "'lr'" in capsys.readouterr().err


@pytest.mark.slow
def test_train_head_then_eval(tmp_path, hh_dir, capsys, monkeypatch):
    monkeypatch.setenv("MARS_DATA_DIR", str(hh_dir.parent))
    run = tmp_path / "run"
    argv = ["train", "--data", "hh-rlhf/helpful-base", "--train-size", "120", "--val-size", "20", "--eval-size", "80",
            "--epochs", "5", "--n-resamples", "200", "--output", str(run), "--no-progress"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "2 dropped" in out and "held-out: 80 pairs" in out and "length_baseline_accuracy" in out
    results = json.loads((run / "results.json").read_text())
    assert results["train_pairs"] == 100 and results["eval"]["n"] == 80 and results["val"]["n"] == 20
    assert 0.0 <= results["eval"]["accuracy"]["low"] <= results["eval"]["accuracy"]["value"] <= 1.0
    assert (run / "config.yaml").read_text().count("train_size: 120") == 1
    events = [json.loads(line)["event"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert "train" in events and "eval" in events
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    # a second run into the same directory is refused without --overwrite
    assert main(argv) == 2
    assert "--overwrite" in capsys.readouterr().err
    # eval on the same held-out pairs reproduces the training run's figure
    assert main(["eval", "--model", str(run / "model"), "--data", "hh-rlhf/helpful-base", "--train-size", "120",
                 "--eval-size", "80", "--n-resamples", "200", "--output", str(tmp_path / "eval.json")]) == 0
    evaluated = json.loads((tmp_path / "eval.json").read_text())
    assert evaluated["accuracy"]["value"] == pytest.approx(results["eval"]["accuracy"]["value"])


@pytest.mark.slow
def test_train_full_mode_writes_a_standard_model(tmp_path, hh_dir, monkeypatch):
    from transformers import AutoModelForSequenceClassification

    monkeypatch.setenv("MARS_DATA_DIR", str(hh_dir.parent))
    run = tmp_path / "full"
    assert main(["train", "--mode", "full", "--data", "hh-rlhf/helpful-online", "--train-size", "24",
                 "--eval-size", "16", "--max-length", "64", "--batch-size", "8", "--n-resamples", "100",
                 "--output", str(run), "--no-progress"]) == 0
    model = AutoModelForSequenceClassification.from_pretrained(run / "model")
    assert model.config.num_labels == 1
    manifest = json.loads((run / "model" / "marsrm.json").read_text())
    assert manifest["spec"]["normalization"]["std"] > 0


def test_python_dash_m_marsrm_is_the_command_line():
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "marsrm", "--version"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.startswith("marsrm ")


def test_help_gives_no_default_none_and_the_loop_s_own_epochs(capsys):
    from marsrm.cli import _commands

    for command in _commands():
        assert main([command, "--help"]) == 0
        text = " ".join(capsys.readouterr().out.split())
        assert "(default: None)" not in text, command
        if command in ("run", "compare"):
            assert "--epochs EPOCHS epochs on each round's base ∪ sample (default: 1, as in the paper)" in text


def test_the_demo_s_mars_section_and_its_old_flat_names(tmp_path, capsys):
    import argparse

    from marsrm.config import build_parser, resolve
    from marsrm.commands.demo import DemoConfig, DemoMars

    def parse(*argv):
        return resolve(DemoConfig, build_parser(DemoConfig, argparse.ArgumentParser()).parse_args(argv)).mars

    assert parse() == DemoMars()
    assert parse("--mars.pairs", "7", "--no-mars.run") == DemoMars(pairs=7, run=False)
    assert capsys.readouterr().err == ""
    old = tmp_path / "demo.yaml"
    old.write_text("mars: false\nmars_seeds: 2\n")
    assert parse("--config", str(old)) == DemoMars(run=False, seeds=2)
    assert parse("--no-mars") == DemoMars(run=False)
    notes = capsys.readouterr().err
    assert "setting 'mars_seeds' is now 'mars.seeds'" in notes and "setting 'mars' is now 'mars.run'" in notes
