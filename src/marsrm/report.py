"""Plots and the markdown report of a `marsrm compare` directory.

Everything here reads what it is given: the comparison's settings, its summary (`compare.summarise`) and its
runs (`compare.load_runs`), and the run directories those name; it imports nothing from `compare`.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from marsrm.io import atomic_write, atomic_write_text, read_metrics
from marsrm.metrics import RELIABLE_SEEDS, win_rate_of


def _rounds(run_dir: str) -> list[dict]:
    return sorted(read_metrics(run_dir, event="round"), key=lambda r: r["round"])


def _round_files(run_dir) -> list[Path]:
    """A run's rounds/round-T.npz files in round order."""
    return sorted((Path(run_dir) / "rounds").glob("round-*.npz"), key=lambda p: int(p.stem.split("-")[1]))


def _save(fig, path: Path) -> str:
    from matplotlib.ticker import MaxNLocator, ScalarFormatter

    for ax in fig.axes:
        if ax.get_xlabel() == "round":
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.xaxis.set_major_formatter(ScalarFormatter())  # a box plot's fixed labels would slide off their boxes
        for axis in (ax.xaxis, ax.yaxis):  # no "+0.2495" above the axis: every tick says its own value
            if isinstance(axis.get_major_formatter(), ScalarFormatter):
                axis.get_major_formatter().set_useOffset(False)
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight"))
    return path.name


def _figure(panels: int, width: float, height: float, **kwargs):
    """A row of `panels` axes under constrained layout, so the titles and the figure's title never overlap."""
    import matplotlib.pyplot as plt

    return plt.subplots(1, panels, figsize=(width * panels, height), squeeze=False, layout="constrained", **kwargs)


def _seeds(runs: dict) -> str:
    """The seeds a plot of means over seeds shows, as it says it: "seed 0" or "mean over seeds 0–4"."""
    seeds = sorted({r["seed"] for results in runs.values() for r in results if "seed" in r})
    if not seeds:
        return "mean over seeds"
    return f"seed {seeds[0]}" if len(seeds) == 1 else f"mean over seeds {seeds[0]}–{seeds[-1]}"


def _first_seed(results: list[dict]) -> str:
    return f"seed {results[0]['seed']}" if "seed" in results[0] else "first seed"


def _per_round(runs: list[dict], key: str) -> np.ndarray | None:
    """(seeds, rounds) array of `key` from each run's round records; None when absent."""
    table = [[r.get(key) for r in _rounds(run["run_dir"])] for run in runs]
    if not table or any(v is None for row in table for v in row):
        return None
    return np.array(table, dtype=np.float64)


def plot_accuracy(runs: dict, out: Path) -> str:
    """Validation (when there is a validation split) and held-out accuracy after each round, mean over seeds."""
    import matplotlib.pyplot as plt

    curves = {key: {s: v for s, results in runs.items() if (v := _per_round(results, key)) is not None}
              for key in ("val_accuracy", "eval_accuracy")}
    panels = [(key, title) for key, title in (("val_accuracy", "validation"), ("eval_accuracy", "held-out"))
              if curves[key]] or [("eval_accuracy", "held-out")]
    fig, axes = _figure(len(panels), 5.5, 4, sharey=True)
    for ax, (key, title) in zip(axes[0], panels):
        for strategy, values in curves[key].items():
            rounds = np.arange(1, values.shape[1] + 1)
            ax.plot(rounds, values.mean(0), marker="o", label=strategy)
            if len(values) > 1:
                ax.fill_between(rounds, values.min(0), values.max(0), alpha=0.15)
        ax.set_title(title)
        ax.set_xlabel("round")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("pairwise accuracy")  # the panels share it
    axes[0][-1].legend()
    band = "; band: min–max over seeds" if any(len(results) > 1 for results in runs.values()) else ""
    fig.suptitle(f"Accuracy after each round ({_seeds(runs)}{band})")
    name = _save(fig, out / "accuracy_per_round.png")
    plt.close(fig)
    return name


def plot_margins(runs: dict, out: Path) -> str:
    """Base-set margin distributions at the start of each round, one panel per strategy (first seed)."""
    import matplotlib.pyplot as plt

    fig, axes = _figure(len(runs), 3.2, 3.6, sharey=True)
    for ax, (strategy, results) in zip(axes[0], runs.items()):
        files = _round_files(results[0]["run_dir"])
        rounds = [int(f.stem.split("-")[1]) for f in files]
        # each box at its round's own position, so the integer round ticks of `_save` sit under the right box
        ax.boxplot([np.load(f)["margins"] for f in files], positions=rounds, showfliers=False)
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_title(f"{strategy} ({_first_seed(results)})")
        ax.set_xlabel("round")
    axes[0][0].set_ylabel("margin Δ on the base pairs")  # the panels share it
    fig.suptitle("Base-pair margins at the start of each round (whiskers: 1.5 IQR)")
    name = _save(fig, out / "margins_per_round.png")
    plt.close(fig)
    return name


