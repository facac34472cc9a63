"""Runs that explain themselves: no silent leakage between training and evaluation pairs (the eval source's
own split, named in the load report; overlapping pairs refused unless allowed), and a run directory that records
what ran (run.json: settings as requested and resolved, versions, hardware; config.yaml reproduces the run)."""
import json
from pathlib import Path

import pytest
import yaml

import golden
from marsrm import record
from marsrm.cli import main
from marsrm.config import ConfigError
from marsrm.commands.run import RunConfig
from marsrm.commands.train import TrainConfig
from marsrm.pipeline import DataSettings, load_split

PAIRS = str(Path(__file__).parent / "fixtures" / "pool" / "pairs.jsonl")  # 12 HH-format pairs
SMALL = ["--data", PAIRS, "--train-size", "8", "--eval-size", "4", "--max-length", "32", "--n-resamples", "20",
         "--no-progress"]
RECORDS = [{"prompt": f"question {i}?", "chosen": f"a good answer {i}", "rejected": f"a bad answer {i}"}
           for i in range(10)]


def _dataset_dict(tmp_path, **splits) -> str:
    """A DatasetDict folder with the named splits, each a slice (start, stop) of RECORDS."""
    import datasets

    path = tmp_path / "dict"
    datasets.DatasetDict({name: datasets.Dataset.from_list(RECORDS[a:b]) for name, (a, b) in splits.items()}
                         ).save_to_disk(str(path))
    return str(path)


def _load(echoed: list, **settings):
    return load_split(DataSettings(**{"train_size": None, **settings}), echo=echoed.append)


# ---------------------------------------------------------------------------------------------
# §4 No silent leakage between training and evaluation
# ---------------------------------------------------------------------------------------------

def test_eval_data_reads_the_test_split_and_the_report_names_each_split(tmp_path):
    folder = _dataset_dict(tmp_path, train=(0, 6), test=(6, 10))
    echoed = []
    split, reports = _load(echoed, data=folder, eval_data=folder)
    assert sorted(p.chosen for p in split.train) == sorted(r["chosen"] for r in RECORDS[:6])
    assert sorted(p.chosen for p in split.eval) == sorted(r["chosen"] for r in RECORDS[6:])
    assert reports["data"]["split"] == "train" and reports["eval_data"]["split"] == "test"
    assert "split 'train'" in echoed[0] and "split 'test'" in echoed[1]
    assert "overlap" not in reports


def test_split_applies_to_data_alone_and_eval_split_to_eval_data(tmp_path):
    folder = _dataset_dict(tmp_path, train=(0, 6), test=(6, 10))
    split, reports = _load([], data=folder, split="test", eval_data=PAIRS)  # --split is not given to the file
    assert len(split.train) == 4 and len(split.eval) == 12 and reports["eval_data"]["split"] is None
    split, reports = _load([], data=PAIRS, eval_data=folder, eval_split="train")
    assert len(split.eval) == 6 and reports["eval_data"]["split"] == "train"


def test_eval_scores_a_dataset_s_test_split_unless_asked_for_training_s_held_out_part(tmp_path, monkeypatch):
    from marsrm.commands import eval as eval_command
    from marsrm.commands.eval import EvalConfig, evaluate

    folder = _dataset_dict(tmp_path, train=(0, 6), test=(6, 10))
    assert EvalConfig(data=folder).load_kwargs()["default_splits"] == ("test",)
    assert EvalConfig(data=folder, train_size=4).load_kwargs()["default_splits"] == ("train", "test")
    scored = []
    monkeypatch.setattr(eval_command, "evaluate_model", lambda model, pairs, **kw: scored.append(pairs) or {})
    monkeypatch.setattr("marsrm.model.load_reward_model", lambda *a, **kw: None)
    evaluate(EvalConfig(data=folder, output=str(tmp_path / "e.json")), echo=lambda *_: None)
    assert sorted(p.chosen for p in scored[-1]) == sorted(r["chosen"] for r in RECORDS[6:])
    evaluate(EvalConfig(data=folder, train_size=4, output=str(tmp_path / "e.json")), echo=lambda *_: None)
    assert len(scored[-1]) == 2  # the 6 training-split pairs less the 4 drawn for training
    for setting in (["--eval-data", PAIRS], ["--eval-split", "test"], ["--allow-overlap"]):
        assert main(["eval", "--data", folder, "--model", "m", *setting]) == 2


def test_eval_pairs_seen_in_training_are_refused_unless_allowed(tmp_path):
    folder = _dataset_dict(tmp_path, train=(0, 6), test=(6, 10))
    with pytest.raises(ConfigError, match=r"^setting 'allow_overlap': 6 held-out and 0 validation pairs also occur "
                                          r"among the training pairs .*--allow-overlap"):
        _load([], data=folder, eval_data=folder, eval_split="train")
    with pytest.raises(ConfigError, match="8 held-out"):  # the same file on both sides: ids alone would differ
        _load([], data=PAIRS, eval_data=PAIRS, train_size=8)
    echoed = []
    split, reports = _load(echoed, data=PAIRS, eval_data=PAIRS, train_size=8, allow_overlap=True)
    assert reports["overlap"] == {"eval": 8, "val": 0} and any("overlap: 8 held-out" in line for line in echoed)


