"""MARS inside TRL's `RewardTrainer`: the self-refinement rounds run as its epochs (`pip install 'marsrm[trl]'`).

Round t is epoch t - 1 of `RewardTrainer.train`. At the start of each epoch, with the model as the accelerator
wrapped it (DDP, DeepSpeed, FSDP: a callback would only see the unwrapped model), `MarsRewardTrainer` runs
MARS.md's steps a-d and lets the trainer run step e:
    a. margins     Δ_i = r(x_i, y_i+) - r(x_i, y_i-) of every base pair, sharded over the processes with the same
                   number of forward passes on each (ZeRO-3 gathers parameters in lockstep), then gathered
    b, c. counts   `allocate.allocate(strategy, Δ, budget, rng, available=pool sizes > 0, **settings)`
    d. sample      `allocate.sample_variants(counts, pool sizes, rng)`, with rng = default_rng([seed, round]), as in
                   `marsrm.loop.run_rounds`
    e. train       one epoch on base ∪ sample, by the unchanged `RewardTrainer`
The base pairs and every variant of the pool are tokenised once, by TRL's own `_prepare_dataset` (chat templates,
EOS, max_length filter); a round changes only which table rows the epoch's positions point at (`RoundRows`). The
epoch's length, N base pairs + B sampled variants, is the same every round, so the trainer's step counts, schedule
and resume arithmetic hold unchanged.

Each checkpoint holds `mars_round.npz` (the round's margins, counts and sampled indices): a run resumed in the middle
of a round trains on that round's saved sample instead of recomputing margins on a half-trained model. Per-round
statistics go through the trainer's loggers (`report_to`) as `mars/...` keys. Not supported yet: the strategies that
change labels or loss weights (self-train, adaboost); use `marsrm run` for those.

Builds on `transformers.Trainer._run_epoch` (transformers 5), a private method: the import fails loudly without it.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import transformers
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from trl import RewardConfig, RewardTrainer

from marsrm import allocate as alloc
from marsrm.data import PreferencePair, pairs_to_records
from marsrm.io import atomic_write
from marsrm.loop import margin_statistics

__all__ = ["FORMATS", "ROUND_FILE", "SUPPORTED_STRATEGIES", "MarsRewardConfig", "MarsRewardTrainer", "MarsRound",
           "RoundRows", "check_settings", "round_statistics"]

if not hasattr(transformers.Trainer, "_run_epoch"):
    raise ImportError(f"marsrm.trl runs MARS rounds from transformers.Trainer._run_epoch, which transformers "
                      f"{transformers.__version__} does not have; pip install -U 'marsrm[trl]' (transformers>=5.24)")

ROUND_FILE = "mars_round.npz"
FORMATS = ("auto", "chat", "pairs")
SUPPORTED_STRATEGIES = tuple(name for name, s in alloc.STRATEGIES.items() if not (s.pseudo_labels or s.reweights_base))


@dataclass
class MarsRewardConfig(RewardConfig):
    """`RewardConfig` plus the MARS rounds' settings; the rounds are the epochs (`num_train_epochs` = T)."""

    pool: str | None = field(default=None, metadata={"help": "pool directory built by `marsrm augment` (not needed "
                                                              "for strategy none)"})
    strategy: str = field(default="mars", metadata={"help": "allocation strategy, one of "
                                                            + ", ".join(SUPPORTED_STRATEGIES)})
    budget: int = field(default=2000, metadata={"help": "synthetic pairs sampled per round B"})
    tau: float | None = field(default=None, metadata={"help": "temperature τ (mars default 0.1, mars-signed 0.5)"})
    tau_scale: str = field(default="raw", metadata={"help": "what τ multiplies: raw margins or std: margins in units "
                                                            "of the round's margin standard deviation"})
    pair_format: str = field(default="auto", metadata={"help": "how pairs reach the tokenizer: chat (messages, the "
                                                               "tokenizer's chat template), pairs (HH transcript text) "
                                                               "or auto (chat when the tokenizer has a template)"})

    def strategy_settings(self) -> dict:
        """The keywords `allocate.allocate` takes for this strategy (τ only when given: else its default)."""
        return alloc.strategy_settings(self.strategy, tau=self.tau, tau_scale=self.tau_scale)


