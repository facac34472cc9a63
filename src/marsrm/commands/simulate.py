"""`marsrm simulate`: the positive control (`marsrm.simulate`) over its grid, with its table and plot."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from marsrm.config import setting, to_yaml
from marsrm.io import atomic_write_text
from marsrm.simulate import SimulationSettings, plot_gain, results_json, results_table, run_grid


@dataclass
class SimulateConfig(SimulationSettings):
    """`marsrm simulate`: the positive control — the MARS rounds on synthetic pairs with a known reward."""

    output: str = setting("runs/simulate", "directory for results.json, config.yaml, table.md and "
                          "gain_vs_epsilon.png (files there are replaced)")


def simulate(config: SimulateConfig, echo=print) -> dict:
    """Run `marsrm simulate`: the grid, then results.json, config.yaml, table.md and gain_vs_epsilon.png in
    ``config.output``; returns results.json's dict."""
    config.validate()
    started = time.perf_counter()
    out = Path(config.output)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "config.yaml", to_yaml(config))
    results = run_grid(config, echo)
    atomic_write_text(out / "results.json", results_json(results))
    atomic_write_text(out / "table.md", results_table(results))
    plot_gain(results, out / "gain_vs_epsilon.png")
    echo(f"wrote results.json, config.yaml, table.md and gain_vs_epsilon.png to {out} "
         f"({time.perf_counter() - started:.0f} s)")
    return results
