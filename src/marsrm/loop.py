"""The MARS self-refinement rounds (MARS.md, "The algorithm"), with checkpoints and resume.

Each round t = 1..T, with the model as the previous round left it:
    a. margins    Δ_i = r(x_i, y_i+) − r(x_i, y_i−) on the base set
    b. allocation q = strategy(Δ)                 (mars: softmax(−τ|Δ|), mars-signed: softmax(−τΔ), …)
    c. budget     b_i = largest-remainder rounding of B·q_i, Σ b_i = B
    d. sample     b_i variants from pair i's pool (without replacement while b_i allows)
    e. train      `epochs` epochs on base ∪ sample; the weights carry over to the next round
A fresh sample is drawn every round unless `accumulate` is set. Every round's randomness comes from
(seed, round) alone, so a run resumed from a round's checkpoint ends exactly where an uninterrupted
run would.

Here: the rounds' settings (`LoopSettings`), the pool as the rounds see it, and `run_rounds`, which writes
each round's files and commits it with a checkpoint. The command (`marsrm.commands.run`) opens the run
directory, finds where a killed run stopped, and evaluates and saves the final model.

Long because the in-memory and the streamed pool are two views of one thing; each step of a round is a
short function of its own.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from marsrm import allocate as alloc
from marsrm import metrics
from marsrm.config import ConfigError, setting
from marsrm.io import atomic_write, atomic_write_dir, atomic_write_json
from marsrm.pipeline import evaluate_scores, flat_values
from marsrm.train import OptimSettings


@dataclass
class LoopSettings:
    """The rounds' own settings (MARS.md's parameters): strategy, rounds T, budget B, τ, and the pool they sample."""

    pool: str | None = setting(None, "pool directory built by `marsrm augment` for the same data (not needed "
                               "for --strategy none or adaboost)")
    strategy: str = setting("mars", "allocation strategy", choices=list(alloc.STRATEGIES))
    rounds: int = setting(5, "self-refinement rounds T", ge=1)
    budget: int = setting(2000, "synthetic pairs sampled per round B", ge=0)
    tau: float | None = setting(None, "temperature τ (mars default 0.1, mars-signed default 0.5)", ge=0)
    tau_scale: str = setting("raw", "what τ multiplies: raw margins (the paper's form; their scale depends on "
                             "backbone, head and round) or std: margins in units of the round's margin standard "
                             "deviation, so τ means the same concentration on every model",
                             choices=list(alloc.TAU_SCALES))
    beta: float = setting(1.0, "adaboost: weight ∝ exp(−β·margin)", ge=0)
    accumulate: bool = setting(False, "keep every round's synthetic sample instead of drawing afresh")
    base_epochs: float = setting(0.0, "epochs on the base pairs alone before round 1, so the first margins come from "
                                 "a trained model instead of an untrained one", ge=0)
    pool_memory: str = setting("2GiB", "memory the pool may take loaded whole (e.g. 500MB, 2GiB); a pool estimated "
                               "larger is read from disk as rounds sample it, with the same results")
    round_resamples: int = setting(200, "bootstrap resamples for the per-round intervals", ge=1)

    @property
    def strategy_record(self) -> alloc.Strategy:
        return alloc.STRATEGIES[self.strategy]

    def strategy_settings(self) -> dict:
        """The keywords `allocate.allocate` takes for this strategy (τ only when given: else its default)."""
        return alloc.strategy_settings(self.strategy, tau=self.tau, tau_scale=self.tau_scale, beta=self.beta)

    def needs_pool(self) -> bool:
        return self.strategy_record.augments and self.budget > 0

_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_size(text, name: str) -> int:
    """Bytes in a size such as "2GiB", "500 MB" or "1048576" (kB, MB, GB: powers of 1000; KiB, MiB, GiB: of 1024)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-z]*)\s*", str(text), flags=re.IGNORECASE)
    if not match or match.group(2).lower() not in _UNITS:
        raise ConfigError(f"setting '{name}': {text!r} is not a size; write bytes with an optional unit, e.g. 2GiB, "
                          "500MB or 0 (always read the pool from disk)")
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


