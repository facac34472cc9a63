"""Small file helpers every stage shares: atomic writes, the run directory's lock and swap, its metrics log."""
from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import socket
import tempfile
import time
from pathlib import Path

from marsrm.config import ConfigError


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def atomic_write(path: str | os.PathLike, write) -> Path:
    """Call `write(tmp_path)` on a temporary file beside `path`, then rename it into place.

    A reader sees the old file or the complete new one, never a partial file under the final name.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; give the result the usual permissions
    try:
        with _naming(path):
            write(tmp)
            with open(tmp, "rb+") as handle:
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


@contextlib.contextmanager
def _naming(path: Path):
    """An OSError without a file name (a full disk says only "No space left on device") gets `path` as its own."""
    try:
        yield
    except OSError as err:
        if err.filename is None and err.strerror:
            raise type(err)(err.errno, err.strerror, str(path)) from err
        raise


def atomic_write_dir(path: str | os.PathLike, write) -> Path:
    """Call `write(tmp_dir)` on an empty folder beside `path`, then rename it to `path` (replacing an old one).

    A reader sees no folder, the old one, or the complete new one; never a folder with some files missing
    or cut short (transformers' `save_pretrained`, for one, writes straight to the final names).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700 folders
    try:
        with _naming(path):
            write(tmp)
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def remove_temporaries(directory: str | os.PathLike) -> int:
    """Delete what `atomic_write` and `atomic_write_dir` leave behind when the process is killed mid-write
    (`.<name>.<random>.tmp` files and folders) anywhere under `directory`; returns how many.

    Only for a directory no other process is writing to (e.g. a run directory being resumed).
    """
    removed = 0
    for path in sorted(Path(directory).rglob(".*.tmp"), reverse=True):  # deepest first
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed += 1
    return removed


# Names beside a run directory `<parent>/<name>`, all hidden and starting ".<name>.": the lock and its holder; a new
# run being built; an old run being replaced by a complete new one; an old run set aside while a new one is built
# in its place.
_LOCK, _HOLDER, _STAGING, _REPLACED, _PREVIOUS = ".lock", ".lock.json", ".staging-", ".replaced-", ".previous-"


@contextlib.contextmanager
def run_directory(path: str | os.PathLike, *, overwrite: bool = False, resume: bool = False, stage: bool = True):
    """Hold the lock of run directory `path` and yield the directory to write the run into.

    resume: `path` itself, continued in place. A new or empty `path` is made and yielded; a run that stops there
    keeps what it wrote (`marsrm run --resume` continues it). A `path` that holds anything is refused (one-line
    ConfigError) unless `overwrite`, and then the old run stays whole until the block ends without an exception:
    stage=True builds the new run in `<parent>/.<name>.staging-<random>` (yielded), then swaps it in (old renamed
    aside, new renamed in, old deleted); stage=False, for a command whose files name their own directory, yields
    `path` with the old run set aside as `.<name>.previous-<random>`, deleted at the end or put back on an
    exception. An overwrite that raises leaves `path` as it was.
    A process killed part-way leaves the old run whole; the next `run_directory` on `path` puts back or finishes
    what it left and deletes its staging directory (`_recover`), so nothing blocks the next try.
    The lock `<parent>/.<name>.lock` (holder's pid, host and start in `.<name>.lock.json`) is held for the whole
    block: another process asking for `path` meanwhile gets a ConfigError naming the holder.
    In a multi-process launch the main process alone writes the run: a process of rank > 0 gets `path` unlocked
    when resuming (to read checkpoints), else a scratch directory deleted afterwards.
    """
    path = Path(path)
    full = Path(os.path.abspath(path))
    parent, name = full.parent, full.name
    rank = int(os.environ.get("RANK") or 0)
    if rank > 0:
        if resume:
            yield path
        else:
            with tempfile.TemporaryDirectory(prefix=f"marsrm-rank-{rank}-") as scratch:
                yield Path(scratch)
        return
    parent.mkdir(parents=True, exist_ok=True)
    with _run_lock(parent, name, path):
        _recover(parent, name)
        if full.exists() and not full.is_dir():
            raise ConfigError(f"setting 'output': {path} is a file, not a run directory; choose another --output")
        if resume or not full.exists() or not any(full.iterdir()):
            if not resume:
                full.mkdir(exist_ok=True)
            yield path
            return
        if not overwrite:
            raise ConfigError(f"setting 'output': {path} already holds a run; pass --overwrite to replace it or "
                              "choose another --output")
        token = os.urandom(4).hex()
        if stage:
            staging = parent / f".{name}{_STAGING}{token}"
            staging.mkdir()
            try:
                yield staging
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
            replaced = parent / f".{name}{_REPLACED}{token}"
            if full.exists():
                os.replace(full, replaced)
            os.replace(staging, full)
            shutil.rmtree(replaced, ignore_errors=True)
        else:
            previous = parent / f".{name}{_PREVIOUS}{token}"
            os.replace(full, previous)
            try:
                full.mkdir()
                yield path
            except BaseException:
                shutil.rmtree(full, ignore_errors=True)
                os.replace(previous, full)
                raise
            shutil.rmtree(previous, ignore_errors=True)


def _recover(parent: Path, name: str) -> None:
    """Put back or finish what a killed `run_directory` left beside `<parent>/<name>`; only under its lock."""
    full, pattern = parent / name, f".{glob.escape(name)}"
    staging = sorted(p for p in parent.glob(f"{pattern}{_STAGING}*") if p.is_dir())
    for replaced in sorted(parent.glob(f"{pattern}{_REPLACED}*")):  # killed within a swap: the new run is complete
        if not full.exists():
            os.replace(staging.pop() if staging else replaced, full)
        shutil.rmtree(replaced, ignore_errors=True)
    for previous in sorted(parent.glob(f"{pattern}{_PREVIOUS}*")):  # killed while building in place: not complete
        if full.exists():
            shutil.rmtree(full)
        os.replace(previous, full)
    for leftover in staging:  # killed while building beside it
        shutil.rmtree(leftover, ignore_errors=True)


@contextlib.contextmanager
def _run_lock(parent: Path, name: str, shown: Path):
    """Hold `<parent>/.<name>.lock`, its holder written beside it; a ConfigError naming the holder when taken."""
    from filelock import FileLock, Timeout

    lock_path, holder_path = parent / f".{name}{_LOCK}", parent / f".{name}{_HOLDER}"
    while True:
        lock = FileLock(str(lock_path), timeout=0)
        try:
            lock.acquire()
        except Timeout:
            raise ConfigError(f"setting 'output': {shown} is being written by {_holder(holder_path)}; wait for it "
                              "or choose another --output") from None
        # A holder deletes the lock file as it lets go (so none is left behind); a file opened just before that is
        # locked by nobody else, so the lock counts only on the file that the name still points to.
        fd = getattr(getattr(lock, "_context", None), "lock_file_fd", None)
        with contextlib.suppress(FileNotFoundError):
            if fd is None or os.path.samestat(os.fstat(fd), os.stat(lock_path)):
                break
        lock.release()
    try:
        atomic_write_json(holder_path, {"pid": os.getpid(), "host": socket.gethostname(),
                                        "since": time.strftime("%Y-%m-%d %H:%M:%S %z")})
        yield
    finally:
        holder_path.unlink(missing_ok=True)
        lock_path.unlink(missing_ok=True)  # while still held: see above
        lock.release()


def _holder(holder_path: Path) -> str:
    try:
        holder = json.loads(holder_path.read_text(encoding="utf-8"))
        return f"process {holder['pid']} on host {holder['host']} since {holder['since']}"
    except (OSError, ValueError, KeyError, TypeError):  # taken a moment ago: its holder is not written yet
        return "another process"


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def atomic_write_json(path: str | os.PathLike, payload) -> Path:
    return atomic_write_text(path, json.dumps(payload, indent=2, sort_keys=False, default=_jsonable) + "\n")


def _jsonable(value):
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "__dataclass_fields__"):
        from dataclasses import asdict

        return asdict(value)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


