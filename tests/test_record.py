"""Fingerprints that survive refactors, comparisons recorded run by run, and tables rebuilt from results/."""
import dataclasses
import json
import shutil

import pytest

from marsrm import record
from marsrm.commands.compare import CompareConfig, compare
from marsrm.config import ConfigError
from marsrm.commands.run import RunConfig
from test_loop import DropoutPool


def test_fingerprint_resolves_defaults_and_drops_what_the_run_never_uses():
    mars = record.fingerprint(RunConfig(strategy="mars"))
    assert mars["tau"] == 0.1 and mars["tau_scale"] == "raw" and mars["epochs"] == 1.0 and mars["lr"] == 1e-3
    assert "beta" not in mars and "lora_r" not in mars and "output" not in mars and "progress" not in mars
    assert mars == record.fingerprint(RunConfig(strategy="mars", tau=0.1, output="elsewhere", progress=False))
    assert mars != record.fingerprint(RunConfig(strategy="mars", tau=2.0))
    # τ means nothing to uniform, nor the pool to none: such runs are the same run.
    assert record.fingerprint(RunConfig(strategy="uniform")) == record.fingerprint(
        RunConfig(strategy="uniform", tau=2.0, tau_scale="std"))
    assert record.fingerprint(RunConfig(strategy="none", pool="a")) == record.fingerprint(
        RunConfig(strategy="none", pool="b", budget=7))
    full = record.fingerprint(RunConfig(mode="full", strategy="uniform"))
    assert full["lr"] == 3e-5 and "pooling" not in full and "mixed_precision" in full


def test_a_first_version_fingerprint_is_read_in_the_canonical_form():
    config = RunConfig(strategy="mars-signed", seed=3)
    # The first version: a flat dump of the dataclass as given (unresolved), without the settings added since.
    old = {k: v for k, v in dataclasses.asdict(config).items()
           if k not in {"resume", "overwrite", "progress", "output", "rounds", "pool_memory", "tau_scale"}}
    saved = record.saved_fingerprint(json.loads(json.dumps(old)), RunConfig)
    assert saved["tau"] == 0.5 and saved["epochs"] == 1.0
    assert record.differences(saved, config) == []
    assert record.differences(saved, dataclasses.replace(config, lr=0.5)) == ["lr: 0.001 → 0.5"]


def test_a_setting_added_since_matches_when_left_at_its_default():
    config = RunConfig(strategy="mars")
    saved = record.fingerprint(config)
    del saved["tau_scale"]  # as if fingerprinted before the setting existed
    assert record.differences(saved, config) == []
    assert record.differences(saved, dataclasses.replace(config, tau_scale="std")) == [
        "tau_scale: (not set) → 'std'"]


def test_changed_settings_names_each_difference_once_in_order():
    saved = {"temperature": 0.7, "top_k": 50, "retired": 1}
    current = {"top_k": 40, "temperature": 0.7, "added": "x", "quiet": 0}
    assert record.changed_settings(saved, current, at_default={"quiet"}) == [
        "added: (not set) → 'x'", "top_k: 50 → 40"]
    assert record.changed_settings(saved, current, ignore={"top_k", "added", "quiet"}) == []


def test_nested_settings_sections_flatten_to_the_same_names():
    @dataclasses.dataclass
    class Strategy:
        strategy: str = "mars"
        tau: float | None = None

    @dataclasses.dataclass
    class Nested:
        seed: int = 0
        allocation: Strategy = dataclasses.field(default_factory=Strategy)

    assert record.flat_settings(Nested()) == {"seed": 0, "strategy": "mars", "tau": None}