def format_size(size: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} TB"


# ---------------------------------------------------------------------------------------------
# The pool as the loop sees it
# ---------------------------------------------------------------------------------------------

# Variants per `chunks()` list: what one margins call embeds or scores at once (both pools cut the same lists, so
# margins computed chunk by chunk do not depend on which pool the loop holds).
VARIANT_CHUNK = 4096


def _chunked(variant_lists, size: int):
    """The variants of `variant_lists` (one list per base pair, in order) cut into lists of `size` (the last shorter)."""
    chunk = []
    for variants in variant_lists:
        chunk.extend(variants)
        while len(chunk) >= size:
            yield chunk[:size]
            chunk = chunk[size:]
    if chunk:
        yield chunk


class BasePool:
    """Each base pair's usable variants, in memory, flattened pair-major for `allocate.sample_variants`.

    sizes: int array, variants per base pair; source_hashes: the `source_hash` each pair's variants carry (None
    when it has none); take(pair_index, variant_index) -> the variants; chunks() -> the flat list in pieces.
    """

    def __init__(self, base_pairs, variants_of):
        self.variants = [list(variants_of(pair.id)) for pair in base_pairs]
        self.sizes = np.array([len(v) for v in self.variants], dtype=np.int64)
        self.source_hashes = [v[0].meta.get("source_hash") if v else None for v in self.variants]

    @classmethod
    def empty(cls, base_pairs) -> "BasePool":
        return cls(base_pairs, lambda _id: [])

    def flat(self) -> list:
        return [v for variants in self.variants for v in variants]

    def chunks(self, size: int | None = None):
        return _chunked(self.variants, size or VARIANT_CHUNK)

    def take(self, pair_index: np.ndarray, variant_index: np.ndarray) -> list:
        return [self.variants[i][j] for i, j in zip(pair_index.tolist(), variant_index.tolist())]


class StreamedBasePool:
    """The same variants as `BasePool`, read from the pool's part files when a round needs them.

    Holds an index per base pair (part file, byte offset of its record, variants kept), made by one streaming pass
    over the part files; `take` parses only the records of the sampled pairs, `chunks` streams every record.
    Memory: about 100 bytes per base pair, whatever the pool's size.
    """

    def __init__(self, directory, base_pairs):
        from marsrm.pool.build import read_manifest, scan_records

        self.directory = Path(directory)
        manifest = read_manifest(self.directory)
        self.paths = [self.directory / shard for shard in manifest["shards"]]
        position = {pair.id: k for k, pair in enumerate(base_pairs)}
        self.shard = np.full(len(base_pairs), -1, dtype=np.int32)
        self.offset = np.zeros(len(base_pairs), dtype=np.int64)
        self.sizes = np.zeros(len(base_pairs), dtype=np.int64)
        self.source_hashes: list[str | None] = [None] * len(base_pairs)
        for shard, offset, record in scan_records(self.directory, manifest):
            k = position.get(record["pair"]["id"])
            if k is not None:  # a later record for the same id replaces an earlier one, as in `open_pool`
                self.shard[k], self.offset[k], self.sizes[k] = shard, offset, len(record["variants"])
                self.source_hashes[k] = record["source_hash"] if record["variants"] else None

    def _records(self, indices):
        """(base index, parsed record) for each of `indices` that the pool holds, in the order given."""
        with contextlib.ExitStack() as files:
            handles = {}
            for k in indices:
                shard = int(self.shard[k])
                if shard < 0:
                    continue
                if shard not in handles:
                    handles[shard] = files.enter_context(open(self.paths[shard], "rb"))
                handles[shard].seek(int(self.offset[k]))
                yield k, json.loads(handles[shard].readline())

    def chunks(self, size: int | None = None):
        from marsrm.pool.build import make_variant, pair_from_dict

        def variant_lists():
            for _, record in self._records(np.flatnonzero(self.sizes).tolist()):
                pair = pair_from_dict(record["pair"], record.get("refined"))
                yield [make_variant(pair, record, triple) for triple in record["variants"]]

        return _chunked(variant_lists(), size or VARIANT_CHUNK)

    def flat(self) -> list:
        """Every variant in one list (in memory: what the budget was meant to avoid; the loop uses `chunks`)."""
        return [v for chunk in self.chunks() for v in chunk]

    def take(self, pair_index: np.ndarray, variant_index: np.ndarray) -> list:
        from marsrm.pool.build import make_variant, pair_from_dict

        pair_index, variant_index = np.asarray(pair_index).tolist(), np.asarray(variant_index).tolist()
        wanted: dict[int, list[int]] = {}
        for position, k in enumerate(pair_index):
            wanted.setdefault(k, []).append(position)
        for k in wanted:
            if not 0 <= k < len(self.sizes) or self.sizes[k] == 0:
                raise IndexError(f"base pair {k} has no variants in the pool at {self.directory}")
        taken = [None] * len(pair_index)
        # Records in file order (sequential reads); a variant sampled twice is one object, as in `BasePool`.
        order = sorted(wanted, key=lambda k: (int(self.shard[k]), int(self.offset[k])))
        for k, record in self._records(order):
            pair, made = pair_from_dict(record["pair"], record.get("refined")), {}
            for position in wanted[k]:
                j = variant_index[position]
                if j not in made:
                    made[j] = make_variant(pair, record, record["variants"][j])
                taken[position] = made[j]
        return taken


