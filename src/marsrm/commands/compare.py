"""`marsrm compare`: every strategy × every seed on the same split and pool, then paired statistics.

The split (and so the pool and the held-out pairs) is fixed by `--split-seed` (default `--seed`); each
training seed s = seed, seed+1, … changes the head's initialisation, batch order and round sampling.
Strategies are compared with each other on the SAME held-out pairs: for each pair, the share of seeds
whose model ranks it right, differenced between two strategies and bootstrapped over pairs.
"""
from __future__ import annotations

import dataclasses
import json
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from marsrm import allocate as alloc
from marsrm import metrics, record
from marsrm.config import ConfigError, check_settings, setting, to_yaml
from marsrm.io import atomic_write_json, atomic_write_text, run_directory
from marsrm.commands.run import RunConfig, run
from marsrm.loop import open_base_pool
from marsrm.pipeline import load_split

METRICS = ("accuracy", "auc", "mean_margin", "margin_snr", "ece")
# The range each metric can take, which its interval over seeds is clipped to (None: unbounded).
BOUNDS = {"accuracy": (0.0, 1.0), "auc": (0.0, 1.0), "mean_margin": None, "margin_snr": None, "ece": (0.0, 1.0)}


@dataclass
class BonSection:
    """`marsrm compare`'s best-of-N after the runs (`--bon.gold`, or `bon: {gold: …}` in YAML)."""

    gold: str | None = setting(None, "gold reward model: after the runs, best-of-N (`marsrm bon`) of each "
                               "strategy's models on the held-out prompts, judged by it, into <output>/bon "
                               "(docs/DOWNSTREAM.md); none = no best-of-N")
    prompts: int = setting(200, "held-out prompts evaluated", ge=1)
    ns: list[int] = setting([1, 2, 4, 8, 16], "N values, comma-separated", ge=1)
    policy: str = setting("smollm2", "policy LM (default: SmolLM2-135M-Instruct, offline)")
    max_new_tokens: int = setting(128, "tokens per sampled response at most", ge=1)


@dataclass
class CompareConfig(RunConfig):
    """`marsrm compare`: strategies side by side over several seeds, with paired intervals and plots."""

    # settings that moved into the `bon` section; the old flat names still load (with a note)
    RENAMED_SETTINGS: ClassVar[dict[str, str]] = {f"bon_{f.name}": f"bon.{f.name}"
                                                  for f in dataclasses.fields(BonSection)}

    strategies: list[str] = setting(["none", "uniform", "west-of-n", "mars", "mars-signed"],
                                    "comma-separated strategies to compare", choices=list(alloc.STRATEGIES))
    seeds: int = setting(5, "training seeds per strategy (seed, seed+1, …)", ge=1)
    baseline: str = setting("uniform", "strategy every other one is compared against, pair by pair")
    workers: int = setting(0, "parallel processes; 0 = one per 2 CPU cores, at most one per run", ge=0)
    output: str = setting("runs/compare", "directory: one run per strategy and seed, plus report.md and plots")
    record: str | None = setting(None, "results directory (e.g. results/NAME, to commit): each finished run's small "
                                 "outputs (config, results, metrics, per-pair margins and ids, per-round "
                                 "allocations; no weights) are copied to <record>/<strategy>/seed-<s>/, and a run "
                                 "recorded there with the same settings is not run again")
    bon: BonSection = setting(BonSection(), "best-of-N after the runs")

    def validate(self) -> None:
        check_settings(self)
        if not self.strategies:
            raise ConfigError("setting 'strategies': name at least one strategy")
        if len(set(self.strategies)) < len(self.strategies):
            raise ConfigError(f"setting 'strategies': a strategy is named twice ({', '.join(self.strategies)})")
        if self.baseline not in self.strategies:
            raise ConfigError(f"setting 'baseline': '{self.baseline}' is not among --strategies")
        for name in self.strategies:
            dataclasses.replace(self.run_config(name, self.seed), output="x").validate()
        if self.bon.gold:
            self.bon_config().validate()

    def bon_config(self):
        """`marsrm bon` on this comparison's split: each strategy's models (every seed), judged by `bon.gold`."""
        from marsrm.commands.bon import BonConfig
        from marsrm.pipeline import DataSettings

        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(DataSettings)}
        data.update(split_seed=self.data_seed)  # the split every run used
        models = [f"{s}={Path(self.output) / s / f'seed-{self.seed + k}' / 'model'}"
                  for s in self.strategies for k in range(self.seeds)]
        return BonConfig(**data, **dataclasses.asdict(self.bon), models=models, n_resamples=self.n_resamples,
                         output=str(Path(self.output) / "bon"), progress=self.progress)

    def run_config(self, strategy: str, seed: int) -> RunConfig:
        fields = {f.name for f in dataclasses.fields(RunConfig)}
        values = {k: v for k, v in dataclasses.asdict(self).items() if k in fields}
        values.update(strategy=strategy, seed=seed, split_seed=self.data_seed, progress=False,
                      output=str(Path(self.output) / strategy / f"seed-{seed}"))
        return RunConfig(**values)


