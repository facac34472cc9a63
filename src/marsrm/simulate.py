"""A positive control: the MARS rounds on synthetic pairs whose reward is known, with a linear Bradley–Terry head.

On real data a null (MARS ≈ uniform) cannot say whether the method fails or the test could not have shown it.
Here the truth is known, so the same question has an answer:

    features   φ ∈ R^d, φ ~ N(0, I); true reward r*(y) = w*ᵀφ(y), ‖w*‖ set so that std(w*ᵀΔφ) = `signal`
    base set   N pairs (a, b); a is labelled chosen with probability σ(w*ᵀ(φ_a − φ_b) / T)   (T = `noise`)
    pool       per response, `paraphrases` perturbations φ + ε·z, z ~ N(0, I) (noise on each RESPONSE's features,
               so Δφ moves by ε·√2 per coordinate); crossed as in MARS.md: variant (i, j) = (chosen
               perturbation i, rejected perturbation j), n = paraphrases² variants per pair
    arms       faithful: each variant is labelled afresh by the same labeller, Bernoulli(σ(w*ᵀΔφ_variant / T)),
               drawn once with the pool; inherited: each variant keeps its source's observed label (a paraphrase)
    held out   `held_out` fresh pairs per seed, scored against sign(w*ᵀΔφ) (a tie counts as wrong)

Each round is `marsrm.loop.run_rounds`', step for step: rng = default_rng([seed, round]); margins on the base set;
`allocate` with the budget; `sample_variants` (West-of-N: the current model's highest-margin variants first);
one epoch on base ∪ this round's sample with `train_epochs`' semantics (a linear `ScalarHead` initialised by torch,
AdamW with a fresh optimizer every round as the loop's learner makes one, batch order seeded by seed·1000 + round),
run by `bt_epoch` in numpy or, with trainer "library", by `train_epochs` on `HeadExamples` itself; the weights
carry over; the sample is drawn afresh each round. The data come from default_rng([seed, 0]) (rounds start at 1), drawn
as standard normals and uniforms before ε and T are applied, so every cell of one seed shares them: same seed →
same data, pool noise, held-out pairs and initialisation for every strategy, arm, ε and T.

The oracle allocates by the TRUE margin w*ᵀΔφ of each base pair, signed by its observed label (negative where the
label is wrong), at the concentrated τ: the most a margin-aware allocation could know. It runs in both arms: with
faithful labels it bounds what margin awareness can gain, with inherited labels it shows what concentrating the
budget does when the labels of low-margin variants are the unreliable ones.

The shuffled contenders (`allocate`'s `shuffled-mars` and `shuffled-mars-signed`, at the concentrated τ) weight the
model's margins permuted at random across the base pairs: the same concentration as their twins (the same margin
values, so the same weights) with no margin information, which separates what concentrating the budget does from
what aiming it does.

Long because the synthetic problem, its learner and the control's table and plot are one experiment,
read top to bottom.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from marsrm import allocate as alloc
from marsrm.config import ConfigError, check_settings, setting
from marsrm.metrics import seed_interval
from marsrm.train import OptimSettings, length_grouped_batches

ARMS = ("faithful", "inherited")
# name -> (allocate() strategy, τ form, oracle): the paper's τ on raw margins, or the concentrated τ on margins
# in units of the round's std (tau_scale "std"); the oracle reads the true margins. The shuffled strategies
# permute the margins across pairs before weighting them: the same concentration without aim.
CONTENDERS = {
    "none": ("none", None, False),
    "uniform": ("uniform", None, False),
    "west-of-n": ("west-of-n", None, False),
    "mars": ("mars", "paper", False),
    "mars-signed": ("mars-signed", "paper", False),
    "mars-conc": ("mars", "concentrated", False),
    "mars-signed-conc": ("mars-signed", "concentrated", False),
    "oracle-mars": ("mars", "concentrated", True),
    "oracle-mars-signed": ("mars-signed", "concentrated", True),
    "shuffled-mars-conc": ("shuffled-mars", "concentrated", False),
    "shuffled-mars-signed-conc": ("shuffled-mars-signed", "concentrated", False),
}
BASELINE = "uniform"
TRAINERS = ("numpy", "library")


@dataclass
class SimulationSettings:
    """The synthetic problem, the loop and the grid of a `marsrm simulate` run."""

    dim: int = setting(32, "feature dimension d", ge=1)
    base_pairs: int = setting(300, "base pairs N", ge=10)
    paraphrases: int = setting(5, "perturbations per response; each pair's pool holds paraphrases² crossed variants",
                               ge=1)
    held_out: int = setting(4000, "fresh held-out pairs per seed, scored against the true reward", ge=1)
    signal: float = setting(4.0, "standard deviation of the true margin w*ᵀΔφ", gt=0)
    rounds: int = setting(5, "rounds of margins → allocation → sample → one epoch", ge=1)
    budget: int = setting(600, "synthetic pairs sampled per round B", ge=0)
    lr: float = setting(0.02, "AdamW learning rate (0.02: best for uniform on seeds 100–109, see docs/CONTROL.md)",
                        gt=0)
    batch_size: int = setting(32, "pairs per optimizer step", ge=1)
    weight_decay: float = setting(0.0, "AdamW weight decay", ge=0)
    seeds: int = setting(40, "seeds per cell, paired between strategies (at least 2)", ge=2)
    first_seed: int = setting(0, "the seeds are first_seed, first_seed + 1, …", ge=0, lt=2**32)
    epsilons: list[float] = setting([0.1, 0.25, 0.5, 1.0], "perturbation scales ε (noise added to each response's "
                                    "features)", ge=0)
    noises: list[float] = setting([0.25, 1.0, 2.0], "label temperatures T: labels ~ σ(w*ᵀΔφ / T), larger is "
                                  "noisier", gt=0)
    arms: list[str] = setting(list(ARMS), "how variants are labelled: faithful (drawn from the true reward) or "
                              "inherited (the source pair's label)", choices=list(ARMS))
    strategies: list[str] = setting(list(CONTENDERS), "strategies to run; uniform is the baseline every other is "
                                    "compared with", choices=list(CONTENDERS))
    paper_tau: float = setting(0.1, "mars τ in the paper's form (raw margins)", ge=0)
    paper_tau_signed: float = setting(0.5, "mars-signed τ in the paper's form (raw margins)", ge=0)
    tau: float = setting(3.0, "mars τ on margins in units of the round's std (the concentrated form)", ge=0)
    tau_signed: float = setting(1.5, "mars-signed τ on margins in units of the round's std (the concentrated form)",
                                ge=0)
    trainer: str = setting("numpy", "numpy: `bt_epoch`, train_epochs' semantics for a linear head in numpy (fast); "
                           "library: marsrm.train.train_epochs itself (about 100× slower here)",
                           choices=list(TRAINERS))
    workers: int = setting(2, "processes sharing the seeds (results do not depend on it)", ge=1)

    def validate(self) -> None:
        check_settings(self)
        for name in ("epsilons", "noises", "arms", "strategies"):
            if not getattr(self, name):
                raise ConfigError(f"setting '{name}': give at least one value")
        if BASELINE not in self.strategies:
            raise ConfigError(f"setting 'strategies': include '{BASELINE}', the baseline of every comparison")

    def strategy_settings(self, name: str) -> dict:
        """The `allocate` settings of contender ``name`` (its τ and τ form)."""
        strategy, form, _ = CONTENDERS[name]
        if form is None:
            return {}
        signed = alloc.get_strategy(strategy).signed
        if form == "paper":
            return {"tau": self.paper_tau_signed if signed else self.paper_tau, "tau_scale": "raw"}
        return {"tau": self.tau_signed if signed else self.tau, "tau_scale": "std"}


# ---------------------------------------------------------------------------------------------------------
# The synthetic problem


@dataclass
class Draws:
    """One seed's random numbers, before ε and T are applied (shared by every cell of the seed)."""

    direction: np.ndarray   # (d,), unit
    a: np.ndarray           # (N, d) features of each pair's first response
    b: np.ndarray           # (N, d) features of its second response
    label_u: np.ndarray     # (N,) uniforms for the base labels
    noise_a: np.ndarray     # (N, p, d) perturbations of a
    noise_b: np.ndarray     # (N, p, d) perturbations of b
    variant_u: np.ndarray   # (N, p, p) uniforms for the faithful variant labels
    held_out: np.ndarray    # (H, d) Δφ of the held-out pairs
    init: np.ndarray        # (d,) the head's initial weights (ScalarHead's own initialisation, torch-seeded)


