"""`marsrm demo` end to end at a small size: real helpful-base pairs, MiniLM features, a lexical pool, compare."""
import json

import pytest
import yaml

from marsrm.commands.demo import DemoConfig, DemoMars, demo


@pytest.mark.slow
def test_the_demo_trains_then_compares_on_a_lexical_pool_of_its_own_base_pairs(tmp_path, hh_dir, monkeypatch):
    monkeypatch.setenv("MARS_DATA_DIR", str(hh_dir.parent))
    mars = DemoMars(pairs=60, n=2, strategies=["uniform", "mars"], seeds=1, rounds=2, budget=60)
    config = DemoConfig(output=str(tmp_path / "demo"), train_size=60, eval_size=80, progress=False, mars=mars)
    lines = []
    results = demo(config, echo=lines.append)

    assert results["train"]["eval"]["accuracy"]["value"] > 0
    manifest = json.loads((tmp_path / "demo" / "pool" / "manifest.json").read_text())
    assert manifest["paraphraser"]["kind"] == "lexical"
    summary = json.loads((tmp_path / "demo" / "compare" / "summary.json").read_text())
    assert set(summary["strategies"]) == {"uniform", "mars"}
    # mars ran at the scale-free temperature the demo names
    run = yaml.safe_load((tmp_path / "demo" / "compare" / "mars" / "seed-0" / "config.yaml").read_text())
    assert (run["tau"], run["tau_scale"]) == (0.5, "std")
    assert summary["strategies"]["mars"]["length_baseline_accuracy"] is not None
    assert (tmp_path / "demo" / "compare" / "report.md").exists()
    assert any("a lexical pool" in line for line in lines)
