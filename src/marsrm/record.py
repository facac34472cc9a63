"""What determines a run's result (its fingerprint), and the small outputs of finished runs kept in `results/`.

A fingerprint is a canonical, flat form of the settings a run's numbers depend on: one entry per setting under
its own name (whatever class or section declares it), with values resolved (`epochs: null` → the mode's
default, `tau: null` → the strategy's) and settings the run never uses left out (τ for `uniform`, the pool for
`none`, LoRA in head mode). So the settings classes may be reorganised, a setting may be added with a default
that keeps the old behaviour, and two commands that mean the same run (`uniform` with and without `--tau 2`)
get the same fingerprint.

`run_record` is a run directory's run.json: every setting as requested and as resolved on this machine, the
versions of the software and the hardware it ran on.

`record_run` copies a finished run's small outputs (config, results, metrics, per-pair margins and ids, the
per-round allocations; never weights) into a results directory, written whole or not at all, so a comparison
can be committed run by run and continued on another machine.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import platform
import shutil
from importlib import metadata
from pathlib import Path

from marsrm.io import atomic_write_dir

FINGERPRINT_VERSION = 2

# Settings that never change what a run computes: where it writes, how it reports progress, what it may load.
BOOKKEEPING = {"resume", "overwrite", "progress", "output", "pool_memory", "trust_remote_code", "allow_pickle",
               "workers", "record", "allow_overlap",
               "gradient_checkpointing"}  # recomputes activations to save memory: the same gradients
# Settings that, when continuing a killed run, may differ from the first attempt: more rounds extend it.
RESUME_FREE = {"rounds"}
HEAD_ONLY = {"pooling", "head_hidden", "embed_dtype"}
FULL_ONLY = {"lora_r", "lora_alpha", "mixed_precision", "dropout"}
# Old name -> current name, for settings renamed since a run was fingerprinted.
RENAMED: dict[str, str] = {}

RECORDED_FILES = ("config.yaml", "run.json", "fingerprint.json", "results.json", "metrics.jsonl",
                  "val_margins.npy", "val_ids.json", "eval_margins.npy", "eval_ids.json")
RECORDED_DIRS = ("rounds",)


def flat_settings(config) -> dict:
    """Every setting of a (possibly nested) settings dataclass under its own leaf name."""
    flat: dict = {}

    def visit(values: dict) -> None:
        for name, value in values.items():
            if isinstance(value, dict) and dataclasses.is_dataclass(getattr(config, name, None)):
                visit(value)
            else:
                if name in flat:
                    raise ValueError(f"setting name '{name}' is declared twice; fingerprints need unique names")
                flat[name] = value

    visit(dataclasses.asdict(config))
    return flat


def pool_identity(pool: str | None) -> str | None:
    """A short hash of how a pool was built (paraphraser, n, filter, …) and how many variants it holds."""
    if not pool:
        return None
    manifest_file = Path(pool) / "manifest.json"
    if not manifest_file.is_file():
        return str(pool)  # not built yet: the run itself will refuse it
    manifest = json.loads(manifest_file.read_text(encoding="utf-8"))
    built = {k: manifest.get(k) for k in ("format", "n", "seed", "targets", "chunk_words", "fallback", "filter",
                                          "paraphraser")}
    built["variants"] = manifest.get("report", {}).get("variants")
    if manifest.get("embed_dtype"):  # the filter's embedder, recorded only when not fp32 (pools before it were fp32)
        built["embed_dtype"] = manifest["embed_dtype"]
    return hashlib.sha256(json.dumps(built, sort_keys=True).encode()).hexdigest()[:16]


def resolved_settings(config) -> dict:
    """Every setting of a `TrainConfig` or `RunConfig` as the run uses it: the optimisation settings left empty
    take the mode's defaults, `split_seed` the seed, τ the strategy's default, 'auto' precision what this machine
    resolves it to."""
    values = flat_settings(config)
    optim = config.optim()
    for name in ("epochs", "batch_size", "lr", "weight_decay", "warmup_ratio"):
        values[name] = getattr(optim, name)
    values["split_seed"] = config.data_seed
    strategy = getattr(config, "strategy_record", None)
    if strategy is not None and "tau" in strategy.defaults:
        values["tau"] = config.tau if config.tau is not None else strategy.defaults["tau"]
    _resolve_precision(values)
    return values


def model_settings(config) -> dict:
    """The resolved settings that made a saved model, for its model card: `resolved_settings` less the
    bookkeeping (output, progress, …) and the other mode's settings."""
    drop = {"output", "overwrite", "progress", "resume"} | (FULL_ONLY if config.mode == "head" else HEAD_ONLY)
    return {k: v for k, v in resolved_settings(config).items() if k not in drop}


def fingerprint(config) -> dict:
    """The canonical settings of a `RunConfig` (see the module docstring); JSON-ready, keys sorted."""
    values = resolved_settings(config)
    strategy = config.strategy_record
    uses = strategy.defaults
    drop = set(BOOKKEEPING)
    drop |= {"tau", "tau_scale", "beta"} - set(uses)
    if not (strategy.augments and config.budget > 0):
        drop |= {"pool", "budget", "accumulate"}
    drop |= FULL_ONLY if config.mode == "head" else HEAD_ONLY
    values = {k: v for k, v in values.items() if k not in drop}
    if "pool" in values:
        values["pool"] = pool_identity(values["pool"])
    return json.loads(json.dumps(dict(sorted(values.items()))))