def draw(settings: SimulationSettings, seed: int) -> Draws:
    """The random numbers of seed ``seed``: numpy default_rng([seed, 0]), and torch.manual_seed(seed) for the head."""
    import torch

    from marsrm.model import ScalarHead

    rng = np.random.default_rng([seed, 0])
    d, n, p = settings.dim, settings.base_pairs, settings.paraphrases
    direction = rng.standard_normal(d)
    direction /= np.linalg.norm(direction)
    a, b = rng.standard_normal((n, d)), rng.standard_normal((n, d))
    label_u = rng.random(n)
    noise_a, noise_b = rng.standard_normal((n, p, d)), rng.standard_normal((n, p, d))
    variant_u = rng.random((n, p, p))
    held_out = rng.standard_normal((settings.held_out, d)) - rng.standard_normal((settings.held_out, d))
    torch.manual_seed(seed)
    init = ScalarHead(d).linear.weight.detach().double().numpy()[0].copy()
    return Draws(direction, a, b, label_u, noise_a, noise_b, variant_u, held_out, init)


@dataclass
class Problem:
    """One cell's data for one seed: the base pairs as labelled, the pool as labelled by the arm, the truth."""

    true_weight: np.ndarray     # (d,) w*
    chosen: np.ndarray          # (N, d) φ of each base pair's observed chosen response
    rejected: np.ndarray        # (N, d)
    pool_chosen: np.ndarray     # (N, n, d) each variant's chosen side, as its label says
    pool_rejected: np.ndarray   # (N, n, d)
    held_out: np.ndarray        # (H, d)
    init: np.ndarray            # (d,)

    @property
    def true_margins(self) -> np.ndarray:
        """w*ᵀΔφ of each base pair in its observed orientation, shape (N,): negative where the label is wrong."""
        return (self.chosen - self.rejected) @ self.true_weight

    @property
    def pool_sizes(self) -> np.ndarray:
        return np.full(len(self.chosen), self.pool_chosen.shape[1], dtype=np.int64)