def test_pool_identity_is_how_the_pool_was_built_not_where_it_lies(tmp_path):
    manifest = {"format": 1, "n": 5, "seed": 0, "targets": "responses", "chunk_words": 30, "fallback": "drop",
                "filter": {"min_cosine": 0.75}, "paraphraser": {"kind": "lexical"}, "report": {"variants": 10},
                "shards": [], "cache": "cache"}
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "manifest.json").write_text(json.dumps(manifest))
    assert record.pool_identity(str(tmp_path / "a")) == record.pool_identity(str(tmp_path / "b"))
    manifest["n"] = 4
    (tmp_path / "b" / "manifest.json").write_text(json.dumps(manifest))
    assert record.pool_identity(str(tmp_path / "a")) != record.pool_identity(str(tmp_path / "b"))
    # the filter's embedder: fp32 (what pools were built with before the setting) is the identity it always had
    before = record.pool_identity(str(tmp_path / "b"))
    (tmp_path / "b" / "manifest.json").write_text(json.dumps({**manifest, "embed_dtype": "bf16"}))
    assert record.pool_identity(str(tmp_path / "b")) != before


def test_auto_precision_is_fingerprinted_as_this_machine_resolves_it():
    import torch

    from marsrm.runtime import resolve_dtype
    from marsrm.train import resolve_mixed_precision

    head = record.fingerprint(RunConfig(strategy="uniform", embed_dtype="auto"))
    assert head["embed_dtype"] == resolve_dtype("auto", torch.device("cpu")) in ("bf16", "fp32")
    assert head == record.fingerprint(RunConfig(strategy="uniform", embed_dtype=head["embed_dtype"]))
    full = record.fingerprint(RunConfig(mode="full", strategy="uniform", mixed_precision="auto"))
    assert full["mixed_precision"] == resolve_mixed_precision("auto", cpu=True) in ("bf16", "no")
    saved = {"version": record.FINGERPRINT_VERSION, "settings": {**full, "mixed_precision": "auto"}}
    assert record.saved_fingerprint(saved, RunConfig) == full


@pytest.mark.slow
def test_a_recorded_comparison_skips_its_runs_and_rebuilds_from_results_alone(tmp_path, hh_dir):
    from marsrm.data import load_pairs
    from marsrm.commands.experiment import ExperimentConfig, experiment

    data = str(hh_dir / "helpful-online-test.jsonl.gz")
    pool = DropoutPool(load_pairs(data).pairs)
    settings = dict(data=data, strategies=["uniform", "mars"], seeds=2, rounds=2, budget=40, train_size=40,
                    val_size=10, eval_size=50, max_length=64, lr=0.01, progress=False, n_resamples=50,
                    round_resamples=10, tau=2.0, tau_scale="std")
    results = tmp_path / "results" / "cmp"
    first = compare(CompareConfig(**settings, output=str(tmp_path / "runs"), record=str(results)),
                    echo=lambda *_: None, pool=pool)
    for strategy in ("uniform", "mars"):
        for seed in (0, 1):
            recorded = results / strategy / f"seed-{seed}"
            assert (recorded / "results.json").is_file() and (recorded / "eval_margins.npy").is_file()
            assert (recorded / "rounds" / "round-2.npz").is_file()
            assert not (recorded / "model").exists() and not (recorded / "checkpoints").exists()  # no weights
    mars = first["strategies"]["mars"]
    two = mars["vs_baseline"]["accuracy_difference_over_seeds"]
    assert two["low"] <= two["value"] <= two["high"] and two["n_seeds"] == 2 and two["mde80"] > 0
    assert len(mars["allocation"]["effective_sample_size"]) == 2

    # On another machine: no run directories, only results/. Nothing runs again; the numbers are the same.
    shutil.rmtree(tmp_path / "runs")
    lines = []
    again = compare(CompareConfig(**settings, output=str(tmp_path / "runs2"), record=str(results)),
                    echo=lines.append, pool=pool)
    assert sum("recorded before" in line for line in lines) == 4
    assert not any("embedding" in line for line in lines)
    assert again["strategies"]["mars"]["vs_baseline"] == mars["vs_baseline"]
    assert not (tmp_path / "runs2" / "mars").exists()

    # A recorded run made with other settings is refused, not silently mixed in.
    with pytest.raises(ConfigError, match="lr: 0.01 → 0.02"):
        compare(CompareConfig(**{**settings, "lr": 0.02}, output=str(tmp_path / "runs3"), record=str(results)),
                echo=lambda *_: None, pool=pool)

    # The tables from results/ alone, through the plan.
    plan = tmp_path / "plan.yaml"
    plan.write_text(json.dumps({"experiments": {"cmp": settings}}))
    status = experiment(ExperimentConfig(action="tables", plan=str(plan), results=str(tmp_path / "results"),
                                         runs=str(tmp_path / "scratch")), echo=lambda *_: None)
    assert status == {"cmp": "table"}
    tables = (tmp_path / "results" / "TABLES.md").read_text()
    row = next(line for line in tables.splitlines() if line.startswith("| mars |"))
    assert f"{two['value']:+.4f}" in row and f"[{two['low']:+.4f}, {two['high']:+.4f}]" in row
    assert json.loads((results / "summary.json").read_text())["strategies"]["mars"]["vs_baseline"] == \
        json.loads(json.dumps(mars["vs_baseline"]))

    # A strategy added to the plan later: the table keeps the complete ones and lists what is still to run.
    def tables_with(**changes):
        plan.write_text(json.dumps({"experiments": {"cmp": {**settings, **changes}}}))
        status = experiment(ExperimentConfig(action="tables", plan=str(plan), results=str(tmp_path / "results"),
                                             runs=str(tmp_path / "scratch")), echo=lambda *_: None)
        return status["cmp"], (tmp_path / "results" / "TABLES.md").read_text()

    status, tables = tables_with(strategies=["uniform", "mars", "mars-signed"])
    assert status == "table of 2 of 3 strategies" and "Still to run: `mars-signed` (0/2 seeds)." in tables
    assert next(line for line in tables.splitlines() if line.startswith("| mars |")) == row
    status, tables = tables_with(strategies=["uniform", "mars", "mars-signed"], baseline="mars-signed")
    assert status == "4/6 runs recorded" and "no table yet" in tables  # not without its baseline


