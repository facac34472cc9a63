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