def make_problem(draws: Draws, *, epsilon: float, noise: float, arm: str, signal: float) -> Problem:
    """Apply ε, the label temperature T = ``noise`` and the arm's labelling rule to one seed's draws."""
    if arm not in ARMS:
        raise ValueError(f"arm must be one of {', '.join(ARMS)}; got {arm!r}")
    w = draws.direction * (signal / math.sqrt(2))  # Δφ ~ N(0, 2I), so std(w*ᵀΔφ) = signal
    a_wins = draws.label_u < _sigmoid((draws.a - draws.b) @ w / noise)
    chosen = np.where(a_wins[:, None], draws.a, draws.b)
    rejected = np.where(a_wins[:, None], draws.b, draws.a)
    variants_a = draws.a[:, None] + epsilon * draws.noise_a   # (N, p, d)
    variants_b = draws.b[:, None] + epsilon * draws.noise_b
    p = variants_a.shape[1]
    # variant (i, j) crosses perturbation i of one response with perturbation j of the other, pair-major
    cross_a = np.repeat(variants_a, p, axis=1)    # (N, p², d): index i·p + j -> a_i
    cross_b = np.tile(variants_b, (1, p, 1))      # (N, p², d): index i·p + j -> b_j
    if arm == "inherited":
        a_chosen = np.broadcast_to(a_wins[:, None], cross_a.shape[:2])
    else:
        margin = np.einsum("nkd,d->nk", cross_a - cross_b, w)
        a_chosen = draws.variant_u.reshape(len(a_wins), -1) < _sigmoid(margin / noise)
    pool_chosen = np.where(a_chosen[..., None], cross_a, cross_b)
    pool_rejected = np.where(a_chosen[..., None], cross_b, cross_a)
    return Problem(w, chosen, rejected, pool_chosen, pool_rejected, draws.held_out, draws.init)


def _sigmoid(x):
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # = 1 / (1 + e^-x), without overflow


# ---------------------------------------------------------------------------------------------------------
# One strategy's rounds