def _resolve_precision(values: dict) -> None:
    """'auto' precision as this machine resolves it: a run computed in bf16 and one in fp32 are different runs."""
    if values.get("embed_dtype") == "auto" or values.get("mixed_precision") == "auto":
        import torch

        from marsrm.runtime import resolve_dtype
        from marsrm.train import resolve_mixed_precision

        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if values.get("embed_dtype") == "auto":
            values["embed_dtype"] = resolve_dtype("auto", device)
        if values.get("mixed_precision") == "auto":
            values["mixed_precision"] = resolve_mixed_precision("auto", cpu=device.type == "cpu")


def run_record(config) -> dict:
    """run.json's payload: {"requested": the settings as given (config.yaml), "resolved": `resolved_settings`,
    "versions": of the software, "hardware": what it ran on}; JSON-ready."""
    return json.loads(json.dumps({"requested": dataclasses.asdict(config), "resolved": resolved_settings(config),
                                  "versions": versions(), "hardware": hardware()}))


def versions() -> dict:
    """{package: version or None when not installed} for marsrm and what its numbers depend on, and Python's."""
    found = {}
    for name in ("marsrm", "torch", "transformers", "accelerate"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    found["python"] = platform.python_version()
    return found


def hardware() -> dict:
    """{"cpu": model name, "cores", "native_bf16": of the CPU, "cuda": the GPU's name or None}."""
    import torch

    from marsrm.runtime import cpu_has_bf16

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("model name"):
                cpu = line.partition(":")[2].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "native_bf16": cpu_has_bf16(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def fingerprint_file_payload(config) -> dict:
    return {"version": FINGERPRINT_VERSION, "settings": fingerprint(config)}


def saved_fingerprint(payload: dict, config_cls) -> dict:
    """The canonical settings in a fingerprint.json, of this version or of the first (a flat dump of the run's
    settings as they were given, which is canonicalised here the same way)."""
    if payload.get("version") == FINGERPRINT_VERSION:
        settings = dict(payload["settings"])
        _resolve_precision(settings)  # written before 'auto' was resolved: read as this machine resolves it
        return settings
    from marsrm.config import from_mapping

    names = {f.name for f in dataclasses.fields(config_cls)}
    given = {RENAMED.get(k, k): v for k, v in payload.items()}
    known = {k: v for k, v in given.items() if k in names}
    # The first version kept the pool's path: it is rebuilt into the same identity when it still exists.
    return fingerprint(from_mapping(config_cls, known, origin="fingerprint.json"))


def changed_settings(saved: dict, current: dict, *, ignore=(), at_default=()) -> list[str]:
    """The settings of `current` whose value differs from `saved`, as 'name: old → new', sorted by name.

    saved, current: {setting: value}, what was stored beside an output and what would make it now. A setting
    missing from `saved` (added since) shows as '(not set) → new', unless it is named in `at_default` (the
    current value is the setting's default, which keeps the old behaviour); one missing from `current`
    (retired since) is not compared; names in `ignore` are not compared.
    """
    changed = []
    for name in sorted(set(current) - set(ignore)):
        if name not in saved:
            if name not in at_default:
                changed.append(f"{name}: (not set) → {current[name]!r}")
        elif saved[name] != current[name]:
            changed.append(f"{name}: {saved[name]!r} → {current[name]!r}")
    return changed


def differences(saved: dict, config, ignore=()) -> list[str]:
    """The settings whose value differs between a saved fingerprint and `config`: `changed_settings` of the
    fingerprints, a setting added since counting as the same when `config` leaves it at its default."""
    defaults = {f.name: (f.default if f.default is not dataclasses.MISSING else f.default_factory())
                for f in dataclasses.fields(config)}
    raw = flat_settings(config)
    at_default = {name for name in raw if raw[name] == defaults.get(name)}
    return changed_settings(saved, fingerprint(config), ignore=ignore, at_default=at_default)


def read_fingerprint(run_dir: Path, config_cls) -> dict | None:
    path = Path(run_dir) / "fingerprint.json"
    if not path.is_file():
        return None
    return saved_fingerprint(json.loads(path.read_text(encoding="utf-8")), config_cls)


def is_recorded(record_dir: Path) -> bool:
    """True when `record_dir` holds a whole recorded run (results.json is written last, inside the rename)."""
    return (Path(record_dir) / "results.json").is_file()


def record_run(run_dir: Path, record_dir: Path) -> Path:
    """Copy a finished run's small outputs into `record_dir`, replacing it whole (never weights)."""
    run_dir = Path(run_dir)
    if not (run_dir / "results.json").is_file():
        raise FileNotFoundError(f"{run_dir}: not a finished run (no results.json)")

    def copy(tmp: Path) -> None:
        for name in RECORDED_FILES:
            if (run_dir / name).is_file():
                shutil.copy2(run_dir / name, tmp / name)
        for name in RECORDED_DIRS:
            if (run_dir / name).is_dir():
                shutil.copytree(run_dir / name, tmp / name)

    return atomic_write_dir(record_dir, copy)