def check_settings(args: MarsRewardConfig, pool_given: bool) -> None:
    """Refuse settings MarsRewardTrainer cannot honour, before anything is loaded (ValueError naming the setting)."""
    if not isinstance(args, MarsRewardConfig):
        raise ValueError(f"args must be a MarsRewardConfig (a RewardConfig with the MARS settings), got "
                         f"{type(args).__name__}")
    if args.strategy not in SUPPORTED_STRATEGIES:
        known = args.strategy in alloc.STRATEGIES
        raise ValueError(f"setting 'strategy': {args.strategy!r} " + (
            "changes labels or loss weights, which MarsRewardTrainer does not do; use `marsrm run` for it, or "
            if known else "is not a strategy; ") + f"choose one of {', '.join(SUPPORTED_STRATEGIES)}")
    if isinstance(args.budget, bool) or not isinstance(args.budget, int) or args.budget < 0:
        raise ValueError(f"setting 'budget': must be a whole number >= 0, got {args.budget!r}")
    if args.tau is not None and not (math.isfinite(args.tau) and args.tau >= 0):
        raise ValueError(f"setting 'tau': must be a finite number >= 0 or None (the strategy's default), got "
                         f"{args.tau!r}")
    if args.tau_scale not in alloc.TAU_SCALES:
        raise ValueError(f"setting 'tau_scale': {args.tau_scale!r}; choose one of {', '.join(alloc.TAU_SCALES)}")
    if args.pair_format not in FORMATS:
        raise ValueError(f"setting 'pair_format': {args.pair_format!r}; choose one of {', '.join(FORMATS)}")
    augments = alloc.STRATEGIES[args.strategy].augments and args.budget > 0
    if augments and not (pool_given or args.pool):
        raise ValueError(f"setting 'pool' is empty but strategy {args.strategy!r} samples {args.budget} variants a "
                         "round; build one with `marsrm augment --output DIR` and set pool=DIR")
    if augments and args.pool and not pool_given and not os.path.isdir(args.pool):
        raise ValueError(f"setting 'pool': {args.pool} is not a directory; build it with `marsrm augment --output "
                         f"{args.pool}`")
    if float(args.num_train_epochs) != int(args.num_train_epochs) or args.num_train_epochs < 1:
        raise ValueError(f"setting 'num_train_epochs' is the number of MARS rounds: a whole number >= 1, got "
                         f"{args.num_train_epochs}")
    if args.dataloader_persistent_workers:
        raise ValueError("setting 'dataloader_persistent_workers': persistent workers keep the first round's sample; "
                         "set it to False (workers restart each epoch and see the new sample)")
    sampling = getattr(args, "train_sampling_strategy", "random")
    if sampling not in ("random", "sequential"):
        raise ValueError(f"setting 'train_sampling_strategy': {sampling!r} measures lengths once, before the rounds "
                         "change the sample; use random or sequential")


@dataclass
class MarsRound:
    """One round's allocation: margins Δ (N,), counts (N,), and the sample as (pair_index, variant_index), each (B,).

    Indices refer to the trainer's `base_pairs_` and each pair's usable variants (`pool_sizes_`).
    margin_seconds: the margin pass (step a); train_seconds: the epoch (step e), set when it ends;
    resumed: loaded from a checkpoint instead of computed.
    """

    round: int
    margins: np.ndarray
    counts: np.ndarray
    pair_index: np.ndarray
    variant_index: np.ndarray
    margin_seconds: float = 0.0
    train_seconds: float | None = None
    resumed: bool = False

    def save(self, folder: str) -> None:
        def write(tmp):
            with open(tmp, "wb") as handle:
                np.savez(handle, round=self.round, margins=self.margins, counts=self.counts,
                         pair_index=self.pair_index, variant_index=self.variant_index)

        atomic_write(os.path.join(folder, ROUND_FILE), write)

    @classmethod
    def load(cls, folder: str) -> "MarsRound":
        path = os.path.join(folder, ROUND_FILE)
        if not os.path.isfile(path):
            raise ValueError(f"checkpoint {folder} has no {ROUND_FILE}: it was not written by MarsRewardTrainer; "
                             "resume from one of this run's checkpoints, or start the run afresh")
        with np.load(path) as saved:
            return cls(round=int(saved["round"]), margins=saved["margins"], counts=saved["counts"],
                       pair_index=saved["pair_index"], variant_index=saved["variant_index"], resumed=True)


