"""`marsrm experiment`: the comparisons behind docs/RESULTS.md as one plan, run idempotently into `results/`.

The plan (YAML, default `results/plan.yaml`) names pools (each a `marsrm augment`) and experiments (each a
`marsrm compare`, optionally on a named pool):

    pools:
      helpful-base-lexical: {data: hh-rlhf/helpful-base, train_size: 1000, paraphraser: lexical, n: 5}
    experiments:
      helpful-base/paper-tau: {pool: helpful-base-lexical, data: hh-rlhf/helpful-base, seeds: 5, ...}

`run` builds what a selected experiment needs and runs its comparison with `record=<results>/<name>`: each
finished run's small outputs land there (committed with the repository), runs already recorded with the same
settings are skipped, and a killed run resumes from its last round (run directories, with weights, live under
`--runs`, not in the repository). `tables` rebuilds every experiment's summary.json and the markdown tables in
`<results>/TABLES.md` from the recorded runs alone, on any machine, without a model or the data.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from marsrm.config import ConfigError, check_settings, from_mapping, load_yaml, setting, to_yaml
from marsrm.io import atomic_write_json, atomic_write_text

ACTIONS = ("run", "tables", "list")


@dataclass
class ExperimentConfig:
    """`marsrm experiment`: run the plan's experiments into results/ (skipping what is recorded), or rebuild the
    tables from results/."""

    action: str = setting("list", "run: run what results/ does not hold yet; tables: rebuild summaries and "
                          "TABLES.md from results/ alone; list: each experiment and how many of its runs are recorded",
                          choices=list(ACTIONS))
    plan: str = setting("results/plan.yaml", "the plan: YAML with 'pools' and 'experiments'")
    only: list[str] = setting([], "experiments to run (comma-separated names, or a prefix ending in '/'); default: all")
    results: str = setting("results", "where finished runs are recorded (one folder per experiment)")
    runs: str = setting("runs/experiments", "scratch space for pools and run directories (weights; not committed)")
    workers: int = setting(0, "parallel processes per comparison; 0 = one per 2 CPU cores", ge=0)
    progress: bool = setting(True, "show progress bars")

    def validate(self) -> None:
        check_settings(self)
        plan = load_plan(self.plan)
        for name in self.only:
            if not any(_selected(experiment, [name]) for experiment in plan["experiments"]):
                raise ConfigError(f"setting 'only': the plan {self.plan} has no experiment '{name}' "
                                  f"(it has: {', '.join(plan['experiments'])})")
        for name in plan["experiments"]:
            if _selected(name, self.only):
                compare_config(self, plan, name).validate()


def load_plan(path: str | Path) -> dict:
    """The plan at `path`, checked: pools and experiments are mappings of name → settings."""
    path = Path(path)
    plan = load_yaml(path, "the plan (setting 'plan')") or {}
    if not isinstance(plan, dict) or set(plan) - {"pools", "experiments"}:
        raise ConfigError(f"{path}: expected a mapping with 'pools' and 'experiments'")
    for section in ("pools", "experiments"):
        entries = plan.setdefault(section, {}) or {}
        plan[section] = entries
        if not isinstance(entries, dict):
            raise ConfigError(f"{path}: '{section}' must map names to settings")
        for name, values in entries.items():
            if not isinstance(values, dict):
                raise ConfigError(f"{path}: {section} '{name}': expected a mapping of setting: value")
    for name, values in plan["experiments"].items():
        if values.get("pool") is not None and values["pool"] not in plan["pools"]:
            raise ConfigError(f"{path}: experiment '{name}': pool '{values['pool']}' is not among 'pools'")
    return plan


def _selected(name: str, only: list[str]) -> bool:
    return not only or any(name == o or (o.endswith("/") and name.startswith(o)) for o in only)


def pool_config(config: ExperimentConfig, plan: dict, name: str):
    """The `marsrm augment` settings of the plan's pool `name`, built under `<runs>/pools/<name>`."""
    from marsrm.commands.augment import AugmentConfig

    values = {**plan["pools"][name], "output": str(Path(config.runs) / "pools" / name), "progress": config.progress}
    return from_mapping(AugmentConfig, values, origin=f"{config.plan}: pool '{name}'")


def compare_config(config: ExperimentConfig, plan: dict, name: str):
    """The `marsrm compare` settings of the plan's experiment `name`: run under `<runs>/<name>`, recorded in
    `<results>/<name>`, resumed where a run stopped."""
    from marsrm.commands.compare import CompareConfig

    values = {k: v for k, v in plan["experiments"][name].items() if k not in ("pool", "description")}
    pool = plan["experiments"][name].get("pool")
    values.update(pool=str(Path(config.runs) / "pools" / pool) if pool else None,
                  output=str(Path(config.runs) / name), record=str(Path(config.results) / name),
                  resume=True, workers=config.workers, progress=config.progress)
    return from_mapping(CompareConfig, values, origin=f"{config.plan}: experiment '{name}'")