def test_duplicate_pairs_within_one_source_count_as_overlap(tmp_path):
    path = tmp_path / "pairs.jsonl"  # one pair three times over: three ids, one content
    path.write_text(json.dumps(RECORDS[0]) + "\n" * 2 + json.dumps(RECORDS[0]) + "\n" + json.dumps(RECORDS[0]),
                    encoding="utf-8")
    with pytest.raises(ConfigError, match="1 held-out and 1 validation pairs"):
        _load([], data=str(path), train_size=2, val_size=1, eval_size=1)
    split, reports = _load([], data=str(path), train_size=2, val_size=1, eval_size=1, allow_overlap=True)
    assert (len(split.train), len(split.val), len(split.eval)) == (1, 1, 1)
    assert reports["overlap"] == {"eval": 1, "val": 1}


def test_a_single_split_dataset_used_for_both_sides_is_refused_on_the_command_line(tmp_path, capsys):
    folder = _dataset_dict(tmp_path, train=(0, 10))  # no test split: both sides read 'train'
    capsys.readouterr()
    code = main(["train", "--data", folder, "--eval-data", folder, "--train-size", "6", "--max-length", "32",
                 "--no-progress", "--output", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "allow_overlap" in err[0] and "6 held-out" in err[0]
    assert not (tmp_path / "run").exists()


def test_new_data_settings_keep_recorded_fingerprints():
    config = RunConfig(strategy="mars")
    assert "eval_split" in record.fingerprint(config)  # which pairs are held out changes the numbers
    assert "allow_overlap" not in record.fingerprint(config)  # it only permits a run: bookkeeping
    saved = {k: v for k, v in record.fingerprint(config).items() if k != "eval_split"}  # recorded before it existed
    assert record.differences(saved, config) == []


# ---------------------------------------------------------------------------------------------
# §5 A run directory that records what ran
# ---------------------------------------------------------------------------------------------

def test_run_record_resolves_every_empty_or_auto_setting():
    payload = record.run_record(RunConfig(strategy="mars"))
    resolved = payload["resolved"]
    assert payload["requested"]["lr"] is None and payload["requested"]["tau"] is None
    assert resolved["lr"] == 1e-3 and resolved["epochs"] == 1.0 and resolved["batch_size"] == 64
    assert resolved["weight_decay"] == 0.01 and resolved["warmup_ratio"] == 0.0 and resolved["tau"] == 0.1
    assert resolved["embed_dtype"] in ("bf16", "fp32") and resolved["mixed_precision"] in ("bf16", "no")
    full = record.run_record(TrainConfig(mode="full"))["resolved"]
    assert full["lr"] == 3e-5 and full["epochs"] == 1.0 and full["batch_size"] == 16 and full["warmup_ratio"] == 0.1


def test_train_records_what_ran_and_its_config_reproduces_the_run(tmp_path):
    first, second = tmp_path / "A", tmp_path / "B"
    assert main(["train", *SMALL, "--epochs", "2", "--embed-dtype", "auto", "--output", str(first)]) == 0
    assert main(["train", "--config", str(first / "config.yaml"), "--output", str(second)]) == 0
    results = [golden.numbers(json.loads((d / "results.json").read_text(encoding="utf-8"))) for d in (first, second)]
    assert results[0] == results[1] and results[0]["eval.accuracy.value"] is not None
    run = json.loads((first / "run.json").read_text(encoding="utf-8"))
    assert run["requested"] == yaml.safe_load((first / "config.yaml").read_text(encoding="utf-8"))
    assert run["requested"]["lr"] is None and run["requested"]["embed_dtype"] == "auto"
    resolved = run["resolved"]
    assert resolved["lr"] == 1e-3 and resolved["epochs"] == 2.0 and resolved["batch_size"] == 64
    assert resolved["weight_decay"] == 0.01 and resolved["warmup_ratio"] == 0.0
    assert resolved["embed_dtype"] in ("bf16", "fp32")
    assert not [name for name in ("lr", "epochs", "batch_size", "weight_decay", "warmup_ratio", "split_seed")
                if resolved[name] is None]
    versions = run["versions"]
    assert all(versions[name] for name in ("marsrm", "torch", "transformers", "accelerate", "python"))
    hardware = run["hardware"]
    assert hardware["cpu"] and hardware["cores"] >= 1 and isinstance(hardware["native_bf16"], bool)
    assert "cuda" in hardware
    again = json.loads((second / "run.json").read_text(encoding="utf-8"))
    assert {k: v for k, v in again["requested"].items() if k != "output"} == {
        k: v for k, v in run["requested"].items() if k != "output"}


def test_run_writes_run_json_beside_config_yaml(tmp_path):
    out = tmp_path / "run"
    assert main(["run", *SMALL, "--strategy", "none", "--rounds", "1", "--budget", "0", "--round-resamples", "10",
                 "--embed-dtype", "fp32", "--output", str(out)]) == 0
    run = json.loads((out / "run.json").read_text(encoding="utf-8"))
    assert run["requested"]["epochs"] is None and run["resolved"]["epochs"] == 1.0 and run["resolved"]["lr"] == 1e-3
    assert run["resolved"]["embed_dtype"] == "fp32" and run["versions"]["torch"]
    assert (out / "config.yaml").is_file()