class RoundRows(torch.utils.data.Dataset):
    """The epoch's training set: position p -> row `rows[p]` of the tokenised table (base rows, then the sample)."""

    def __init__(self, table, rows):
        self.table, self.rows = table, np.asarray(rows, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, position: int) -> dict:
        return self.table[int(self.rows[position])]


class MarsRewardTrainer(RewardTrainer):
    """`RewardTrainer` whose epochs are MARS rounds over `base_pairs` and their variants in the pool `args.pool`.

    base_pairs: the base set D as `PreferencePair`s (default: every base pair of the pool, in pool order; their
        ids and texts must match the pool's). pool: an opened `marsrm.pool.Pool` instead of `args.pool`. Every other
        keyword (eval_dataset, peft_config, callbacks, optimizers, ...) goes to `RewardTrainer` unchanged; the
        training set is built here, so `train_dataset` is refused. After `__init__`: `base_pairs_` (those within
        max_length), `variants_` (each one's variants within max_length), `pool_sizes_` (their counts). As each round
        starts, `rounds_` gains its `MarsRound`.
    """

    def __init__(self, model, args: MarsRewardConfig, *, base_pairs=None, pool=None, processing_class=None, **kwargs):
        if "train_dataset" in kwargs:
            raise TypeError("MarsRewardTrainer builds its training set from base_pairs and the pool; pass base_pairs= "
                            "(PreferencePair records, e.g. from marsrm.data.load_pairs) instead of train_dataset=")
        check_settings(args, pool_given=pool is not None)
        if pool is None and args.pool:
            from marsrm.pool import open_pool

            pool = open_pool(args.pool)
        if base_pairs is None:
            if pool is None:
                raise ValueError(f"strategy {args.strategy!r} with no pool needs base_pairs= (the base set)")
            base_pairs = pool.pairs()
        base_pairs = list(base_pairs)
        if not base_pairs:
            raise ValueError("base_pairs is empty: the base set needs at least one preference pair")
        variants = _variants_of(base_pairs, pool)
        if processing_class is None:
            from transformers import AutoTokenizer
            from trl.trainer.utils import get_config_model_id

            name = model if isinstance(model, str) else get_config_model_id(model.config)
            processing_class = AutoTokenizer.from_pretrained(name, trust_remote_code=args.trust_remote_code)
        style = args.pair_format
        if style == "auto":
            style = "chat" if getattr(processing_class, "chat_template", None) else "pairs"
        if style == "pairs" and args.eos_token is None and processing_class.eos_token is None:
            raise ValueError(f"setting 'eos_token': {type(processing_class).__name__} has no EOS token, and TRL ends "
                             "every plain-text response with one; set eos_token (for a BERT-style tokenizer: '[SEP]')")
        table = _records(base_pairs + [v for vs in variants for v in vs], style)

        super().__init__(model, args=args, train_dataset=table, processing_class=processing_class, **kwargs)

        self.base_pairs_, self.variants_, self._base_rows, self._variant_rows = _surviving(
            base_pairs, variants, np.asarray(self.train_dataset["mars_row"]))
        self.pool_sizes_ = np.array([len(v) for v in self.variants_], dtype=np.int64)
        self.strategy_ = alloc.STRATEGIES[args.strategy]
        self.budget_ = args.budget if self.strategy_.augments else 0
        if self.budget_ and not self.pool_sizes_.any():
            raise ValueError(f"setting 'pool': none of the {len(self.base_pairs_)} base pairs has a variant within "
                             f"max_length={args.max_length}; raise max_length or rebuild the pool for these pairs")
        columns = [c for c in ("chosen_ids", "rejected_ids", "margin") if c in self.train_dataset.column_names]
        self._table = self.train_dataset.select_columns(columns)
        placeholder = np.concatenate([self._base_rows, np.zeros(self.budget_, dtype=np.int64)])
        self._epoch_rows = RoundRows(self._table, placeholder)  # its length sets the steps; round 1 fills it
        self.rounds_: list[MarsRound] = []

    # ------------------------------------------------------------------------------------------------------
    # The round: margins -> allocation -> sample, then the trainer's epoch

    def get_train_dataloader(self):
        """The trainer's own dataloader (sampler, sharding, workers) over `RoundRows`, whose rows each round sets."""
        return self._get_dataloader(dataset=self._epoch_rows, description="Training", batch_size=self._train_batch_size,
                                    sampler_fn=self._get_train_sampler, is_training=True)

    def _run_epoch(self, model, epoch, train_dataloader, **kwargs):
        """Round epoch + 1: its allocation (computed, or the checkpoint's when resuming inside it), then the epoch."""
        round_ = epoch + 1
        record = None
        checkpoint = kwargs.get("resume_from_checkpoint")
        if checkpoint is not None and epoch == kwargs.get("epochs_trained"):
            saved = MarsRound.load(checkpoint)
            if saved.round == round_:  # saved in the middle of this round: finish it on its own sample
                record = saved
            elif saved.round != round_ - 1:
                raise ValueError(f"checkpoint {checkpoint} holds round {saved.round}'s sample, but the trainer resumes "
                                 f"at round {round_}; num_train_epochs or the batch settings differ from the run's")
        if record is None:
            record = self.start_round(model, round_)
        self.rounds_.append(record)
        self._epoch_rows.rows = self.epoch_rows(record)
        started = time.perf_counter()
        super()._run_epoch(model=model, epoch=epoch, train_dataloader=train_dataloader, **kwargs)
        record.train_seconds = time.perf_counter() - started
        transformers.Trainer.log(self, {"mars/round": round_, "mars/train_seconds": record.train_seconds})

    def start_round(self, model, round_: int) -> MarsRound:
        """Steps a-d of round `round_` with `model` (the wrapped model) as it is now; logs the round's statistics."""
        rng = np.random.default_rng([self.args.seed, round_])
        started = time.perf_counter()
        margins = self.margins(model, self._base_rows)                                        # a. margins
        margin_seconds = time.perf_counter() - started
        augments = self.strategy_.augments
        counts = alloc.allocate(self.args.strategy, margins, self.budget_, rng,               # b, c. counts
                                available=self.pool_sizes_ > 0 if augments else None, **self.args.strategy_settings())
        by_variant = self.strategy_.selects_by_variant_margin and counts.any()
        ranked = self.margins(model, self._variant_rows) if by_variant else None             # West-of-N only
        pair_index, variant_index = alloc.sample_variants(                                     # d. sample
            counts, self.pool_sizes_, rng, variant_margins=ranked,
            order=self.strategy_.sampling_order if ranked is not None else "random")
        record = MarsRound(round_, margins, counts, pair_index, variant_index, margin_seconds=margin_seconds)
        # Trainer.log, not RewardTrainer.log: the latter would fold the running training metrics into this record.
        transformers.Trainer.log(self, {f"mars/{k}": v for k, v in round_statistics(record).items()})
        return record

    def epoch_rows(self, record: MarsRound) -> np.ndarray:
        """Table rows of the round's epoch: every base pair, then the sampled variants (pair-major)."""
        flat = alloc.pool_offsets(self.pool_sizes_)[record.pair_index] + record.variant_index
        return np.concatenate([self._base_rows, self._variant_rows[flat]])

    def round_pairs(self, record: MarsRound) -> list[PreferencePair]:
        """The round's training set as pairs, in the order of its epoch's positions: base pairs, then the sample."""
        return self.base_pairs_ + [self.variants_[i][j] for i, j in zip(record.pair_index, record.variant_index)]

    def margins(self, model, rows) -> np.ndarray:
        """Δ = r(chosen) - r(rejected) of table `rows` (shape (n,), float64), the same on every process.

        Process k scores rows k, k + P, k + 2P, ... padded by wrapping to ceil(n / P) rows, so every process runs
        the same number of forward passes of `per_device_eval_batch_size` pairs; the results are gathered.
        """
        rows = np.asarray(rows, dtype=np.int64)
        processes, rank = self.accelerator.num_processes, self.accelerator.process_index
        if rows.size == 0:
            return np.zeros(0)
        per_process = -(-rows.size // processes)
        mine = rows[(rank + processes * np.arange(per_process)) % rows.size]
        batch = self.args.per_device_eval_batch_size
        was_training = model.training
        model.eval()
        scored = []
        with torch.no_grad():
            for start in range(0, per_process, batch):
                columns = self._table[mine[start:start + batch].tolist()]
                examples = [dict(zip(columns, values)) for values in zip(*columns.values())]
                inputs = self._prepare_inputs(self.data_collator(examples))
                with self.compute_loss_context_manager():  # the same forward as RewardTrainer.compute_loss
                    logits = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                                   use_cache=False).logits
                chosen, rejected = torch.chunk(logits.squeeze(-1).float(), chunks=2)
                scored.append(chosen - rejected)
        model.train(was_training)
        gathered = self.accelerator.gather(torch.cat(scored)).cpu().numpy().astype(np.float64)
        # gathered is process-major; row j·P + k sits at k·per_process + j
        return gathered.reshape(processes, per_process).T.reshape(-1)[:rows.size]

    def _save_checkpoint(self, model, trial):
        # Written before the trainer's files, so every checkpoint the trainer would resume from holds the round.
        if self.rounds_ and self.args.should_save:
            name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"  # the folder Trainer._save_checkpoint fills
            folder = os.path.join(self._get_output_dir(trial=trial), name)
            os.makedirs(folder, exist_ok=True)
            self.rounds_[-1].save(folder)
        super()._save_checkpoint(model, trial)