def recorded_runs(compare) -> tuple[int, int]:
    """(runs recorded, runs planned) for one comparison."""
    done = recorded_by_strategy(compare)
    return sum(done.values()), len(done) * compare.seeds


def recorded_by_strategy(compare) -> dict[str, int]:
    """{strategy: how many of its seeds are recorded} for one comparison."""
    from marsrm.record import is_recorded

    return {s: sum(is_recorded(Path(compare.record) / s / f"seed-{compare.seed + k}") for k in range(compare.seeds))
            for s in compare.strategies}


def experiment(config: ExperimentConfig, echo=print) -> dict:
    """Run `marsrm experiment`: returns {experiment name: its status}."""
    config.validate()
    plan = load_plan(config.plan)
    names = [name for name in plan["experiments"] if _selected(name, config.only)]
    if config.action == "list":
        status = {}
        for name in names:
            done, planned = recorded_runs(compare_config(config, plan, name))
            status[name] = f"{done}/{planned} runs recorded"
            echo(f"{name:<48} {status[name]}")
        return status
    if config.action == "run":
        return {name: run_experiment(config, plan, name, echo) for name in names}
    return write_tables(config, plan, names, echo)


def run_experiment(config: ExperimentConfig, plan: dict, name: str, echo=print) -> str:
    """One experiment: its pool (reused when built), then its comparison, recorded run by run."""
    from marsrm.commands.compare import compare

    settings = compare_config(config, plan, name)
    done, planned = recorded_runs(settings)
    if done == planned:
        echo(f"{name}: all {planned} runs recorded; nothing to run")
        return "recorded"
    pool = plan["experiments"][name].get("pool")
    if pool:
        from marsrm.pool.build import PoolError, read_manifest
        from marsrm.commands.augment import augment

        try:
            read_manifest(Path(config.runs) / "pools" / pool)
        except PoolError:
            echo(f"{name}: building pool '{pool}' …")
            augment(pool_config(config, plan, pool), echo=echo)
    echo(f"{name}: {planned - done} of {planned} runs to go")
    compare(settings, echo=echo)
    return "ran"


def write_tables(config: ExperimentConfig, plan: dict, names: list[str], echo=print) -> dict:
    """summary.json and TABLES.md from the recorded runs alone: an experiment's table holds the strategies with
    every seed recorded, once the baseline's are (the others are listed as still to run)."""
    import dataclasses

    from marsrm.commands.compare import load_runs, summarise

    sections, status = [], {}
    for name in names:
        settings = compare_config(config, plan, name)
        done = recorded_by_strategy(settings)
        complete = [s for s in settings.strategies if done[s] == settings.seeds]
        if settings.baseline not in complete or len(complete) < 2:
            status[name] = f"{sum(done.values())}/{len(done) * settings.seeds} runs recorded"
            sections.append(f"## {name}\n\n{status[name]}: no table yet.\n")
            continue
        pending = [f"`{s}` ({done[s]}/{settings.seeds} seeds)" for s in settings.strategies if s not in complete]
        settings = dataclasses.replace(settings, strategies=complete)
        runs = load_runs(settings)
        summary = summarise(settings, runs)
        atomic_write_json(Path(settings.record) / "summary.json", summary)
        atomic_write_text(Path(settings.record) / "config.yaml", to_yaml(settings))
        sections.append(experiment_table(name, plan["experiments"][name].get("description"), settings, summary)
                        + (f"\nStill to run: {', '.join(pending)}.\n" if pending else ""))
        sections.append(efficiency_table(settings, runs))
        status[name] = "table" if not pending else f"table of {len(complete)} of {len(done)} strategies"
    out = Path(config.results) / "TABLES.md"
    header = ["# Tables rebuilt from the recorded runs", "",
              f"Made by `marsrm experiment --action tables --plan {config.plan}` from `{config.results}/` alone. "
              "Accuracy: mean over seeds [Student-t 95% over seeds]. Δ: paired difference against the baseline on "
              "the same held-out pairs; the interval redraws both the pairs and the seeds (two-level bootstrap); "
              "MDE: the smallest difference this design detects with 80% power. Concentration: the last round's "
              "effective sample size (pairs' worth of budget) and the budget share of the lowest-|Δ| decile "
              "(signed Δ for `mars-signed` and `shuffled-mars-signed`).", ""]
    atomic_write_text(out, "\n".join(header + sections))
    echo(f"wrote {out} ({sum(v.startswith('table') for v in status.values())} tables)")
    return status


