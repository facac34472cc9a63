"""The positive control: synthetic pairs with a known reward, run through the library's allocation and round logic."""
import json

import numpy as np
import pytest

from marsrm import allocate as alloc
from marsrm import simulate as sim
from marsrm.cli import main
from marsrm.train import OptimSettings

SMALL = dict(dim=8, base_pairs=60, paraphrases=3, held_out=500, rounds=3, budget=120, seeds=2, epsilons=[0.3],
             noises=[1.0], workers=1)


def small(**changes) -> sim.SimulationSettings:
    return sim.SimulationSettings(**{**SMALL, **changes})


def problem(settings, seed=0, epsilon=0.5, noise=1.0, arm="faithful"):
    return sim.make_problem(sim.draw(settings, seed), epsilon=epsilon, noise=noise, arm=arm, signal=settings.signal)


def test_faithful_labels_follow_the_true_reward():
    settings = sim.SimulationSettings(base_pairs=300, held_out=10)
    p = problem(settings, epsilon=0.5, noise=1.0, arm="faithful")
    margins = np.einsum("nkd,d->nk", p.pool_chosen - p.pool_rejected, p.true_weight).ravel()
    # P(label agrees with the truth) = σ(|m| / T): compare per bin of |m|
    agree, size = margins > 0, np.abs(margins)
    for low, high in ((0, 0.5), (0.5, 2), (2, 100)):
        inside = (size >= low) & (size < high)
        expected = sim._sigmoid(size[inside]).mean()
        assert abs(agree[inside].mean() - expected) < 0.03, (low, high)
    # a sharp labeller (small T) is almost always right, whatever the source pair's label said
    sharp = problem(settings, epsilon=0.5, noise=0.02, arm="faithful")
    sharp_margins = np.einsum("nkd,d->nk", sharp.pool_chosen - sharp.pool_rejected, sharp.true_weight)
    assert (sharp_margins > 0).mean() > 0.99