def plot_budget(runs: dict, out: Path) -> str:
    """Budget each base pair got against its margin, in the last round (first seed)."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    from marsrm.allocate import STRATEGIES

    augmenting = {s: r for s, r in runs.items() if r[0].get("budget") and STRATEGIES[s].augments}
    fig, axes = _figure(max(1, len(augmenting)), 3.4, 3.4)
    for ax, (strategy, results) in zip(axes[0], augmenting.items()):
        last = _round_files(results[0]["run_dir"])[-1]
        saved = np.load(last)
        ax.scatter(saved["margins"], saved["counts"], s=6, alpha=0.5)
        ax.set_title(f"{strategy} ({_first_seed(results)}, {last.stem.replace('-', ' ')})")
        ax.set_xlabel("margin Δ")
        ax.set_ylabel("synthetic pairs allocated")
        ax.yaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))  # a count of pairs
    if not augmenting:
        axes[0][0].text(0.5, 0.5, "no strategy here augments", ha="center", va="center",
                        transform=axes[0][0].transAxes)
        axes[0][0].set_axis_off()
    fig.suptitle("Budget per base pair against its margin, last round")
    name = _save(fig, out / "budget_vs_margin.png")
    plt.close(fig)
    return name


def plot_curvature(runs: dict, out: Path) -> str:
    import matplotlib.pyplot as plt

    keys = [("mean_sigmoid_prime", "mean σ'(Δ) over the round's training pairs", "mean σ'(Δ)"),
            ("hessian_smallest_nonzero_eigenvalue", "Hessian: smallest non-zero eigenvalue", "eigenvalue"),
            ("hessian_condition_number", "Hessian: condition number", "condition number (log scale)")]
    fig, axes = _figure(len(keys), 5, 3.8)
    for ax, (key, title, label) in zip(axes[0], keys):
        for strategy, results in runs.items():
            values = _per_round(results, key)
            if values is not None:
                ax.plot(np.arange(1, values.shape[1] + 1), values.mean(0), marker="o", label=strategy)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("round")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0][-1].set_yscale("log")
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"Curvature of the Bradley–Terry loss after each round ({_seeds(runs)})")
    name = _save(fig, out / "curvature_per_round.png")
    plt.close(fig)
    return name


def few_seeds_warning(summary: dict) -> str | None:
    """One line saying the intervals over seeds are unreliable, when the comparison has fewer than 3 seeds."""
    seeds = summary["seeds"]
    if seeds >= RELIABLE_SEEDS:
        return None
    return (f"warning: {seeds} seed{'s' if seeds > 1 else ''} per strategy: the intervals over seeds are unreliable "
            f"({'none can be drawn from one seed' if seeds == 1 else 'a t-interval from 2 seeds is very wide'}); "
            f"use --seeds {RELIABLE_SEEDS} or more")


def length_rule_accuracy(summary: dict) -> float | None:
    """The "longer response wins" accuracy on the comparison's held-out pairs (the same for every strategy)."""
    return next(iter(summary["strategies"].values())).get("length_baseline_accuracy")


def aim_lines(summary: dict) -> list[str]:
    """One line per shuffled control run beside its twin (`mars` and `shuffled-mars`, …): the twin's accuracy minus
    the control's on the same held-out pairs, with the interval that redraws pairs and seeds. The control spends
    the same concentration on random pairs, so this is what aiming the budget at low margins did."""
    lines = []
    for control, entry in summary["strategies"].items():
        if "aim" in entry:
            diff = entry["aim"]["accuracy_difference_over_seeds"]
            lines.append(f"aim: {entry['aim']['aimed']} − {control} {diff['value']:+.4f} [{diff['low']:+.4f}, "
                         f"{diff['high']:+.4f}] (95%, pairs × seeds; the same concentration on random pairs)")
    return lines


def format_summary(summary: dict) -> str:
    """The plain-text table of a comparison's summary: accuracy over seeds and the paired difference per strategy."""
    width = max(13, 1 + max(map(len, summary["strategies"])))
    lines = [f"held-out pairs: {summary['eval_pairs']} · seeds: {summary['seeds']} · "
             f"paired against: {summary['baseline']}",
             f"{'strategy':<{width}}{'accuracy (95% over seeds)':<30}{'auc':>8}{'Δacc vs ' + summary['baseline']:>20}"
             f"{'95% paired':>22}{'seeds won':>11}"]
    for name, entry in summary["strategies"].items():
        acc, auc = entry["accuracy"], entry["auc"]
        line = f"{name:<{width}}{acc['mean']:.4f} [{acc['low']:.4f}, {acc['high']:.4f}]{'':<6}{auc['mean']:>8.4f}"
        if "vs_baseline" in entry:
            diff = entry["vs_baseline"]["accuracy_difference"]
            interval = f"[{diff['low']:+.4f}, {diff['high']:+.4f}]"
            line += f"{diff['value']:>+20.4f}{interval:>22}{entry['vs_baseline']['seeds_won']:>11.2f}"
        lines.append(line)
    length = length_rule_accuracy(summary)
    if length is not None:
        lines.append(f"{'(longer response wins)':<24}{length:.4f}  on the same held-out pairs: a model at or below "
                     "it has mostly learned length")
    lines += aim_lines(summary)
    warning = few_seeds_warning(summary)
    return "\n".join(lines + ([warning] if warning else []))