def test_the_plan_is_checked_before_any_work(tmp_path):
    from marsrm.commands.experiment import ExperimentConfig

    plan = tmp_path / "plan.yaml"
    plan.write_text("experiments:\n  a: {pool: missing, strategies: [uniform]}\n")
    with pytest.raises(ConfigError, match="pool 'missing' is not among 'pools'"):
        ExperimentConfig(plan=str(plan)).validate()
    plan.write_text("experiments:\n  a: {strategies: [uniform], lrr: 1}\n")
    with pytest.raises(ConfigError, match="experiment 'a': unknown setting 'lrr'"):
        ExperimentConfig(plan=str(plan)).validate()
    plan.write_text("experiments:\n  a: {strategies: [uniform]}\n")
    with pytest.raises(ConfigError, match="has no experiment 'b'"):
        ExperimentConfig(plan=str(plan), only=["b"]).validate()


def test_the_committed_plan_is_valid():
    from pathlib import Path

    from marsrm.commands.experiment import ExperimentConfig, load_plan

    plan = Path(__file__).resolve().parents[1] / "results" / "plan.yaml"
    ExperimentConfig(plan=str(plan)).validate()
    assert "replicate/harmless-base/seeds-5-9" in load_plan(plan)["experiments"]


@pytest.mark.slow
def test_the_committed_tables_rebuild_from_the_committed_results(tmp_path):
    """`make results` on a fresh copy of results/ writes the same tables (and summaries) as are committed."""
    from pathlib import Path

    from marsrm.commands.experiment import ExperimentConfig, experiment

    committed = Path(__file__).resolve().parents[1] / "results"
    copy = tmp_path / "results"
    shutil.copytree(committed, copy, ignore=shutil.ignore_patterns("simulate", "flips"))
    for summary in copy.rglob("summary.json"):
        summary.unlink()
    experiment(ExperimentConfig(action="tables", plan=str(copy / "plan.yaml"), results=str(copy),
                                runs=str(tmp_path / "runs")), echo=lambda *_: None)
    body = lambda path: path.read_text().split("\n## ", 1)[1]  # noqa: E731  (the header names the folder)
    assert body(copy / "TABLES.md") == body(committed / "TABLES.md")
    rebuilt = sorted(p.relative_to(copy) for p in copy.rglob("summary.json"))
    assert rebuilt and all(json.loads((copy / p).read_text()) == json.loads((committed / p).read_text())
                           for p in rebuilt)