def test_inherited_labels_equal_the_source_label():
    settings = small()
    draws = sim.draw(settings, 3)
    p = sim.make_problem(draws, epsilon=0.3, noise=2.0, arm="inherited", signal=settings.signal)
    n = settings.paraphrases
    a_chosen = np.all(p.chosen == draws.a, axis=1)
    assert a_chosen.any() and (~a_chosen).any()
    for i in range(settings.base_pairs):
        for k in range(n * n):
            first, second = draws.a[i] + 0.3 * draws.noise_a[i, k // n], draws.b[i] + 0.3 * draws.noise_b[i, k % n]
            expect = (first, second) if a_chosen[i] else (second, first)
            np.testing.assert_allclose(p.pool_chosen[i, k], expect[0])
            np.testing.assert_allclose(p.pool_rejected[i, k], expect[1])
    # ε = 0: every variant is its source pair, label included
    exact = sim.make_problem(draws, epsilon=0.0, noise=2.0, arm="inherited", signal=settings.signal)
    np.testing.assert_array_equal(exact.pool_chosen, np.broadcast_to(exact.chosen[:, None], exact.pool_chosen.shape))


def test_cells_of_one_seed_share_their_data():
    settings = small()
    draws = sim.draw(settings, 1)
    one = sim.make_problem(draws, epsilon=0.1, noise=0.5, arm="faithful", signal=settings.signal)
    two = sim.make_problem(draws, epsilon=1.0, noise=0.5, arm="inherited", signal=settings.signal)
    np.testing.assert_array_equal(one.chosen, two.chosen)
    np.testing.assert_array_equal(one.held_out, two.held_out)
    np.testing.assert_array_equal(one.init, two.init)
    other = sim.draw(settings, 2)
    assert not np.array_equal(draws.a, other.a)
    assert np.isclose(np.std(np.random.default_rng(0).standard_normal((20000, 8)) @ one.true_weight * np.sqrt(2)),
                      settings.signal, rtol=0.03)


@pytest.mark.parametrize("name", ["uniform", "west-of-n", "mars", "mars-signed-conc", "oracle-mars",
                                  "shuffled-mars-signed-conc", "none"])
def test_every_round_spends_exactly_the_budget(name):
    settings = small()
    result = sim.run_contender(problem(settings), name, settings, seed=0)
    expected = 0 if name == "none" else settings.budget
    assert [r["synthetic_pairs"] for r in result["rounds"]] == [expected] * settings.rounds
    assert 0.5 < result["accuracy"] <= 1.0


@pytest.fixture
def seen(monkeypatch):
    """The margins each `allocate` call of the simulation received, in order."""
    calls = []
    real = alloc.allocate

    def spy(strategy, margins, budget, rng, **kwargs):
        calls.append(np.array(margins))
        return real(strategy, margins, budget, rng, **kwargs)

    monkeypatch.setattr(sim.alloc, "allocate", spy)
    return calls


def test_oracle_allocates_by_the_true_margin_and_mars_by_the_model(seen):
    settings = small()
    p = problem(settings, noise=2.0)
    sim.run_contender(p, "oracle-mars-signed", settings, seed=0)
    assert len(seen) == settings.rounds
    assert (p.true_margins < 0).any()  # some observed labels are wrong: their true margin is negative
    for margins in seen:
        np.testing.assert_array_equal(margins, p.true_margins)
    seen.clear()
    sim.run_contender(p, "mars-signed-conc", settings, seed=0)
    assert not np.allclose(seen[-1], p.true_margins)


def test_shuffled_is_as_concentrated_as_its_twin_but_not_aimed(seen):
    settings = small()
    p = problem(settings)
    shuffled = sim.run_contender(p, "shuffled-mars-conc", settings, seed=0)["rounds"][0]
    np.testing.assert_allclose(seen[0], (p.chosen - p.rejected) @ p.init)  # the model's margins, unpermuted
    aimed = sim.run_contender(p, "mars-conc", settings, seed=0)["rounds"][0]
    # round 1 (the same model): the same weights on other pairs, so the same concentration, not on low margins
    assert shuffled["effective_sample_size"] == pytest.approx(aimed["effective_sample_size"])
    assert shuffled["effective_sample_size"] < 0.8 * settings.base_pairs
    assert shuffled["lowest_decile_share"] < aimed["lowest_decile_share"] - 0.1


def test_concentrated_tau_concentrates_and_paper_tau_reads_raw_margins():
    settings = small()
    assert settings.strategy_settings("mars") == {"tau": 0.1, "tau_scale": "raw"}
    assert settings.strategy_settings("oracle-mars-signed") == {"tau": 1.5, "tau_scale": "std"}
    result = sim.run_contender(problem(settings), "mars-conc", settings, seed=0)
    last = result["rounds"][-1]
    assert last["effective_sample_size"] < 0.6 * settings.base_pairs
    assert last["lowest_decile_share"] > 0.25
    uniform = sim.run_contender(problem(settings), "uniform", settings, seed=0)["rounds"][-1]
    assert uniform["effective_sample_size"] == settings.base_pairs


def test_numpy_epoch_matches_train_epochs():
    settings = small(weight_decay=0.01)
    p = problem(settings)
    optim = OptimSettings(epochs=1.0, batch_size=16, lr=0.05, weight_decay=0.01, seed=7, log_every=10**9)
    head = sim._LibraryHead(p.init)
    head.fit(p.chosen, p.rejected, optim)
    np.testing.assert_allclose(sim.bt_epoch(p.init, p.chosen, p.rejected, optim), head.weights, atol=2e-6)
    # the whole loop with either trainer: the same accuracy and allocations
    library = sim.run_contender(p, "mars-conc", small(trainer="library"), seed=0)
    fast = sim.run_contender(p, "mars-conc", small(), seed=0)
    assert library["accuracy"] == pytest.approx(fast["accuracy"], abs=0.004)  # float32 vs float64: ≤ 2 pairs
    for ours, theirs in zip(fast["rounds"], library["rounds"]):
        assert ours["effective_sample_size"] == pytest.approx(theirs["effective_sample_size"], rel=0.01)


def test_a_run_is_reproducible_and_does_not_depend_on_workers():
    settings = small(strategies=["uniform", "mars-conc", "oracle-mars"], arms=["faithful", "inherited"])
    first = sim.run_grid(settings)
    assert first == sim.run_grid(settings)
    assert first == sim.run_grid(small(strategies=["uniform", "mars-conc", "oracle-mars"],
                                       arms=["faithful", "inherited"], workers=2))
    assert len(first["cells"]) == 2 * 3
    entry = next(c for c in first["cells"] if c["strategy"] == "mars-conc")
    assert len(entry["accuracy"]) == settings.seeds and entry["vs_uniform"]["low"] <= entry["vs_uniform"]["high"]
    assert len(entry["rounds"]["effective_sample_size"]) == settings.rounds


def gains(arm, epsilon, noise, names, seeds=range(8)):
    """Per-seed accuracy − uniform for each name, at the default sizes."""
    settings = sim.SimulationSettings()
    out = {name: [] for name in names}
    for seed in seeds:
        p = sim.make_problem(sim.draw(settings, seed), epsilon=epsilon, noise=noise, arm=arm, signal=settings.signal)
        base = sim.run_contender(p, "uniform", settings, seed)["accuracy"]
        for name in names:
            out[name].append(sim.run_contender(p, name, settings, seed)["accuracy"] - base)
    return {name: sim.paired_interval(values) for name, values in out.items()}


def test_faithful_labels_concentrated_mars_beats_uniform_and_none_loses():
    found = gains("faithful", 0.25, 0.25, ["mars-conc", "none"])
    assert found["mars-conc"]["mean"] > 0.002 and found["mars-conc"]["seeds_won"] >= 0.5
    assert found["none"]["high"] < 0  # fresh, correctly labelled pairs help


def test_inherited_labels_concentrated_mars_loses_to_uniform():
    found = gains("inherited", 1.0, 1.0, ["mars-conc", "oracle-mars"])
    assert found["mars-conc"]["high"] < 0
    assert found["oracle-mars"]["high"] < found["mars-conc"]["high"]


def test_paired_interval_is_a_t_interval():
    got = sim.paired_interval([1.0, 2.0, 3.0])
    assert got["mean"] == 2.0 and got["seeds_won"] == 1.0
    assert got["high"] - 2.0 == pytest.approx(4.302653 / np.sqrt(3), rel=1e-6)
    with pytest.raises(ValueError):
        sim.paired_interval([1.0])


def test_table_marks_intervals_that_exclude_zero():
    results = sim.run_grid(small(strategies=["uniform", "none", "mars"], epsilons=[0.1, 1.0]))
    text = sim.results_table(results)
    assert "### faithful labels" in text and "| 1 | 0.1 |" in text and "mars (τ=0.1 raw)" in text
    for cell in results["cells"]:
        gain = cell["vs_uniform"]
        if gain and (gain["low"] > 0 or gain["high"] < 0):
            assert f"**{100 * gain['mean']:+.1f} [" in text


def test_table_pairs_each_concentrated_contender_with_its_shuffled_twin():
    results = sim.run_grid(small(strategies=["uniform", "mars-conc", "shuffled-mars-conc"], epsilons=[0.5]))
    text = sim.results_table(results)
    assert "### Aim against concentration" in text and "| mars-conc − shuffled-mars-conc |" in text
    aimed, blind = (np.array(sim._entries(results, strategy=name)[0]["accuracy"])
                    for name in ("mars-conc", "shuffled-mars-conc"))
    gain = sim.paired_interval(aimed - blind)
    assert f"| faithful | 1 | 0.5 | {100 * gain['mean']:+.1f} [" in text.replace("**", "")
    assert "Aim against" not in sim.results_table(sim.run_grid(small(strategies=["uniform", "mars-conc"],
                                                                     epsilons=[0.5])))


def test_cli_writes_the_outputs(tmp_path, capsys):
    out = tmp_path / "sim"
    argv = ["simulate", "--dim", "8", "--base-pairs", "60", "--paraphrases", "3", "--held-out", "500", "--rounds",
            "2", "--budget", "120", "--seeds", "2", "--epsilons", "0.1,0.5", "--noises", "1", "--strategies",
            "uniform,mars-conc,oracle-mars", "--workers", "1", "--output", str(out)]
    assert main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    assert len(results["cells"]) == 2 * 2 * 3 and results["settings"]["epsilons"] == [0.1, 0.5]
    assert "epsilons:" in (out / "config.yaml").read_text()
    assert (out / "gain_vs_epsilon.png").stat().st_size > 10_000
    assert (out / "table.md").read_text() == sim.results_table(results)
    assert main(argv) == 0 and json.loads((out / "results.json").read_text()) == results


@pytest.mark.parametrize("flags, setting", [(["--seeds", "0"], "'seeds'"), (["--epsilons", "-1"], "'epsilons'"),
                                            (["--noises", "0"], "'noises'"), (["--strategies", "mars"], "uniform"),
                                            (["--arms", "paraphrased"], "'arms'")])
def test_cli_rejects_bad_settings_in_one_line(tmp_path, capsys, flags, setting):
    assert main(["simulate", *flags, "--output", str(tmp_path / "sim")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("marsrm simulate: error:") and setting in err[0]
    assert not (tmp_path / "sim").exists()