def round_statistics(record: MarsRound) -> dict:
    """The per-round numbers `marsrm run` logs: margin summary, mis-ranked share, allocation summaries."""
    margins, counts = record.margins, record.counts
    return {"round": record.round, **margin_statistics(margins), **alloc.allocation_statistics(margins, counts),
            "synthetic_pairs": int(counts.sum()), "margin_seconds": record.margin_seconds}


# ----------------------------------------------------------------------------------------------------------
# The table: base pairs and variants, tokenised once


def _variants_of(base_pairs: list[PreferencePair], pool) -> list[list[PreferencePair]]:
    """Each base pair's variants in the pool ([] without a pool); refuses a pool built from other texts."""
    if pool is None:
        return [[] for _ in base_pairs]
    from marsrm.pool.build import source_hash

    variants = [list(pool.variants(pair.id)) for pair in base_pairs]
    if not any(variants):
        raise ValueError(f"setting 'pool': it holds no variants for any of the {len(base_pairs)} base pairs (e.g. "
                         f"{base_pairs[0].id}); build it with `marsrm augment` for the same data, train size and seed")
    for pair, own in zip(base_pairs, variants):
        if own and own[0].meta.get("source_hash") not in (None, source_hash(pair)):
            raise ValueError(f"setting 'pool': its variants of pair {pair.id} were made from a different text; "
                             "rebuild the pool for this data")
    return variants