def variant_margins(learner, pool) -> np.ndarray:
    """Margins of every variant in the pool's flat order, computed `VARIANT_CHUNK` variants at a time."""
    margins = [learner.margins(chunk) for chunk in pool.chunks()]
    return np.concatenate(margins) if margins else np.zeros(0)


def open_base_pool(config: LoopSettings, base_pairs, pool=None, echo=None):
    """The pool restricted to this split's base pairs; refuses a pool built for other pairs.

    pool: any object with `variants(pair_id) -> list[PreferencePair]`, held in memory; default: the directory
    `config.pool`, loaded whole (`BasePool`) when its estimated size fits `config.pool_memory`, else indexed and
    read from disk as needed (`StreamedBasePool`). echo: told which, and why.
    """
    if pool is None and not config.pool:
        return BasePool.empty(base_pairs)
    from marsrm.pool.build import source_hash

    echo = echo or (lambda *_: None)
    if pool is not None:
        base = BasePool(base_pairs, pool.variants)
    else:
        from marsrm.pool.build import estimated_memory, open_pool, read_manifest

        estimate = estimated_memory(config.pool, read_manifest(config.pool))
        sizes = (f"estimated {format_size(estimate['bytes'])} loaded whole ({format_size(estimate['file_bytes'])} "
                 f"of part files, {estimate['variants']} variants)")
        if estimate["bytes"] <= parse_size(config.pool_memory, "pool_memory"):
            echo(f"pool: {sizes}, within pool_memory {config.pool_memory}: loading it into memory")
            base = BasePool(base_pairs, open_pool(config.pool).variants)
        else:
            echo(f"pool: {sizes}, over pool_memory {config.pool_memory}: reading variants from disk as "
                 "rounds sample them")
            base = StreamedBasePool(config.pool, base_pairs)
    covered = int((base.sizes > 0).sum())
    if covered == 0:
        raise ConfigError(f"setting 'pool': {config.pool} holds no variants for any of the {len(base_pairs)} base "
                          f"pairs (e.g. {base_pairs[0].id}); it was built for other pairs — run `marsrm augment` "
                          "with the same --data, --train-size and --seed")
    for pair, hashed in zip(base_pairs, base.source_hashes):
        if hashed is not None and hashed != source_hash(pair):
            raise ConfigError(f"setting 'pool': {config.pool} was built from a different text for pair "
                              f"{pair.id}; rebuild it for this data")
    return base


