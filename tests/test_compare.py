"""`marsrm compare` end to end on real pairs with the in-memory dropout pool of test_loop."""
import json

import pytest

from marsrm.commands.compare import BonSection, CompareConfig, compare
from marsrm.config import ConfigError
from test_loop import DropoutPool


@pytest.mark.slow
def test_compare_writes_paired_summary_plots_and_report(tmp_path, hh_dir):
    from marsrm.data import load_pairs

    data = str(hh_dir / "helpful-online-test.jsonl.gz")
    pool = DropoutPool(load_pairs(data).pairs)
    config = CompareConfig(data=data, strategies=["none", "uniform", "mars-signed"], seeds=2, rounds=2, budget=80,
                           train_size=50, val_size=10, eval_size=60, max_length=64, lr=0.01,
                           output=str(tmp_path / "cmp"), progress=False, n_resamples=100, round_resamples=20)
    summary = compare(config, echo=lambda *_: None, pool=pool)
    out = tmp_path / "cmp"
    assert set(summary["strategies"]) == {"none", "uniform", "mars-signed"}
    assert "vs_baseline" not in summary["strategies"]["uniform"]
    diff = summary["strategies"]["mars-signed"]["vs_baseline"]["accuracy_difference"]
    assert diff["low"] <= diff["value"] <= diff["high"]
    acc = summary["strategies"]["none"]["accuracy"]
    assert acc["n"] == 2 and acc["low"] <= acc["mean"] <= acc["high"]
    for plot in ("accuracy_per_round.png", "margins_per_round.png", "budget_vs_margin.png",
                 "curvature_per_round.png"):
        assert (out / plot).stat().st_size > 1000
        assert plot in (out / "report.md").read_text()
    assert json.loads((out / "summary.json").read_text())["eval_pairs"] == 60
    # the runs used the same held-out pairs
    ids = {json.dumps(json.loads((out / s / f"seed-{k}" / "eval_ids.json").read_text()))
           for s in ("none", "uniform", "mars-signed") for k in (0, 1)}
    assert len(ids) == 1


def test_compare_refuses_unknown_strategy_and_missing_baseline(tmp_path):
    with pytest.raises(ConfigError, match="strateg"):
        compare(CompareConfig(strategies=["uniform", "magic"], output=str(tmp_path / "c")), echo=lambda *_: None)
    with pytest.raises(ConfigError, match="baseline"):
        compare(CompareConfig(strategies=["mars"], output=str(tmp_path / "c")), echo=lambda *_: None)


@pytest.mark.slow
def test_compare_runs_best_of_n_for_each_strategy_judged_by_a_gold_model(tmp_path, hh_dir, monkeypatch):
    from marsrm.data import load_pairs

    monkeypatch.setenv("MARSRM_CACHE", str(tmp_path / "cache"))
    data = str(hh_dir / "helpful-online-test.jsonl.gz")
    pool = DropoutPool(load_pairs(data).pairs)
    settings = dict(data=data, strategies=["none", "uniform"], seeds=1, rounds=1, budget=20, train_size=30,
                    eval_size=10, max_length=64, progress=False, n_resamples=50, round_resamples=10)
    # the gold judge: a model of the same kind trained on the same training pairs (so none of the held-out
    # prompts is among its training prompts, which the overlap check reads from its run's config.yaml)
    compare(CompareConfig(**settings, output=str(tmp_path / "gold")), echo=lambda *_: None, pool=pool)
    gold = tmp_path / "gold" / "none" / "seed-0" / "model"
    config = CompareConfig(**settings, output=str(tmp_path / "cmp"),
                           bon=BonSection(gold=str(gold), prompts=2, ns=[1, 2], max_new_tokens=6))
    summary = compare(config, echo=lambda *_: None, pool=pool)
    bon = summary["bon"]
    assert bon["prompts"] == 2 and bon["ns"] == [1, 2] and set(bon["curve"]) == {"none", "uniform"}
    assert bon["win_rate"]["none vs uniform"]["1"]["value"] == 0.5  # N = 1: the same sample for both
    result = json.loads((tmp_path / "cmp" / "bon" / "results.json").read_text())
    assert result["gold_checked"] and not result["overlap_dropped"].get("gold")
    report = (tmp_path / "cmp" / "report.md").read_text()
    assert "Best-of-N" in report and "| win rate vs uniform |" in report
    none_row = next(line for line in report.splitlines() if line.startswith("| none | ") and line.count("[") == 2)
    assert none_row.endswith("] |")  # gold reward and win rate against the baseline, each with its interval
    with pytest.raises(ConfigError, match=r"setting 'bon\.ns': must be ≥ 1"):
        CompareConfig(**settings, output=str(tmp_path / "bad"), bon=BonSection(gold=str(gold), ns=[0])).validate()


def test_best_of_n_reads_out_every_seed_of_each_strategy():
    config = CompareConfig(strategies=["none", "mars"], baseline="none", seeds=2, seed=3, bon=BonSection(gold="gold"),
                           output="out")
    assert config.bon_config().models == ["none=out/none/seed-3/model", "none=out/none/seed-4/model",
                                          "mars=out/mars/seed-3/model", "mars=out/mars/seed-4/model"]



def test_the_best_of_n_section_reads_nested_yaml_flags_and_the_old_flat_names(tmp_path, capsys):
    """`bon: {ns: …}` and `--bon.ns` are the section; the old `bon_ns` (YAML) and `--bon-ns` still load, with a
    note."""
    import argparse

    from marsrm.config import build_parser, resolve

    def parse(*argv):
        return resolve(CompareConfig, build_parser(CompareConfig, argparse.ArgumentParser()).parse_args(argv))

    nested, flat = tmp_path / "nested.yaml", tmp_path / "flat.yaml"
    nested.write_text("bon:\n  gold: g\n  ns: [1, 4]\n")
    flat.write_text("bon_gold: g\nbon_ns: [1, 4]\nseeds: 2\n")
    assert parse("--config", str(nested)).bon == BonSection(gold="g", ns=[1, 4])
    assert capsys.readouterr().err == ""
    from_flat = parse("--config", str(flat))
    assert from_flat.bon == BonSection(gold="g", ns=[1, 4]) and from_flat.seeds == 2
    assert "setting 'bon_ns' is now 'bon.ns'" in capsys.readouterr().err
    assert parse("--config", str(nested), "--bon.ns", "2,8").bon == BonSection(gold="g", ns=[2, 8])
    assert parse("--bon-gold", "h", "--bon-prompts", "3").bon == BonSection(gold="h", prompts=3)
    with pytest.raises(ConfigError, match=r"nested\.yaml: setting 'bon\.ns': must be ≥ 1"):
        nested.write_text("bon:\n  ns: [0]\n")
        parse("--config", str(nested))
    with pytest.raises(ConfigError, match=r"setting 'bon': expected a mapping"):
        nested.write_text("bon: 3\n")
        parse("--config", str(nested))
    with pytest.raises(ConfigError, match=r"unknown setting 'bon\.gould' \(known: gold, max_new_tokens"):
        nested.write_text("bon: {gould: g}\n")
        parse("--config", str(nested))


def test_a_single_comparison_worker_keeps_every_core_and_parallel_workers_get_their_share(monkeypatch):
    import torch

    from marsrm.commands.compare import use_worker_threads

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        monkeypatch.delenv("MARSRM_THREADS", raising=False)
        use_worker_threads()  # one worker: the process's threads are left alone
        assert torch.get_num_threads() == 2
        monkeypatch.setenv("MARSRM_THREADS", "1")  # what a comparison sets for each of its parallel workers
        use_worker_threads()
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