def _records(pairs: list[PreferencePair], style: str):
    """The pairs in TRL's preference format as a `datasets.Dataset`, each row numbered in `mars_row`."""
    from datasets import Dataset

    keep = ["prompt", "chosen", "rejected"] + (["margin"] if all(p.margin is not None for p in pairs) else [])
    rows = [{**{k: record[k] for k in keep}, "mars_row": row}
            for row, record in enumerate(pairs_to_records(pairs, style))]
    return Dataset.from_list(rows)


def _surviving(base_pairs, variants, kept_rows: np.ndarray):
    """After TRL's max_length filter: (base pairs kept, each one's variants kept, the table rows of those base pairs,
    the table rows of their variants, pair-major). A base pair that was filtered out takes its variants along."""
    position = np.full(len(base_pairs) + sum(map(len, variants)), -1, dtype=np.int64)
    position[kept_rows] = np.arange(kept_rows.size)
    first = len(base_pairs) + alloc.pool_offsets([len(v) for v in variants])
    pairs, kept_variants, base_rows, variant_rows = [], [], [], []
    for k, pair in enumerate(base_pairs):
        if position[k] < 0:
            continue
        own = position[first[k]:first[k] + len(variants[k])]
        pairs.append(pair)
        kept_variants.append([v for v, row in zip(variants[k], own) if row >= 0])
        base_rows.append(position[k])
        variant_rows.append(own[own >= 0])
    return (pairs, kept_variants, np.array(base_rows, dtype=np.int64),
            np.concatenate(variant_rows) if variant_rows else np.zeros(0, dtype=np.int64))