def flip(pair):
    """The same pair with chosen and rejected swapped (a pseudo-label that disagrees with the source)."""
    return dataclasses.replace(pair, chosen=pair.rejected, rejected=pair.chosen,
                               meta={**pair.meta, "pseudo_label": "swapped"})


# ---------------------------------------------------------------------------------------------
# The rounds
# ---------------------------------------------------------------------------------------------

def run_rounds(settings: LoopSettings, learner, split, pool, *, seed: int, optim: OptimSettings, run_dir: Path,
               log, echo=print, start_round: int = 1, step: int = 0) -> None:
    """Rounds `start_round`..T of margins → allocation → sample → train on `learner` (its model as the previous
    round left it), each committed by its checkpoint under `run_dir` (see the module docstring).

    split: the run's `data.Split` (its train pairs are the base set; val and eval are scored every round);
    pool: the base set's variants (`open_base_pool`); optim: the training settings of one round (its seed is
    set per round); step: optimizer steps taken before `start_round`; log: the run's `io.MetricsLog`.
    """
    base = split.train
    strategy = settings.strategy_record
    allocation = settings.strategy_settings()
    accumulated: list = []
    carried = None  # the base margins after a round's training: the next round's step a
    if start_round > 1:
        learner.load_state(run_dir / "checkpoints" / f"round-{start_round - 1}")
        accumulated = _load_accumulated(run_dir, start_round - 1, pool) if settings.accumulate else []
    elif settings.base_epochs > 0:  # round 0: the base pairs alone (rerun whole if killed before round 1 commits)
        warm = dataclasses.replace(optim, epochs=settings.base_epochs, seed=seed * 1000)
        torch.manual_seed(warm.seed)
        step += learner.fit(base, warm, desc="round 0 (base pairs)")["steps"]

    for round_ in range(start_round, settings.rounds + 1):
        rng = np.random.default_rng([seed, round_])
        started = time.perf_counter()

        margins = learner.margins(base) if carried is None else carried                   # a. margins
        counts = alloc.allocate(settings.strategy, margins, settings.budget if strategy.augments else 0, rng,
                                available=pool.sizes > 0 if strategy.augments else None, **allocation)  # b, c
        ranked = variant_margins(learner, pool) if strategy.selects_by_variant_margin and counts.any() else None
        pair_index, variant_index = alloc.sample_variants(                                  # d. sample
            counts, pool.sizes, rng, variant_margins=ranked,
            order=strategy.sampling_order if ranked is not None else "random")
        sample = pool.take(pair_index, variant_index)
        swapped = 0
        if strategy.pseudo_labels and sample:
            keep = alloc.pseudo_label(learner.margins(sample))
            swapped = int((~keep).sum())
            sample = [v if k else flip(v) for v, k in zip(sample, keep)]
        accumulated = accumulated + sample if settings.accumulate else sample
        training = base + accumulated
        weight = None
        if strategy.reweights_base:
            weight = np.concatenate([alloc.adaboost_weights(margins, beta=settings.beta),
                                     np.ones(len(accumulated))])
        allocation_seconds = time.perf_counter() - started

        measured = time.perf_counter()
        curvature = _curvature(learner, margins, base, accumulated)
        curvature_seconds = time.perf_counter() - measured
        round_optim = dataclasses.replace(optim, seed=seed * 1000 + round_)
        torch.manual_seed(round_optim.seed)
        trained = learner.fit(training, round_optim, weight=weight, step_offset=step,          # e. train
                              desc=f"round {round_}/{settings.rounds}")
        step += trained["steps"]

        record = {"event": "round", "round": round_, "strategy": settings.strategy, "seed": seed,
                  **margin_statistics(margins), **alloc.allocation_statistics(margins, counts),
                  "synthetic_pairs": len(accumulated), "pseudo_label_swaps": swapped, **curvature,
                  "allocation_seconds": allocation_seconds, "curvature_seconds": curvature_seconds,
                  "train_seconds": trained["seconds"], "train_pairs_per_s": trained["pairs_per_s"], "step": step}
        measured = time.perf_counter()
        carried = learner.margins(base)
        record["base_loss"] = metrics.bt_loss(carried)  # comparable between strategies, unlike the training loss
        for name, pairs in (("val", split.val), ("eval", split.eval)):
            if pairs:
                chosen, rejected = learner.scores(pairs)
                record[f"{name}_loss"] = metrics.bt_loss(chosen - rejected)
                scored = evaluate_scores(pairs, chosen, rejected, n_resamples=settings.round_resamples, seed=seed)
                record.update({f"{name}_{k}": v for k, v in flat_values(scored).items()})
        record["eval_seconds"] = time.perf_counter() - measured
        _save_round(run_dir, round_, margins, counts, pair_index, variant_index, swapped=(
            [k for k, v in enumerate(sample) if v.meta.get("pseudo_label") == "swapped"]))
        log.log(record, step=round_)
        # The checkpoint commits the round (see `commands.run`'s resume), so it comes after everything else the
        # round writes: a kill before it reruns the round, a kill after it finds every file of the round in place.
        atomic_write_dir(run_dir / "checkpoints" / f"round-{round_}", learner.model.save)
        echo(_round_line(record))