def run_contender(problem: Problem, name: str, settings: SimulationSettings, seed: int, accelerator=None) -> dict:
    """The rounds of contender ``name`` on ``problem``; returns its held-out accuracy and per-round records.

    Each round record: synthetic_pairs (the sample's size: the budget, or 0), effective_sample_size,
    lowest_decile_share (of the budget, on the smallest |margin| used to allocate; for a shuffled contender, the
    model's margins, which it did not aim at), lowest_signed_decile_share (the smallest signed margin),
    mean_abs_margin (the model's, on the base set) and sample_label_error (share of the
    round's synthetic pairs whose label disagrees with the true reward).
    accelerator: reused by the "library" trainer (one is made if None).
    """
    strategy, _, oracle = CONTENDERS[name]
    record = alloc.get_strategy(strategy)
    strategy_settings = settings.strategy_settings(name)
    learner = _LibraryHead(problem.init, accelerator) if settings.trainer == "library" else _NumpyHead(problem.init)
    base_delta = problem.chosen - problem.rejected
    pool_delta = problem.pool_chosen - problem.pool_rejected
    sizes = problem.pool_sizes
    rounds = []
    for round_ in range(1, settings.rounds + 1):
        rng = np.random.default_rng([seed, round_])
        theta = learner.weights
        model_margins = base_delta @ theta                                                   # a. margins
        margins = problem.true_margins if oracle else model_margins
        budget = settings.budget if record.augments else 0
        counts = alloc.allocate(strategy, margins, budget, rng, **strategy_settings)        # b, c
        ranked = (pool_delta @ theta).ravel() if record.selects_by_variant_margin and counts.any() else None
        pair_index, variant_index = alloc.sample_variants(                                  # d. sample
            counts, sizes, rng, variant_margins=ranked,
            order=record.sampling_order if ranked is not None else "random")
        sample_chosen = problem.pool_chosen[pair_index, variant_index]
        sample_rejected = problem.pool_rejected[pair_index, variant_index]
        optim = OptimSettings(epochs=1.0, batch_size=settings.batch_size, lr=settings.lr,
                              weight_decay=settings.weight_decay, seed=seed * 1000 + round_, log_every=10**9)
        learner.fit(np.concatenate([problem.chosen, sample_chosen]),                         # e. train
                    np.concatenate([problem.rejected, sample_rejected]), optim)
        sample_margins = (sample_chosen - sample_rejected) @ problem.true_weight
        rounds.append({
            "synthetic_pairs": len(pair_index),
            "effective_sample_size": alloc.effective_sample_size(counts),
            "lowest_decile_share": alloc.lowest_margin_decile_share(margins, counts),
            "lowest_signed_decile_share": alloc.lowest_margin_decile_share(margins, counts, signed=True),
            "mean_abs_margin": float(np.abs(model_margins).mean()),
            "sample_label_error": float((sample_margins < 0).mean()) if len(sample_margins) else 0.0,
        })
    held_out = problem.held_out
    accuracy = float(((held_out @ learner.weights) * (held_out @ problem.true_weight) > 0).mean())
    return {"accuracy": accuracy, "base_label_error": float((problem.true_margins < 0).mean()), "rounds": rounds}


# ---------------------------------------------------------------------------------------------------------
# The learner: r(y) = θᵀφ(y), one Bradley–Terry epoch per round