def use_worker_threads() -> None:
    """torch's thread count in a comparison's process: MARSRM_THREADS where the comparison set it (parallel
    workers share the cores); otherwise unchanged, so a single worker computes on every core."""
    import torch

    threads = os.environ.get("MARSRM_THREADS")
    if threads:
        torch.set_num_threads(max(1, int(threads)))


def _run_one(config: RunConfig, pool=None, record_dir: str | None = None) -> tuple[str, int, str]:
    """Run one (strategy, seed) unless it is finished (in its run directory or recorded); record it if asked."""
    use_worker_threads()
    if record_dir and record.is_recorded(record_dir):
        changed = record.differences(record.read_fingerprint(record_dir, RunConfig) or {}, config)
        if changed:
            raise ConfigError(f"setting 'record': {record_dir} holds this run made with other settings "
                              f"({', '.join(changed[:5])}); remove it to run it again, or record elsewhere")
        return config.strategy, config.seed, "recorded before"
    results_file = Path(config.output) / "results.json"
    if results_file.exists():
        status = "done before"
    else:
        resumable = (Path(config.output) / "fingerprint.json").exists()
        run(dataclasses.replace(config, resume=resumable, overwrite=not resumable), echo=lambda *_: None, pool=pool)
        status = "resumed" if resumable else "ran"
    if record_dir:
        record.record_run(Path(config.output), Path(record_dir))
        status += ", recorded"
    return config.strategy, config.seed, status


def _record_dir(config: "CompareConfig", job: RunConfig) -> str | None:
    return str(Path(config.record) / job.strategy / f"seed-{job.seed}") if config.record else None


def compare(config: CompareConfig, echo=print, pool=None) -> dict:
    """Run every (strategy, seed), then write summary.json, report.md and the plots into `output`.

    pool: an in-memory variants source instead of `config.pool` (runs then stay in this process).
    """
    config.validate()
    split, _ = load_split(config, echo)  # the data's own errors come before any output or weights
    # Built in place (its files name their directory: the runs' config.yaml, the report), an old comparison set
    # aside until the new one is complete.
    with run_directory(config.output, overwrite=config.overwrite, resume=config.resume, stage=False):
        return _compare(config, echo, pool, split)