METRICS_FILE = "metrics.jsonl"


# Record fields that say where a line belongs, not how the run is doing: kept in metrics.jsonl, not plotted.
BOOKKEEPING_FIELDS = frozenset({"step", "round", "seed"})


class MetricsLog:
    """Appends one JSON object per line to `metrics.jsonl`, and mirrors numbers to TensorBoard.

    Every field goes to metrics.jsonl; TensorBoard gets the numeric ones except `BOOKKEEPING_FIELDS`, as
    `<event>/<field>` scalars, and on `close` the run's hyperparameters (hparams plugin, once per run): `hparams`,
    or else the resolved settings in the run directory's config.yaml, flattened to `section.field`.
    """

    def __init__(self, run_dir: str | os.PathLike, tensorboard: bool = True, hparams: dict | None = None):
        self.path = Path(run_dir) / METRICS_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._hparams = hparams
        self._tags: list[str] = []
        self._writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._writer = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"))
            except ImportError:  # tensorboard is a declared dependency; a stripped install still trains
                self._writer = None

    def log(self, record: dict, step: int | None = None) -> None:
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record, default=_jsonable) + "\n")
            handle.flush()
        if self._writer is not None and step is not None:
            prefix = record.get("event", "metrics")
            for key, value in record.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool) and key not in BOOKKEEPING_FIELDS:
                    tag = f"{prefix}/{key}"
                    if tag not in self._tags:
                        self._tags.append(tag)
                    self._writer.add_scalar(tag, value, step)

    def _write_hparams(self) -> None:
        """The hparams plugin's three summaries, in this run's own directory beside its scalars (add_hparams would
        start a second run in a subdirectory); the metrics it lists are the scalar tags logged."""
        from torch.utils.tensorboard.summary import hparams as hparams_summaries

        settings = self._hparams
        if settings is None:
            config = self.path.parent / "config.yaml"
            if not config.exists():
                return
            import yaml

            settings = yaml.safe_load(config.read_text(encoding="utf-8")) or {}
        flat = hparam_values(settings)
        if not flat:
            return
        for summary in hparams_summaries(flat, {tag: None for tag in self._tags}):
            self._writer.file_writer.add_summary(summary)

    def close(self) -> None:
        if self._writer is not None:
            self._write_hparams()
            self._writer.flush()
            self._writer.close()
            self._writer = None


def hparam_values(settings: dict, prefix: str = "") -> dict:
    """Nested settings as TensorBoard hyperparameters: {"section.field": number, bool or str}."""
    flat = {}
    for key, value in settings.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(hparam_values(value, f"{name}."))
        elif isinstance(value, (bool, int, float, str)):
            flat[name] = value
        else:  # lists and None: the plugin takes scalars only
            flat[name] = json.dumps(value, default=str)
    return flat


def read_metrics(run_dir: str | os.PathLike, event: str | None = None) -> list[dict]:
    """The records of a run's `metrics.jsonl` (what `MetricsLog` wrote), in order; only `event` ones when given.

    Blank lines are skipped, and reading stops at a line that is not JSON: the last line of a process killed
    while writing it. FileNotFoundError when the run has no metrics.jsonl.
    """
    records = []
    with open(Path(run_dir) / METRICS_FILE, encoding="utf-8") as handle:
        for line in handle:
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                break
    return [r for r in records if r.get("event") == event] if event is not None else records
