"""What every benchmark script shares: a meter for wall/CPU time and load, and a description of the machine."""
from __future__ import annotations

import os
import platform
import time
from pathlib import Path


class Meter:
    """Wall and process-CPU seconds, and the 1-minute load average at both ends."""

    def __enter__(self):
        self.wall, self.cpu, self.load_before = time.perf_counter(), time.process_time(), os.getloadavg()[0]
        return self

    def __exit__(self, *exc):
        self.wall = time.perf_counter() - self.wall
        self.cpu = time.process_time() - self.cpu
        self.load_after = os.getloadavg()[0]

    def as_dict(self, texts: int | None = None) -> dict:
        record = {"wall_s": self.wall, "cpu_s": self.cpu, "load_1min": [self.load_before, self.load_after]}
        if texts is not None:
            record["texts_per_s"] = texts / self.wall
        return record


def machine() -> dict:
    """CPU model, cores, torch threads, native bf16 support, Python and torch versions."""
    import torch

    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next((line.split(":", 1)[1].strip() for line in flags.splitlines() if line.startswith("model name")), "?")
    return {"cpu": model, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "avx512_bf16": "avx512_bf16" in flags, "amx_bf16": "amx_bf16" in flags,
            "python": platform.python_version(), "torch": torch.__version__}


def train_with_trl(model, args, chosen_ids, rejected_ids, on_batch=None):
    """TRL's `RewardTrainer` for one run on pre-tokenised pairs, timed by a callback; returns (trainer, clock, meter).

    model: a marsrm `FullRewardModel` (its `.model` is trained in place and set to the trainer's, in eval mode);
    args: a `RewardConfig`; on_batch(batch, collate_seconds): sees every collated batch. clock: `wall` and `cpu`
    seconds of the training loop and `step_ends` (perf_counter at each optimizer step's end); meter: the `Meter`
    around `trainer.train()`.
    """
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import RewardTrainer
    from trl.trainer.reward_trainer import DataCollatorForPreference

    collator = DataCollatorForPreference(pad_token_id=model.tokenizer.pad_token_id)

    def collate(features):
        started = time.perf_counter()
        batch = collator(features)
        if on_batch is not None:
            on_batch(batch, time.perf_counter() - started)
        return batch

    class Clock(TrainerCallback):
        def on_train_begin(self, *_, **__):
            self.wall, self.cpu, self.step_ends = time.perf_counter(), time.process_time(), []

        def on_step_end(self, *_, **__):
            self.step_ends.append(time.perf_counter())

        def on_train_end(self, *_, **__):
            self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu

    clock = Clock()
    dataset = Dataset.from_dict({"chosen_ids": chosen_ids, "rejected_ids": rejected_ids})
    trainer = RewardTrainer(model=model.model, args=args, train_dataset=dataset, processing_class=model.tokenizer,
                            data_collator=collate, callbacks=[clock])
    with Meter() as meter:
        trainer.train()
    model.model = trainer.model.eval()
    return trainer, clock, meter