def bt_epoch(theta: np.ndarray, chosen: np.ndarray, rejected: np.ndarray, optim: OptimSettings) -> np.ndarray:
    """One epoch of `marsrm.train.train_epochs` for a linear, bias-free head, in numpy; returns the new θ.

    theta: (d,) float64; chosen, rejected: (n, d) features. The same semantics step for step: batches from
    `length_grouped_batches` with default_rng(optim.seed), mean BT loss per batch, gradient clipping to
    optim.max_grad_norm (torch's 1e-6 guard), AdamW (β = 0.9, 0.999, ε = 1e-8, decoupled weight decay) with
    fresh moments, linear decay to 0 over the epoch. Why it exists: train_epochs spends about 1.4 ms on a step
    of this 32-weight head (Accelerate and optimizer bookkeeping), which made the default grid take about half
    an hour on 2 cores; this takes microseconds, and tests/test_simulate.py checks both give the same weights.
    """
    if optim.epochs != 1.0 or optim.grad_accum != 1 or optim.warmup_ratio or optim.scheduler != "linear":
        raise ValueError("bt_epoch implements one epoch, no accumulation, no warm-up, linear decay")
    delta = np.asarray(chosen, dtype=np.float64) - np.asarray(rejected, dtype=np.float64)
    batches = length_grouped_batches(np.ones(len(delta), dtype=np.int64), optim.batch_size,
                                     np.random.default_rng(optim.seed))
    theta = np.array(theta, dtype=np.float64)
    m, v = np.zeros_like(theta), np.zeros_like(theta)
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    total = len(batches)
    for step, index in enumerate(batches):
        x = delta[index]
        grad = -(_sigmoid(-(x @ theta)) @ x) / len(index)  # d/dθ of mean −log σ(θᵀΔφ)
        if optim.max_grad_norm > 0:
            grad = grad * min(1.0, optim.max_grad_norm / (float(np.linalg.norm(grad)) + 1e-6))
        lr = optim.lr * (total - step) / total
        theta = theta * (1 - lr * optim.weight_decay)
        m = beta1 * m + (1 - beta1) * grad
        v = beta2 * v + (1 - beta2) * grad * grad
        t = step + 1
        theta = theta - (lr / (1 - beta1**t)) * m / (np.sqrt(v) / math.sqrt(1 - beta2**t) + eps)
    return theta


class _NumpyHead:
    """θ in float64, trained by `bt_epoch`."""

    def __init__(self, init: np.ndarray):
        self.weights = np.array(init, dtype=np.float64)

    def fit(self, chosen, rejected, optim: OptimSettings) -> None:
        self.weights = bt_epoch(self.weights, chosen, rejected, optim)


class _LibraryHead:
    """A linear `ScalarHead` trained by `marsrm.train.train_epochs` on `HeadExamples`, as `marsrm run` trains one."""

    def __init__(self, init: np.ndarray, accelerator=None):
        import torch

        from marsrm.model import ScalarHead
        from marsrm.train import make_accelerator

        self.accelerator = accelerator or make_accelerator("no", cpu=True)
        self.head = ScalarHead(len(init))
        with torch.no_grad():
            self.head.linear.weight.copy_(torch.as_tensor(np.asarray(init)[None], dtype=torch.float32))

    @property
    def weights(self) -> np.ndarray:
        return self.head.linear.weight.detach().double().numpy()[0]

    def fit(self, chosen, rejected, optim: OptimSettings) -> None:
        import torch

        from marsrm.train import HeadExamples, train_epochs

        torch.manual_seed(optim.seed)
        train_epochs(self.head, HeadExamples(chosen, rejected), optim, accelerator=self.accelerator, progress=False)


# ---------------------------------------------------------------------------------------------------------
# The grid


def cells(settings: SimulationSettings) -> list[tuple[str, float, float]]:
    """Every (arm, ε, noise) of the grid, in the order results.json lists them."""
    return [(arm, float(eps), float(noise)) for arm in settings.arms for noise in settings.noises
            for eps in settings.epsilons]


def run_seed(settings: SimulationSettings, seed: int) -> dict:
    """Every cell and contender for one seed: {(arm, ε, noise, name): run_contender's dict}.

    A strategy that does not augment never reads the pool, so it runs once per noise level and is shared.
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a 32-weight head: threads cost more than they give
    try:
        accelerator = None
        if settings.trainer == "library":
            from marsrm.train import make_accelerator

            accelerator = make_accelerator("no", cpu=True)
        draws = draw(settings, seed)
        runs, shared = {}, {}
        for arm, eps, noise in cells(settings):
            problem = make_problem(draws, epsilon=eps, noise=noise, arm=arm, signal=settings.signal)
            for name in settings.strategies:
                if not alloc.get_strategy(CONTENDERS[name][0]).augments:
                    if (name, noise) not in shared:
                        shared[name, noise] = run_contender(problem, name, settings, seed, accelerator)
                    runs[arm, eps, noise, name] = shared[name, noise]
                else:
                    runs[arm, eps, noise, name] = run_contender(problem, name, settings, seed, accelerator)
        if accelerator is not None:
            accelerator.free_memory()  # prepare() keeps every model and optimizer it saw
        return runs
    finally:
        torch.set_num_threads(threads)


def run_grid(settings: SimulationSettings, echo=None) -> dict:
    """Run every seed (in ``settings.workers`` processes) and summarise; returns results.json's dict."""
    settings.validate()
    seeds = list(range(settings.first_seed, settings.first_seed + settings.seeds))
    if echo:
        echo(f"simulate: {len(seeds)} seeds × {len(cells(settings))} cells × {len(settings.strategies)} strategies, "
             f"{settings.workers} worker(s)")
    if settings.workers > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        context = multiprocessing.get_context("spawn")  # torch is not fork-safe once it has run
        with ProcessPoolExecutor(min(settings.workers, len(seeds)), mp_context=context) as pool:
            per_seed = list(pool.map(run_seed, [settings] * len(seeds), seeds))
    else:
        per_seed = [run_seed(settings, seed) for seed in seeds]
    return summarise(settings, per_seed)