def margin_statistics(margins: np.ndarray) -> dict:
    """Summary of the base-set margins Δ at the start of a round."""
    return {"margin_mean": float(np.mean(margins)), "margin_std": float(np.std(margins)),
            "margin_median": float(np.median(margins)), "mis_ranked": float(np.mean(margins <= 0)),
            "margin_abs_mean": float(np.mean(np.abs(margins)))}


def _curvature(learner, base_margins, base, synthetic) -> dict:
    """Mean σ'(Δ) over the round's training pairs, and the head's exact BT Hessian spectrum where linear."""
    margins = np.concatenate([base_margins, learner.margins(synthetic)]) if synthetic else base_margins
    summary = {"mean_sigmoid_prime": float(np.mean(metrics.sigmoid_prime(margins)))}
    hessian = learner.hessian(base + synthetic)
    if hessian is not None:
        spectrum = metrics.curvature_summary(hessian)
        summary.update({f"hessian_{k}": v for k, v in spectrum.items() if k != "mean_sigmoid_prime"})
    return summary


def _round_line(record: dict) -> str:
    parts = [f"round {record['round']}", f"mis-ranked {record['mis_ranked']:.3f}",
             f"entropy {record['allocation_entropy']:.2f}", f"ESS {record['effective_sample_size']:.0f}",
             f"mean σ' {record['mean_sigmoid_prime']:.4f}"]
    for name in ("val_accuracy", "eval_accuracy"):
        if name in record:
            parts.append(f"{name.replace('_', ' ')} {record[name]:.4f}")
    return " · ".join(parts)


def _save_round(run_dir: Path, round_: int, margins, counts, pair_index, variant_index, swapped) -> None:
    """Per-round arrays for plots and resume: margins, budgets, the sampled (pair, variant) indices, and the
    positions in the sample whose labels self-training swapped."""
    def write(tmp):
        with open(tmp, "wb") as handle:
            np.savez(handle, margins=margins, counts=counts, pair_index=pair_index, variant_index=variant_index)

    atomic_write(run_dir / "rounds" / f"round-{round_}.npz", write)
    if swapped:
        atomic_write_json(run_dir / "rounds" / f"round-{round_}-swapped.json", swapped)


def _load_accumulated(run_dir: Path, last_round: int, pool) -> list:
    sample = []
    for round_ in range(1, last_round + 1):
        saved = np.load(run_dir / "rounds" / f"round-{round_}.npz")
        taken = pool.take(saved["pair_index"], saved["variant_index"])
        swapped_file = run_dir / "rounds" / f"round-{round_}-swapped.json"
        swapped = set(json.loads(swapped_file.read_text())) if swapped_file.exists() else set()
        sample += [flip(v) if k in swapped else v for k, v in enumerate(taken)]
    return sample