def _compare(config: CompareConfig, echo, pool, split) -> dict:
    """`compare` inside its locked output directory; split: the data as every run splits it."""
    out = Path(config.output)
    atomic_write_text(out / "config.yaml", to_yaml(config))
    # seed by seed, so a comparison stopped part way already holds paired runs of every strategy
    jobs = [config.run_config(s, config.seed + k) for k in range(config.seeds) for s in config.strategies]

    recorded = [job for job in jobs if config.record and record.is_recorded(_record_dir(config, job))]
    if len(recorded) < len(jobs):  # nothing to embed when every run is recorded already
        _prewarm(config, split, echo, pool)
    workers = 1 if pool is not None else config.workers or max(1, min(len(jobs), (os.cpu_count() or 2) // 2))
    echo(f"{len(jobs)} runs ({len(config.strategies)} strategies × {config.seeds} seeds) on {workers} process(es)")
    _run_all(config, jobs, workers, echo, pool)

    runs = load_runs(config)
    summary = summarise(config, runs)
    if config.record:
        atomic_write_text(Path(config.record) / "config.yaml", to_yaml(config))
        atomic_write_json(Path(config.record) / "summary.json", summary)
    if config.bon.gold:
        from marsrm.commands.bon import bon

        echo("best-of-N with each strategy's first-seed model, judged by the gold model …")
        result = bon(config.bon_config(), echo=echo)
        summary["bon"] = {"ns": result["ns"], "prompts": result["prompts"], "curve": result["curve"],
                          "win_rate": result["win_rate"], "results": str(out / "bon" / "results.json")}
    atomic_write_json(out / "summary.json", summary)
    from marsrm.report import format_summary, write_report

    report = write_report(config, summary, runs)
    echo(format_summary(summary))
    echo(f"report: {report}")
    return summary


def _run_all(config: CompareConfig, jobs: list[RunConfig], workers: int, echo, pool=None) -> None:
    """Every job, in this process or over `workers` processes, under one progress bar (with ETA) over the runs."""
    from tqdm.auto import tqdm

    with tqdm(total=len(jobs), desc="compare", unit="run", disable=not config.progress) as bar:
        def finished(outcome):
            with bar.external_write_mode():  # the line above the bar, not through it
                echo("{} seed {}: {}".format(*outcome))
            bar.update()

        if workers == 1:
            for job in jobs:
                finished(_run_one(job, pool, _record_dir(config, job)))
            return
        import multiprocessing

        os.environ.setdefault("MARSRM_THREADS", str(max(1, (os.cpu_count() or 2) // workers)))
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as executor:
            futures = [executor.submit(_run_one, job, None, _record_dir(config, job)) for job in jobs]
            for future in as_completed(futures):
                finished(future.result())


def _prewarm(config: CompareConfig, split, echo, pool=None) -> None:
    """Head mode: embed base, held-out and pool texts once, so parallel runs only read the cache."""
    if config.mode != "head":
        return
    from marsrm.learners import make_learner
    from marsrm.loop import BasePool
    from marsrm.pipeline import build_model

    needs_pool = any(alloc.STRATEGIES[s].augments for s in config.strategies) and config.budget > 0
    pool = open_base_pool(config, split.train, pool, echo) if needs_pool else BasePool.empty(split.train)
    learner = make_learner(build_model(config, seed=config.seed, progress=config.progress), progress=config.progress)
    held = split.train + split.val + split.eval
    echo(f"embedding {2 * (len(held) + int(pool.sizes.sum()))} texts (cached for every run)")
    learner.prepare(held)
    for chunk in pool.chunks():  # a pool over `pool_memory` is streamed here too
        learner.prepare(chunk)


def load_runs(config: CompareConfig) -> dict:
    """{strategy: [results.json dict per seed]} with the held-out margins attached as `eval_margins`; read from
    the results directory `config.record` when there is one, else from the run directories in `config.output`."""
    runs = {}
    root = Path(config.record or config.output)
    for strategy in config.strategies:
        runs[strategy] = []
        for k in range(config.seeds):
            run_dir = root / strategy / f"seed-{config.seed + k}"
            results = json.loads((run_dir / "results.json").read_text())
            results["eval_margins"] = np.load(run_dir / "eval_margins.npy")
            results["eval_ids"] = json.loads((run_dir / "eval_ids.json").read_text())
            results["run_dir"] = str(run_dir)
            runs[strategy].append(results)
    return runs


def summarise(config: CompareConfig, runs: dict | None = None) -> dict:
    """Per-strategy metrics over seeds, and each strategy against the baseline on the same held-out pairs.

    runs: `load_runs(config)`, read here when not given."""
    runs = load_runs(config) if runs is None else runs
    ids = runs[config.baseline][0]["eval_ids"]
    for strategy, results in runs.items():
        if any(r["eval_ids"] != ids for r in results):
            raise ConfigError(f"{strategy}: held-out pairs differ between runs; were they made with other data?")
    summary = {"baseline": config.baseline, "seeds": config.seeds, "eval_pairs": len(ids), "strategies": {}}
    # Per pair: the share of seeds that rank it right. Differences of these are paired by construction.
    right = {s: np.stack([r["eval_margins"] > 0 for r in results], axis=1) for s, results in runs.items()}
    correct = {s: ranked.mean(axis=1) for s, ranked in right.items()}
    for strategy, results in runs.items():
        entry = {name: metrics.seed_interval([r["eval"][name]["value"] for r in results], bounds=BOUNDS[name])
                 for name in METRICS}
        entry["length_baseline_accuracy"] = results[0]["eval"].get("length_baseline_accuracy", {}).get("value")
        if "val" in results[0]:
            entry["val_accuracy"] = metrics.seed_interval([r["val"]["accuracy"]["value"] for r in results],
                                                         bounds=BOUNDS["accuracy"])
        entry["allocation"] = allocation_by_round(results)
        if strategy != config.baseline:
            interval = metrics.paired_bootstrap(correct[strategy], correct[config.baseline], stat=np.mean,
                                                of_differences=True, n_resamples=config.n_resamples, seed=config.seed)
            ours = [r["eval"]["accuracy"]["value"] for r in results]
            theirs = [r["eval"]["accuracy"]["value"] for r in runs[config.baseline]]
            entry["vs_baseline"] = {"accuracy_difference": interval.as_dict(),
                                    "accuracy_difference_over_seeds": metrics.paired_seed_bootstrap(
                                        right[strategy], right[config.baseline], n_resamples=config.n_resamples,
                                        seed=config.seed),
                                    "seeds_won": float(np.mean(np.array(ours) > np.array(theirs))),
                                    "seeds_tied": float(np.mean(np.array(ours) == np.array(theirs)))}
        summary["strategies"][strategy] = entry
    for control in runs:  # a shuffled control beside its twin: how much of the twin's result is aim
        twin = alloc.get_strategy(control).control_for
        if twin in runs:
            summary["strategies"][control]["aim"] = {
                "aimed": twin, "accuracy_difference_over_seeds": metrics.paired_seed_bootstrap(
                    right[twin], right[control], n_resamples=config.n_resamples, seed=config.seed)}
    return summary


ALLOCATION_KEYS = ("effective_sample_size", "lowest_decile_budget_share", "lowest_signed_decile_budget_share",
                   "margin_std", "mis_ranked")


def allocation_by_round(results: list[dict]) -> dict:
    """How concentrated each round's allocation was, averaged over seeds: {key: [value per round]}."""
    rounds = [r.get("rounds_log") or [] for r in results]
    if not rounds or not all(rounds):
        return {}
    table = {}
    for key in ALLOCATION_KEYS:
        values = [[record.get(key) for record in run] for run in rounds]
        if all(v is not None for row in values for v in row) and len({len(row) for row in values}) == 1:
            table[key] = [float(v) for v in np.mean(np.array(values, dtype=np.float64), axis=0)]
    return table