def paired_interval(differences, level: float = 0.95) -> dict:
    """Mean of per-seed paired differences with a Student-t interval over seeds; shape (k,), k ≥ 2.

    Returns {"mean", "low", "high", "seeds_won"}: seeds_won is the share of seeds with a difference > 0.
    """
    d = np.asarray(differences, dtype=np.float64)
    if d.ndim != 1 or d.size < 2:
        raise ValueError(f"differences: need a 1-D array of at least 2 seeds, got shape {d.shape}")
    interval = seed_interval(d, level)
    return {"mean": interval["mean"], "low": interval["low"], "high": interval["high"],
            "seeds_won": float((d > 0).mean())}


def summarise(settings: SimulationSettings, per_seed: list[dict]) -> dict:
    """results.json: the settings and one entry per (arm, ε, noise, strategy) with per-seed accuracies, the mean,
    the paired difference against uniform with its 95% t-interval, and per-round allocation statistics (means
    over seeds)."""
    entries = []
    for arm, eps, noise in cells(settings):
        baseline = np.array([runs[arm, eps, noise, BASELINE]["accuracy"] for runs in per_seed])
        for name in settings.strategies:
            strategy, form, oracle = CONTENDERS[name]
            seeds = [runs[arm, eps, noise, name] for runs in per_seed]
            accuracy = np.array([s["accuracy"] for s in seeds])
            rounds = {key: [round(float(np.mean([s["rounds"][r][key] for s in seeds])), 4)
                            for r in range(settings.rounds)] for key in seeds[0]["rounds"][0]}
            gain = paired_interval(accuracy - baseline) if name != BASELINE else None
            entries.append({
                "arm": arm, "epsilon": eps, "noise": noise, "strategy": name, "allocate": strategy,
                "tau_form": form, "margins": "true" if oracle else "model", **settings.strategy_settings(name),
                "accuracy": accuracy.tolist(), "mean": round(float(accuracy.mean()), 6),
                "base_label_error": round(float(np.mean([s["base_label_error"] for s in seeds])), 4),
                "vs_uniform": gain and {k: round(v, 6) for k, v in gain.items()},
                "rounds": rounds,
            })
    return {"settings": _settings_fields(settings),
            "interval": "paired Student-t 95% interval over seeds of (strategy − uniform) held-out accuracy",
            "cells": entries}


def _settings_fields(settings) -> dict:
    """The settings that decide the numbers (not `workers`, which only shares the work)."""
    return {f.name: getattr(settings, f.name) for f in dataclasses.fields(SimulationSettings) if f.name != "workers"}


# ---------------------------------------------------------------------------------------------------------
# Outputs


def _entries(results: dict, **match) -> list[dict]:
    return [e for e in results["cells"] if all(e[k] == v for k, v in match.items())]


def _label(entry: dict) -> str:
    """A strategy's name with its τ: `mars (τ=0.1 raw)`, `oracle-mars (τ=3 std)`."""
    if entry.get("tau") is None:
        return entry["strategy"]
    return f"{entry['strategy']} (τ={entry['tau']:g} {entry['tau_scale']})"


def _points(value: float) -> str:
    return f"{100 * value:+.1f}"