def experiment_table(name: str, description: str | None, settings, summary: dict) -> str:
    """One experiment's markdown section: accuracy, the paired difference, its power, and concentration."""
    from marsrm.allocate import STRATEGIES
    from marsrm.report import aim_lines

    baseline = summary["baseline"]
    tau = "default" if settings.tau is None else f"{settings.tau:g}"
    lines = [f"## {name}", ""]
    if description:
        lines += [description.strip(), ""]
    lines += [f"`{settings.data}` · mode {settings.mode} · split seed {settings.data_seed} · seeds {settings.seed}–"
              f"{settings.seed + settings.seeds - 1} · {summary['eval_pairs']} held-out pairs · {settings.rounds} "
              f"rounds · budget {settings.budget} · τ {tau} ({settings.tau_scale})", "",
              f"| strategy | held-out accuracy | validation accuracy | Δ vs {baseline} | 95% interval (pairs × seeds) "
              "| MDE (80%) | seeds won | ESS, last round | lowest-decile share, last round |",
              "|---|---|---|---|---|---|---|---|---|"]
    for strategy, entry in summary["strategies"].items():
        acc = entry["accuracy"]
        val = entry.get("val_accuracy")
        row = [strategy, f"{acc['mean']:.4f} [{acc['low']:.4f}, {acc['high']:.4f}]",
               f"{val['mean']:.4f}" if val else "—"]
        versus = entry.get("vs_baseline")
        if versus:
            two = versus.get("accuracy_difference_over_seeds") or {}
            row += [f"{two.get('value', versus['accuracy_difference']['value']):+.4f}",
                    f"[{two['low']:+.4f}, {two['high']:+.4f}]" if two else "—",
                    f"{two['mde80']:.4f}" if two else "—", f"{versus['seeds_won']:.2f}"]
        else:
            row += ["—", "—", "—", "—"]
        allocation = entry.get("allocation") or {}
        ess = allocation.get("effective_sample_size")
        signed = strategy in STRATEGIES and STRATEGIES[strategy].signed
        share_key = "lowest_signed_decile_budget_share" if signed else "lowest_decile_budget_share"
        share = allocation.get(share_key)
        row += [f"{ess[-1]:.0f}" if ess and ess[-1] else "—", f"{share[-1]:.3f}" if share and ess and ess[-1] else "—"]
        lines.append("| " + " | ".join(row) + " |")
    length = next(iter(summary["strategies"].values())).get("length_baseline_accuracy")
    if length is not None:
        lines += ["", f"“Longer response wins” on the same pairs: {length:.4f}."]
    aim = aim_lines(summary)
    if aim:
        lines += [""] + [f"- {line}" for line in aim]
    return "\n".join(lines) + "\n"


EFFICIENCY_KEYS = (("eval_accuracy", "held-out accuracy"), ("eval_loss", "held-out BT loss"),
                   ("base_loss", "base-pair BT loss"))


def efficiency_table(settings, runs: dict) -> str:
    """Per round: optimizer steps and, for each strategy, held-out accuracy and the BT loss on the held-out and the
    base pairs after that round's training (mean over seeds), with the paired difference against the baseline
    (same seed, same round, so the same number of steps for strategies with the same budget; t-interval over
    seeds). A strategy's training loss is on its own sample, so it is not compared. runs: `compare.load_runs`."""
    from marsrm.metrics import seed_interval

    rounds = {s: [r.get("rounds_log") or [] for r in results] for s, results in runs.items()}
    if not all(run and all(key in run[0] for key, _ in EFFICIENCY_KEYS) for logs in rounds.values() for run in logs):
        return "Per-round efficiency: not recorded by these runs (made before the loop logged losses).\n"
    baseline = settings.baseline
    lines = ["Per round (after its training; mean over seeds; Δ: paired against "
             f"`{baseline}` at the same round, 95% t-interval over seeds):", "",
             "| strategy | round | steps | " + " | ".join(label for _, label in EFFICIENCY_KEYS) +
             f" | Δ held-out accuracy vs {baseline} | Δ base-pair loss vs {baseline} |",
             "|---|---|---|" + "---|" * (len(EFFICIENCY_KEYS) + 2)]
    for strategy, logs in rounds.items():
        for t in range(len(logs[0])):
            cells = [strategy, str(t + 1), f"{np.mean([run[t]['step'] for run in logs]):.0f}"]
            cells += [f"{np.mean([run[t][key] for run in logs]):.4f}" for key, _ in EFFICIENCY_KEYS]
            for key in ("eval_accuracy", "base_loss"):
                if strategy == baseline:
                    cells.append("—")
                    continue
                # a difference of two accuracies lies in [-1, 1]; of two losses, anywhere
                diff = seed_interval([a[t][key] - b[t][key] for a, b in zip(logs, rounds[baseline])],
                                     bounds=(-1.0, 1.0) if key == "eval_accuracy" else None)
                cells.append(f"{diff['mean']:+.4f} [{diff['low']:+.4f}, {diff['high']:+.4f}]")
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