def write_report(config, summary: dict, runs: dict) -> Path:
    """Plots + report.md in `config.output`; returns the report's path.

    config: the `CompareConfig`; summary: `commands.compare.summarise(config)`; runs: `commands.compare.load_runs(config)`.
    """
    import matplotlib

    matplotlib.use("Agg")

    out = Path(config.output)
    plots = [plot_accuracy(runs, out), plot_margins(runs, out), plot_budget(runs, out), plot_curvature(runs, out)]
    baseline = summary["baseline"]
    lines = [f"# marsrm compare: {', '.join(config.strategies)}", "",
             f"Data `{config.data}` (split seed {config.data_seed}: {runs[baseline][0]['base_pairs']} base pairs, "
             f"{summary['eval_pairs']} held out) · mode `{config.mode}` · backbone `{config.backbone}` · "
             f"{config.rounds} rounds · budget {config.budget} per round · seeds {config.seed}–"
             f"{config.seed + config.seeds - 1} · pool `{config.pool}`", "",
             "## Held-out metrics (mean over seeds, 95% Student-t interval over seeds, clipped to the metric's "
             "range)", "",
             *([f"> {few_seeds_warning(summary)}", ""] if few_seeds_warning(summary) else []),
             "| strategy | accuracy | ROC-AUC | mean margin | margin SNR | ECE | validation accuracy |",
             "|---|---|---|---|---|---|---|"]
    cell = lambda e: f"{e['mean']:.4f} [{e['low']:.4f}, {e['high']:.4f}]"  # noqa: E731
    for strategy, entry in summary["strategies"].items():
        val = cell(entry["val_accuracy"]) if "val_accuracy" in entry else "—"
        lines.append(f"| {strategy} | {cell(entry['accuracy'])} | {cell(entry['auc'])} | "
                     f"{cell(entry['mean_margin'])} | {cell(entry['margin_snr'])} | {cell(entry['ece'])} | {val} |")
    length = length_rule_accuracy(summary)
    if length is not None:
        lines += ["", f"“Longer response wins” on the same held-out pairs: accuracy {length:.4f}."]
    lines += ["", f"## Paired against `{baseline}` on the same held-out pairs", "",
              "Per pair, the share of seeds that rank it right; the difference between two strategies is "
              "bootstrapped over pairs (95%). “Seeds won”: share of seeds whose accuracy beats the baseline's "
              "with the same seed.", "",
              "| strategy | Δ accuracy | 95% paired interval | seeds won |", "|---|---|---|---|"]
    for strategy, entry in summary["strategies"].items():
        if "vs_baseline" in entry:
            diff = entry["vs_baseline"]["accuracy_difference"]
            lines.append(f"| {strategy} | {diff['value']:+.4f} | [{diff['low']:+.4f}, {diff['high']:+.4f}] | "
                         f"{entry['vs_baseline']['seeds_won']:.2f} |")
    aim = aim_lines(summary)
    if aim:
        lines += ["", "## Aim against concentration", ""] + [f"- {line}" for line in aim]
    lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in plots]
    if "bon" in summary:
        bon = summary["bon"]
        top = str(bon["ns"][-1])
        lines += ["", f"## Best-of-N, judged by the gold model ({bon['prompts']} held-out prompts)", "",
                  f"At N = {top}: the mean gold reward of each strategy's pick (averaged over its seeds' models) and "
                  f"its win rate against `{summary['baseline']}`'s pick under the gold model (ties ½), 95% bootstrap "
                  "intervals over prompts and seeds; all N and the samples are in `bon/` (docs/DOWNSTREAM.md).", "",
                  f"| strategy | gold reward of the pick | win rate vs {summary['baseline']} |", "|---|---|---|"]

        def cell(entry):
            return "—" if entry is None or entry["value"] is None else \
                f"{entry['value']:.4f} [{entry['low']:.4f}, {entry['high']:.4f}]"

        for strategy, curve in bon["curve"].items():
            win = None if strategy == summary["baseline"] else win_rate_of(bon["win_rate"], strategy,
                                                                           summary["baseline"], top)
            lines.append(f"| {strategy} | {cell(curve[top])} | {cell(win)} |")
        lines += ["", "![bon/bon.png](bon/bon.png)"]
    lines += ["", "## Runs", "", "Each run directory holds config.yaml, metrics.jsonl (one line per round), "
              "rounds/round-T.npz (margins, budgets, sampled variants), checkpoints/, model/ and results.json.", ""]
    lines += [f"- `{r['run_dir']}`" for results in runs.values() for r in results]
    lines += ["", "```", format_summary(summary), "```", ""]
    return atomic_write_text(out / "report.md", "\n".join(lines))