def results_table(results: dict) -> str:
    """results.json as markdown: accuracy gains over uniform per cell, concentration per round, label errors."""
    settings = results["settings"]
    names = [n for n in settings["strategies"] if n != BASELINE]
    first = {n: _entries(results, strategy=n)[0] for n in settings["strategies"]}
    lines = [f"Held-out accuracy against the true reward; {settings['seeds']} seeds per cell. Each strategy column: "
             "mean paired difference against `uniform` in accuracy points, with its paired 95% t-interval over "
             "seeds in brackets; **bold** where the interval excludes 0.", ""]
    for arm in settings["arms"]:
        lines += [f"### {arm} labels", "",
                  "| T | ε | uniform | " + " | ".join(_label(first[n]) for n in names) + " |",
                  "|---|---|---|" + "---|" * len(names)]
        for noise in settings["noises"]:
            for eps in settings["epsilons"]:
                baseline = _entries(results, arm=arm, epsilon=eps, noise=noise, strategy=BASELINE)[0]
                row = [f"{noise:g}", f"{eps:g}", f"{baseline['mean']:.4f}"]
                for name in names:
                    gain = _entries(results, arm=arm, epsilon=eps, noise=noise, strategy=name)[0]["vs_uniform"]
                    text = f"{_points(gain['mean'])} [{_points(gain['low'])}, {_points(gain['high'])}]"
                    row.append(f"**{text}**" if gain["low"] > 0 or gain["high"] < 0 else text)
                lines.append("| " + " | ".join(row) + " |")
        lines.append("")

    twins = [(aimed, control) for control in settings["strategies"] for aimed in settings["strategies"]
             if CONTENDERS[aimed][:2] == (alloc.get_strategy(CONTENDERS[control][0]).control_for,
                                          CONTENDERS[control][1]) and not CONTENDERS[aimed][2]]
    if twins:
        lines += ["### Aim against concentration", "",
                  "Each concentrated contender against its shuffled twin (the same concentration, allocated by the "
                  "model's margins permuted across pairs): mean paired difference in accuracy points with its 95% "
                  "t-interval over seeds. Above 0, aiming the budget at the model's low margins is what gains; "
                  "below 0, what loses.", "",
                  "| arm | T | ε | " + " | ".join(f"{aimed} − {blind}" for aimed, blind in twins) + " |",
                  "|---|---|---|" + "---|" * len(twins)]
        for arm in settings["arms"]:
            for noise in settings["noises"]:
                for eps in settings["epsilons"]:
                    row = [arm, f"{noise:g}", f"{eps:g}"]
                    for aimed, blind in twins:
                        accuracy = [np.array(_entries(results, arm=arm, epsilon=eps, noise=noise,
                                                      strategy=name)[0]["accuracy"]) for name in (aimed, blind)]
                        gain = paired_interval(accuracy[0] - accuracy[1])
                        text = f"{_points(gain['mean'])} [{_points(gain['low'])}, {_points(gain['high'])}]"
                        row.append(f"**{text}**" if gain["low"] > 0 or gain["high"] < 0 else text)
                    lines.append("| " + " | ".join(row) + " |")
        lines.append("")

    concentrating = [n for n in settings["strategies"] if CONTENDERS[n][1] is not None]
    lines += ["### How concentrated the allocation was", "",
              "Per round: effective sample size (Σb)²/Σb² of the budget over the "
              f"{settings['base_pairs']} base pairs · share of the budget given to the lowest-margin decile "
              "(|margin| for mars, signed margin for mars-signed; the margins the strategy allocated by, or for the "
              "shuffled contenders the model's margins they were blind to). Uniform "
              f"gives {settings['base_pairs']} · 0.10. Means over seeds and over ε.", "",
              "| arm | T | strategy | " + " | ".join(f"round {r + 1}" for r in range(settings["rounds"])) + " |",
              "|---|---|---|" + "---|" * settings["rounds"]]
    for arm in settings["arms"]:
        for noise in settings["noises"]:
            for name in concentrating:
                found = _entries(results, arm=arm, noise=noise, strategy=name)
                signed = alloc.get_strategy(CONTENDERS[name][0]).signed
                share = "lowest_signed_decile_share" if signed else "lowest_decile_share"
                cells_ = [f"{np.mean([e['rounds']['effective_sample_size'][r] for e in found]):.0f} · "
                          f"{np.mean([e['rounds'][share][r] for e in found]):.2f}" for r in range(settings["rounds"])]
                lines.append(f"| {arm} | {noise:g} | {_label(found[0])} | " + " | ".join(cells_) + " |")
    lines.append("")

    augmenting = [n for n in settings["strategies"] if CONTENDERS[n][0] != "none"]
    lines += ["### Wrong labels among the synthetic pairs", "",
              "Share of each round's synthetic pairs whose label disagrees with the true reward (mean over rounds and "
              "seeds). The base pairs' own share is in the last column.", "",
              "| arm | T | ε | " + " | ".join(_label(first[n]) for n in augmenting) + " | base pairs |",
              "|---|---|---|" + "---|" * (len(augmenting) + 1)]
    for arm in settings["arms"]:
        for noise in settings["noises"]:
            for eps in settings["epsilons"]:
                row = [arm, f"{noise:g}", f"{eps:g}"]
                for name in augmenting:
                    e = _entries(results, arm=arm, epsilon=eps, noise=noise, strategy=name)[0]
                    row.append(f"{np.mean(e['rounds']['sample_label_error']):.3f}")
                row.append(f"{_entries(results, arm=arm, epsilon=eps, noise=noise)[0]['base_label_error']:.3f}")
                lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def plot_gain(results: dict, path) -> None:
    """gain_vs_epsilon.png: accuracy gain over uniform (paired 95% interval) against ε; one panel per arm × noise,
    one line per strategy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings = results["settings"]
    arms, noises = settings["arms"], settings["noises"]
    names = [n for n in settings["strategies"] if n != BASELINE]
    epsilons = np.array(settings["epsilons"], dtype=float)
    fig, axes = plt.subplots(len(arms), len(noises), figsize=(4.6 * len(noises), 4.4 * len(arms) + 0.9),
                             squeeze=False, sharex=True)
    colors = plt.get_cmap("tab10")
    spread = np.linspace(-1, 1, len(names)) * 0.035 * (len(epsilons) > 1)
    for row, arm in enumerate(arms):
        for col, noise in enumerate(noises):
            ax = axes[row][col]
            ax.axhline(0, color="black", lw=0.8)
            for k, name in enumerate(names):
                found = [_entries(results, arm=arm, epsilon=float(e), noise=noise, strategy=name)[0] for e in epsilons]
                gain = np.array([[f["vs_uniform"][key] for key in ("mean", "low", "high")] for f in found]) * 100
                x = np.arange(len(epsilons)) + spread[k] * len(names)
                ax.errorbar(x, gain[:, 0], yerr=[gain[:, 0] - gain[:, 1], gain[:, 2] - gain[:, 0]], marker="o",
                            ms=3.5, lw=1.2, capsize=2, color=colors(k % 10),
                            ls="--" if CONTENDERS[name][2] else ":" if name.startswith("shuffled-") else "-", label=_label(found[0]))
            ax.set_title(f"{arm} labels, T = {noise:g} ({100 * found[0]['base_label_error']:.0f}% base labels wrong)",
                         fontsize=9.5)
            ax.set_xticks(np.arange(len(epsilons)), [f"{e:g}" for e in epsilons])
            ax.grid(alpha=0.3)
            if row == len(arms) - 1:
                ax.set_xlabel("perturbation scale ε")
            if col == 0:
                ax.set_ylabel("accuracy − uniform (points)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(4, len(names)), fontsize=9, frameon=False)
    fig.suptitle(f"Gain over uniform augmentation, {settings['seeds']} paired seeds (bars: paired 95% t-interval)",
                 fontsize=11)
    fig.tight_layout(rect=(0, 0.65 / (4.4 * len(arms) + 0.9), 1, 0.97))
    from marsrm.io import atomic_write

    atomic_write(Path(path), lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)


def results_json(results: dict) -> str:
    """results.json's text: the settings, then one line per cell (small, and diffs line by line)."""
    import json

    head = {k: v for k, v in results.items() if k != "cells"}
    cells_ = ",\n".join(json.dumps(c, ensure_ascii=False) for c in results["cells"])
    return json.dumps(head, ensure_ascii=False)[:-1] + ', "cells": [\n' + cells_ + "\n]}\n"
