"""The llama.cpp generation engine: seeded samples decoded with continuous batching through llama-cpp-python.

`marsrm.lm.choose_engine` picks it for GGUF models on the CPU (`engine="auto"`); the `local` paraphraser, semantic
refinement and best-of-N sampling all reach it through `LlamaEngine.generate`.

- KV cache (`cache`): "per-row" (default) gives every stream its own cells (llama.cpp's non-unified cache), so a
  decode step's attention spans each row's own prefix, prompt and tokens and nothing else; a copy between streams
  copies the cells. "shared" keeps one cache for all streams (llama.cpp's unified cache), where a copy shares its
  source's cells, so the prefix and each prompt are stored once but every query attends over every cell in use
  (on best-of-N's long prompts ×1.46 slower than per-row; on short paraphrase prompts 7% faster, bench/README.md).
  Either way, stream 0
  holds the shared prefix (the paraphrase prompt's system line, worked examples and instruction), computed once
  per call; a *template* stream holds one distinct prompt (prefix + row), computed once for all of its samples
  (the n paraphrases of a text, the N best-of-N samples of a prompt); the *slot* streams decode, each starting as
  a copy of its template. llama.cpp decodes the per-row streams of one call together only when their ids run
  without a gap, so the engine keeps the decoding slots packed at the lowest stream ids (a row whose slot ends
  below others moves down, its cells copied bitwise).
- Continuous batching: each `llama_decode` call carries the next token of every decoding slot; a row that ends
  frees its slot and the next row takes it at once, its template's prompt decoded in a call of its own.
- Sampling: Gumbel-max over the top-k/top-p candidates at temperature T, one numpy PCG64 stream per row seeded by
  the row's seed, `top_k` uniforms a step: a row's tokens depend on its seed and its logits only.
- Determinism: a call starts from an empty cache and schedules its rows in a fixed order, so the same call gives
  the same tokens, whatever ran before it and whatever the thread count (tests/test_llamacpp.py). With the
  per-row cache a row's logits are bitwise the same alone or beside any other rows (each stream's attention is
  its own, and the weights' kernels compute each row on its own), so a row's tokens depend on its prompt, seed
  and budget only, and callers may keep each finished row on resume. With the shared cache they may differ with
  the rows decoded beside it (measured: up to 1.1 in a logit), so callers keep whole calls.
- Kernels: "portable" is the llama-cpp-python that `make setup` builds for AVX2 (it runs on any x86-64 machine
  of the last decade); "avx512-bf16" is a second build of the same llama.cpp for CPUs with AVX-512 VNNI and BF16,
  which `make setup` also compiles and which is loaded only where /proc/cpuinfo lists every instruction it was
  built for. "auto" (default) takes the second where it can run. A process loads one of them, at its first use.
  On the AVX-512 BF16 kernels the KV cache is BF16 too and the default is 64 slots (32 on the portable ones).
- Weights: "auto" (default) is "bf16" with the AVX-512 BF16 kernels (×1.5 faster per batched step there than Q8_0)
  and "q8_0" otherwise (the fastest format on the portable kernels). Both convert the model's GGUF file once
  with llama.cpp's own quantizer (cached under $MARSRM_CACHE/gguf); "f16" converts to float16, "as-is" uses the
  file unchanged (Q4_1, the format SmolLM2 ships in). Kernels and weights both change the round-off, so
  outputs are the same between machines only with the same pair (`kernels="portable", weights="q8_0"` gives it
  on every machine).
- Threads: "auto" adapts between one thread and all usable cores by measured throughput, so a busy machine
  (another job on one of two cores) runs at the speed of the cores it has instead of stalling on spinning threads.

Long because the scheduler (templates, slots, packing), the cache layouts, the sampler and the thread tuner share
one call's state and its determinism argument, which reads best in one place.
"""
from __future__ import annotations

import ctypes
import hashlib
import importlib.metadata
import os
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from marsrm.config import ConfigError
from marsrm.features import cache_root

WEIGHTS = ("auto", "q8_0", "bf16", "f16", "as-is")
KERNELS = ("auto", "portable", "avx512-bf16")
# the instructions the avx512-bf16 build is compiled for (scripts/build_llama_avx512.sh reads this list to decide
# whether to build it), as /proc/cpuinfo spells them
AVX512_BF16_FLAGS = ("avx2", "fma", "f16c", "bmi2", "avx512f", "avx512cd", "avx512vl", "avx512dq", "avx512bw",
                     "avx512vbmi", "avx512_vnni", "avx512_bf16")
CACHES = ("per-row", "shared")
DEFAULT_SLOTS = {"portable": 32, "avx512-bf16": 64}  # rows decoded together (by measurement, bench/README.md)
GGML_TYPE_BF16 = 30  # ggml.h (llama-cpp-python names only some of ggml's types)
TEMPLATES = 8  # prompts computed ahead of the slots that will copy them
PAD = TEMPLATES + 1  # the stream of the spare row that keeps a lone row's step at two rows (see `_decode`)
FIRST_SLOT = PAD + 1  # streams: 0 the prefix, 1..TEMPLATES the templates, PAD, then the slots
MAX_STREAMS = 256  # llama.cpp's limit on sequences in one context (LLAMA_MAX_SEQ)
_LOCK = threading.Lock()
_BACKEND: dict = {}


class EngineError(ConfigError):
    """llama.cpp cannot run as asked (not installed, a file it cannot read, a prompt too long for the context)."""


def avx512_build() -> Path:
    """The folder of llama.cpp's libraries built for AVX-512 BF16: $MARSRM_LLAMA_AVX512, else where `make setup`
    puts them (beside the virtual environment's packages)."""
    return Path(os.environ.get("MARSRM_LLAMA_AVX512") or Path(sys.prefix) / "llama-cpp-avx512")


def cpu_flags() -> set[str]:
    """The instruction-set flags of this machine's CPU (empty where /proc/cpuinfo cannot be read)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as lines:
            for line in lines:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _bindings_version() -> str | None:
    try:
        return importlib.metadata.version("llama_cpp_python")
    except importlib.metadata.PackageNotFoundError:
        return None


def avx512_unavailable(flags: set[str] | None = None, build: Path | None = None) -> str | None:
    """Why the avx512-bf16 kernels cannot run here, or None when they can: a CPU instruction they need is
    missing, or the build is absent or was made for another version of llama-cpp-python (its C interface)."""
    flags = cpu_flags() if flags is None else flags
    missing = [flag for flag in AVX512_BF16_FLAGS if flag not in flags]
    if missing:
        return f"this CPU lacks {', '.join(missing)}"
    build = avx512_build() if build is None else build
    stamp = build / "VERSION"
    if not (build / "libllama.so").is_file() or not stamp.is_file():
        return f"{build} holds no AVX-512 build of llama.cpp (`make setup` compiles it)"
    version, bindings = stamp.read_text(encoding="utf-8").strip(), _bindings_version()
    if version != bindings:
        return (f"{build} was built for llama-cpp-python {version}, but {bindings} is installed "
                "(`make setup` rebuilds it)")
    return None


def resolve_kernels(kernels: str, *, flags: set[str] | None = None, build: Path | None = None) -> str:
    """"portable" or "avx512-bf16" for the `kernels` setting: "auto" takes the kernels already loaded in this
    process, else avx512-bf16 where it can run; asking for avx512-bf16 where it cannot run is an error."""
    if kernels not in KERNELS:
        raise EngineError(f"setting 'kernels': '{kernels}' (choose {', '.join(KERNELS)})")
    if kernels == "portable":
        return kernels
    if kernels == "auto" and "kernels" in _BACKEND:
        return _BACKEND["kernels"]
    problem = avx512_unavailable(flags, build)
    if problem is None:
        return "avx512-bf16"
    if kernels == "auto":
        return "portable"
    raise EngineError(f"setting 'kernels': avx512-bf16 cannot run here: {problem}; choose auto or portable")


def resolve_weights(weights: str, kernels: str) -> str:
    """The weight format for the `weights` setting: "auto" is bf16 on the AVX-512 BF16 kernels, else q8_0."""
    if weights not in WEIGHTS:
        raise EngineError(f"setting 'weights': '{weights}' (choose {', '.join(WEIGHTS)})")
    if weights == "auto":
        return "bf16" if kernels == "avx512-bf16" else "q8_0"
    return weights


def _llama(kernels: str = "auto"):
    """The llama_cpp module with its backend initialised and its log silenced, loaded once per process with the
    `kernels` asked for ("auto" also takes whichever is loaded already)."""
    if kernels == "auto" and "module" in _BACKEND:  # every decode step and sampled token comes here
        return _BACKEND["module"]
    kernels = resolve_kernels(kernels)
    with _LOCK:
        if "module" not in _BACKEND:
            saved = os.environ.get("LLAMA_CPP_LIB_PATH")
            if kernels == "avx512-bf16":  # llama-cpp-python loads its libraries from here instead of its own
                os.environ["LLAMA_CPP_LIB_PATH"] = str(avx512_build())
            try:
                import llama_cpp
            except ImportError as err:
                raise EngineError("setting 'engine': llama.cpp needs the package llama-cpp-python (`make setup` "
                                  "builds it), or choose engine 'transformers'") from err
            finally:  # child processes (a llama.cpp server) choose for themselves
                if saved is None:
                    os.environ.pop("LLAMA_CPP_LIB_PATH", None)
                else:
                    os.environ["LLAMA_CPP_LIB_PATH"] = saved
            callback = llama_cpp.llama_log_callback(lambda level, text, data: None)
            llama_cpp.llama_log_set(callback, None)
            llama_cpp.llama_backend_init()
            # the callback must outlive every call
            _BACKEND.update(module=llama_cpp, log=callback, kernels=kernels)
        elif kernels != _BACKEND["kernels"]:
            raise EngineError(f"setting 'kernels': this process runs llama.cpp's {_BACKEND['kernels']} kernels "
                              f"already and can load only one set; ask for {kernels} in another process")
        return _BACKEND["module"]


def system_info() -> str:
    """llama.cpp's own account of the kernels it runs (the instruction sets compiled in)."""
    return _llama().llama_print_system_info().decode(errors="replace")


def parse_threads(value) -> str | int:
    """The `threads` setting: "auto", or a positive number (a string from the command line is accepted)."""
    if value == "auto":
        return value
    try:
        count = int(value)
    except (TypeError, ValueError):
        count = 0
    if count < 1 or (isinstance(value, float) and value != count):
        raise EngineError(f"setting 'threads': '{value}' (auto, or a positive number of threads)")
    return count


def converted_weights(path: str | os.PathLike, weights: str) -> Path:
    """The GGUF file to load for `weights`: the file itself ("as-is"), or its conversion, made once and cached
    under $MARSRM_CACHE/gguf keyed by the source's name, size and modification time."""
    path = Path(path)
    if weights not in WEIGHTS or weights == "auto":
        raise EngineError(f"setting 'weights': '{weights}' (choose {', '.join(WEIGHTS[1:])})")
    if weights == "as-is":
        return path
    stat = path.stat()
    digest = hashlib.sha256(f"{path.resolve()}\x00{stat.st_size}\x00{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    target = cache_root() / "gguf" / f"{path.stem}.{digest}.{weights}.gguf"
    if target.is_file():
        return target
    llama = _llama()
    params = llama.llama_model_quantize_default_params()
    params.ftype = {"q8_0": llama.LLAMA_FTYPE_MOSTLY_Q8_0, "bf16": llama.LLAMA_FTYPE_MOSTLY_BF16,
                    "f16": llama.LLAMA_FTYPE_MOSTLY_F16}[weights]
    params.allow_requantize = True
    params.nthread = max(1, len(os.sched_getaffinity(0)))
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
    if llama.llama_model_quantize(str(path).encode(), str(partial).encode(), ctypes.byref(params)) != 0:
        partial.unlink(missing_ok=True)
        raise EngineError(f"setting 'weights': llama.cpp could not convert {path} to {weights}; use 'as-is'")
    os.replace(partial, target)  # atomic: a killed conversion leaves no half file behind
    return target


@dataclass
class _Row:
    """One sample being decoded in a slot."""

    index: int
    budget: int
    rng: np.random.Generator
    history: list[int]  # prefix + prompt tokens (repetition penalty)
    template: "_Template | None" = None
    tokens: list[int] = field(default_factory=list)
    position: int = 0


@dataclass
class _Template:
    """A distinct prompt, decoded once into its own stream; its rows start from a copy of it."""

    prompt: list[int]
    rows: deque
    logits: np.ndarray | None = None
    live: int = 0  # rows decoding in slots that still share this prompt's cells


class ThreadTuner:
    """Chooses the thread count by measured throughput: mostly the best so far, now and then a short probe of the
    other counts (so a machine that becomes busy, or idle again, is noticed within a few seconds)."""

    def __init__(self, counts: list[int], *, window: int = 8, explore_every: int = 12):
        self.counts, self.window, self.explore_every = counts, window, explore_every
        self.rate = {c: None for c in counts}
        self.current, self.windows = counts[-1], 0
        self._tokens = self._seconds = 0.0
        self._steps = 0

    def record(self, tokens: int, seconds: float) -> int | None:
        """Account one decode call; returns a new thread count to use, or None to keep the current one."""
        self._tokens, self._seconds, self._steps = self._tokens + tokens, self._seconds + seconds, self._steps + 1
        if self._steps < self.window or len(self.counts) == 1:
            return None
        rate = self._tokens / max(self._seconds, 1e-9)
        old = self.rate[self.current]
        self.rate[self.current] = rate if old is None else 0.5 * (old + rate)
        self._tokens = self._seconds = self._steps = 0
        self.windows += 1
        unmeasured = [c for c in self.counts if self.rate[c] is None]
        if unmeasured:
            choice = unmeasured[0]
        elif self.windows % self.explore_every == 0:
            others = [c for c in self.counts if c != self.current]
            choice = others[(self.windows // self.explore_every) % len(others)]
        else:
            choice = max(self.counts, key=lambda c: self.rate[c])
        if choice == self.current:
            return None
        self.current = choice
        return choice


class LlamaEngine:
    """Seeded sampling from a GGUF model with continuous batching (see the module docstring)."""

    def __init__(self, path: str | os.PathLike, *, weights: str = "auto", slots: int | None = None,
                 threads: str | int = "auto", cache: str = "per-row", kernels: str = "auto"):
        self.kernels = resolve_kernels(kernels)
        weights = resolve_weights(weights, self.kernels)
        slots = slots or DEFAULT_SLOTS[self.kernels]
        if cache not in CACHES:
            raise EngineError(f"setting 'cache': '{cache}' (choose {', '.join(CACHES)})")
        if not 1 <= slots <= MAX_STREAMS - FIRST_SLOT:
            raise EngineError(f"setting 'batch_size': between 1 and {MAX_STREAMS - FIRST_SLOT} slots with "
                              f"llama.cpp (got {slots})")
        threads = parse_threads(threads)
        cores = max(1, len(os.sched_getaffinity(0)))
        self.thread_counts = sorted({1, cores}) if threads == "auto" else [threads]
        self.source, self.weights, self.slots, self.cache = Path(path), weights, slots, cache
        self.model = self.ctx = self.batch = None
        self.cells = self.n_batch = 0
        self.tuner = ThreadTuner(self.thread_counts)
        # decode calls, their seconds and tokens; "step_*" of them the calls that decode one token per slot (the rest
        # fill the prefix and the prompts); "moves": rows moved down a slot (per-row cache)
        self.stats = {"decode_calls": 0, "decode_seconds": 0.0, "tokens_in": 0, "tokens_out": 0, "step_calls": 0,
                      "step_seconds": 0.0, "step_tokens": 0, "moves": 0}

    def identity(self) -> dict:
        """What of this engine decides its outputs, for a cache's settings. The portable kernels add no key, so
        caches made before there was a choice of kernels stay valid."""
        kernels = {} if self.kernels == "portable" else {"kernels": self.kernels}
        return {"engine": "llama.cpp", "weights": self.weights, "cache": self.cache, **kernels}

    # -- the model and its context -------------------------------------------------------------------

    def load(self):
        if self.model is None:
            llama = _llama(self.kernels)
            path = converted_weights(self.source, self.weights)
            params = llama.llama_model_default_params()
            self.model = llama.llama_model_load_from_file(str(path).encode(), params)
            if not self.model:
                raise EngineError(f"setting 'model': llama.cpp cannot read {path}")
            self.vocab = llama.llama_model_get_vocab(self.model)
            self.n_vocab = llama.llama_vocab_n_tokens(self.vocab)
            self.n_train = llama.llama_model_n_ctx_train(self.model)
        return self.model

    def _context(self, prefix: int, longest: int, budget: int, prompts: int) -> None:
        """A context for a call whose rows continue a `prefix`-token prefix with prompts of up to `longest` tokens
        and up to `budget` new tokens, `prompts` of them in the cache at once (made anew, larger, when a call needs
        more than the current one holds).

        Per-row cache: every stream holds a row's worth of cells (prefix, prompt, budget). Shared cache: one cache
        whose size is what can be in use at once — the prefix, the live prompts (a slot keeps its prompt's cells
        alive), a budget per slot — and no more, since the attention of every decode step spans it.
        """
        llama = _llama()
        self.load()
        need = prefix + longest + budget + 1
        if need > self.n_train:
            raise EngineError(f"a prompt plus its token budget needs {need} tokens; the model's context is "
                              f"{self.n_train} (shorten the prompt, or lower max_new_tokens)")
        streams = FIRST_SLOT + self.slots
        if self.cache == "per-row":
            cells = -(-need // 256) * 256  # per stream
        else:
            cells = -(-(prefix + prompts * longest + self.slots * (budget + 1)) // 256) * 256
        width = max(prefix, longest, self.slots)
        if self.ctx is not None and self.cells >= cells and self.n_batch >= width:
            return
        self.close_context()
        params = llama.llama_context_default_params()
        params.n_seq_max, params.kv_unified = streams, self.cache == "shared"
        params.n_ctx = cells * (streams if self.cache == "per-row" else 1)
        params.n_batch = params.n_ubatch = max(512, -(-width // 256) * 256)
        # flash attention is off: its CPU kernel's sums depend on the thread count, which `threads="auto"` changes
        params.flash_attn_type = llama.LLAMA_FLASH_ATTN_TYPE_DISABLED
        if self.kernels == "avx512-bf16":  # the attention's dot products in BF16 as well (×1.1 there)
            params.type_k = params.type_v = GGML_TYPE_BF16
        params.n_threads = params.n_threads_batch = self.tuner.current
        self.ctx = llama.llama_init_from_model(self.model, params)
        if not self.ctx:
            raise EngineError(f"llama.cpp could not make a context of {params.n_ctx} cells")
        self.memory = llama.llama_get_memory(self.ctx)
        self.batch = llama.llama_batch_init(params.n_batch, 0, 1)
        self.n_batch, self.cells = params.n_batch, cells

    def close_context(self) -> None:
        llama = _BACKEND.get("module")
        if self.ctx is not None and llama is not None:
            llama.llama_batch_free(self.batch)
            llama.llama_free(self.ctx)
        self.ctx = self.batch = None
        self.cells = 0

    def close(self) -> None:
        self.close_context()
        llama = _BACKEND.get("module")
        if self.model is not None and llama is not None:
            llama.llama_model_free(self.model)
        self.model = None

    def is_end(self, token: int) -> bool:
        return bool(_llama().llama_vocab_is_eog(self.vocab, token))

    # -- generation ----------------------------------------------------------------------------------

    def generate(self, rows: list[list[int]], *, seeds: list[int], budgets: list[int], prefix: list[int] | None = None,
                 temperature: float = 1.0, top_k: int = 50, top_p: float = 1.0, no_repeat_ngram_size: int = 0,
                 repetition_penalty: float | None = None, on_done=None) -> list[tuple[list[int], bool]]:
        """Continue each row of prompt token ids (after the shared `prefix`); per row, (its new tokens before the
        end-of-generation token, whether one ended it). `on_done(index, tokens, finished)` as each row ends."""
        llama = _llama()
        prefix = list(prefix or [])
        if not rows:
            return []
        sampler = _Sampler(temperature, top_k, top_p, no_repeat_ngram_size, repetition_penalty)
        groups: dict[tuple, _Template] = {}
        for index, row in enumerate(rows):  # identical prompts share one template
            groups.setdefault(tuple(row), _Template(list(row), deque())).rows.append(index)
        # prompts in the cache at once: enough to keep every slot busy with the fewest rows a prompt has, and the
        # templates being filled ahead of them
        fewest = min(len(t.rows) for t in groups.values())
        limit = min(len(groups), self.slots + TEMPLATES, -(-self.slots // fewest) + TEMPLATES)
        self._context(len(prefix), max(len(r) for r in rows), max(budgets), limit)
        # Every call starts from an empty cache, so where its tokens land (and so its round-off) depends on the
        # call alone, not on the calls before it; stream 0 then holds the shared prefix, computed once per call.
        llama.llama_memory_clear(self.memory, True)
        if prefix:
            self._decode([(t, i, 0, False) for i, t in enumerate(prefix)])
        alive: set[int] = set()  # ids of the templates whose prompt cells are in use
        waiting = deque(groups.values())
        free_templates = list(range(TEMPLATES, 0, -1))
        free_slots = list(range(FIRST_SLOT, FIRST_SLOT + self.slots))  # the lowest free one is taken first
        filling: dict[int, _Template] = {}  # template stream → template (decoded, rows still to start)
        active: dict[int, _Row] = {}  # slot stream → row
        out: list[tuple[list[int], bool] | None] = [None] * len(rows)
        pending = len(rows)
        P = len(prefix)

        def finish(slot: int, row: _Row, ended: bool) -> None:
            nonlocal pending
            out[row.index] = (row.tokens, ended)
            pending -= 1
            llama.llama_memory_seq_rm(self.memory, slot, -1, -1)
            free_slots.append(slot)
            row.template.live -= 1
            if not row.template.live and not row.template.rows:
                alive.discard(id(row.template))
            self.stats["tokens_out"] += len(row.tokens)
            if on_done is not None:
                on_done(row.index, row.tokens, ended)

        while pending:
            # 1. prompts are decoded into free template streams, one call each (a stream's tokens in one piece),
            #    while the slots free now or soon are not all promised to templates decoded already
            while waiting and free_templates and len(alive) < limit and \
                    sum(len(t.rows) for t in filling.values()) < max(1, len(free_slots)):
                template, stream = waiting.popleft(), free_templates.pop()
                alive.add(id(template))
                llama.llama_memory_seq_rm(self.memory, stream, -1, -1)
                if P:
                    llama.llama_memory_seq_cp(self.memory, 0, stream, -1, -1)
                last = len(template.prompt) - 1
                template.logits = self._decode([(t, P + i, stream, i == last)
                                                for i, t in enumerate(template.prompt)])[stream]
                filling[stream] = template
            # 2. rows of decoded templates take the free slots; their first token comes from the template's logits
            starting = []
            for stream, template in list(filling.items()):
                while template.rows and free_slots:
                    slot, index = min(free_slots), template.rows.popleft()
                    free_slots.remove(slot)
                    llama.llama_memory_seq_rm(self.memory, slot, -1, -1)
                    llama.llama_memory_seq_cp(self.memory, stream, slot, -1, -1)
                    active[slot] = _Row(index, budgets[index], np.random.Generator(np.random.PCG64(int(seeds[index]))),
                                        prefix + template.prompt, template, position=P + len(template.prompt))
                    template.live += 1
                    starting.append((slot, template.logits))
                if not template.rows:
                    del filling[stream]
                    llama.llama_memory_seq_rm(self.memory, stream, -1, -1)
                    free_templates.append(stream)
                    if not template.live:
                        alive.discard(id(template))
            if starting:
                tokens = sampler.choose(np.stack([logits for _, logits in starting]), [active[s] for s, _ in starting])
                for (slot, _), token in zip(starting, tokens, strict=True):
                    self._advance(slot, active, token, finish)
            # 3. one decode call: the next token of every decoding slot, in stream order
            if active:
                if self.cache == "per-row":
                    self._pack(active, free_slots)
                decoding = sorted(active.items())
                outputs = self._decode([(row.tokens[-1], row.position - 1, slot, True) for slot, row in decoding],
                                       step=True)
                tokens = sampler.choose(np.stack([outputs[slot] for slot, _ in decoding]), [r for _, r in decoding])
                for (slot, _), token in zip(decoding, tokens, strict=True):
                    self._advance(slot, active, token, finish)
        return out

    def _pack(self, active: dict, free_slots: list[int]) -> None:
        """Move the highest decoding rows down into the free slots below them, so that the decoding streams' ids
        run without a gap (llama.cpp splits a per-row batch at every gap, one pass over the weights per piece).
        A row's cells are copied bitwise, so where it decodes does not change its tokens."""
        llama = _llama()
        while free_slots and min(free_slots) < max(active):
            low, high = min(free_slots), max(active)
            llama.llama_memory_seq_rm(self.memory, low, -1, -1)
            llama.llama_memory_seq_cp(self.memory, high, low, -1, -1)  # copied before the next decode runs
            llama.llama_memory_seq_rm(self.memory, high, -1, -1)
            active[low] = active.pop(high)
            free_slots.remove(low)
            free_slots.append(high)
            self.stats["moves"] += 1

    def _advance(self, slot: int, active: dict, token: int, finish) -> None:
        """Append a sampled token to the row in `slot`, ending the row at an end token or at its budget."""
        row = active[slot]
        if self.is_end(token):
            del active[slot]
            finish(slot, row, True)
            return
        row.tokens.append(int(token))
        row.position += 1
        if len(row.tokens) >= row.budget:
            del active[slot]
            finish(slot, row, False)

    def _decode(self, entries: list[tuple[int, int, int, bool]], step: bool = False) -> dict[int, np.ndarray]:
        """One llama_decode call over (token, position, stream, wants logits) entries; {stream: logits copy}.

        A step of one row gets a spare row beside it, in the stream just below the slots, its logits asked for
        and dropped: llama.cpp multiplies a one-row batch (and a batch with one output) by the weights with other
        kernels than two rows or more (its matrix-multiply routine starts at two), whose round-off differs in
        BF16, so without it a row's logits would change when the rows beside it end (measured: up to 0.15)."""
        llama = _llama()
        batch = self.batch
        real = len(entries)
        if step and real == 1:
            llama.llama_memory_seq_rm(self.memory, PAD, -1, -1)
            entries = [(entries[0][0], 0, PAD, True), *entries]  # next to the lowest slot, so in the same pass
        for i, (token, position, stream, logits) in enumerate(entries):
            batch.token[i], batch.pos[i], batch.n_seq_id[i] = token, position, 1
            batch.seq_id[i][0], batch.logits[i] = stream, logits
        batch.n_tokens = len(entries)
        started = time.perf_counter()
        code = llama.llama_decode(self.ctx, batch)
        seconds = time.perf_counter() - started
        if code != 0:
            raise EngineError(f"llama.cpp failed to decode a batch of {len(entries)} tokens (code {code})")
        self.stats["decode_calls"] += 1
        self.stats["decode_seconds"] += seconds
        self.stats["tokens_in"] += real
        if step:
            self.stats["step_calls"] += 1
            self.stats["step_seconds"] += seconds
            self.stats["step_tokens"] += real
        change = self.tuner.record(real, seconds)
        if change is not None:
            llama.llama_set_n_threads(self.ctx, change, change)
        out = {}
        for i, (_, _, stream, logits) in enumerate(entries):
            if logits and stream != PAD:
                out[stream] = np.ctypeslib.as_array(llama.llama_get_logits_ith(self.ctx, i),
                                                    shape=(self.n_vocab,)).copy()
        return out


class _Sampler:
    """Per-row seeded choice of the next token from (rows, vocab) logits (greedy at temperature 0)."""

    def __init__(self, temperature, top_k, top_p, no_repeat_ngram_size, repetition_penalty):
        self.temperature, self.top_k, self.top_p = temperature, top_k, top_p
        self.ngram, self.penalty = no_repeat_ngram_size, repetition_penalty

    def choose(self, logits: np.ndarray, rows: list[_Row]) -> list[int]:
        logits = logits.astype(np.float32, copy=True)
        for r, row in enumerate(rows):
            if self.penalty:
                seen = np.unique(np.array(row.history + row.tokens, dtype=np.int64))
                values = logits[r, seen]
                logits[r, seen] = np.where(values > 0, values / self.penalty, values * self.penalty)
            if self.ngram and len(row.tokens) >= self.ngram:
                banned = banned_tokens(row.tokens, self.ngram)
                if banned:
                    logits[r, banned] = -np.inf
        if self.temperature == 0:
            return [int(t) for t in logits.argmax(axis=1)]
        k = min(self.top_k, logits.shape[1])
        index = np.argpartition(-logits, k - 1, axis=1)[:, :k]
        values = np.take_along_axis(logits, index, axis=1)
        order = np.argsort(-values, axis=1, kind="stable")
        index, values = np.take_along_axis(index, order, axis=1), np.take_along_axis(values, order, axis=1)
        scaled = (values - values[:, :1]) / self.temperature
        probs = np.exp(scaled)
        probs /= probs.sum(axis=1, keepdims=True)
        beyond = (np.cumsum(probs, axis=1) - probs) > self.top_p  # keep the smallest prefix reaching top_p
        scaled[beyond] = -np.inf
        uniform = np.stack([row.rng.random(k) for row in rows]).clip(1e-10, 1.0 - 1e-7)
        choice = (scaled - np.log(-np.log(uniform))).argmax(axis=1)
        return [int(index[r, c]) for r, c in enumerate(choice)]


def banned_tokens(tokens: list[int], size: int) -> list[int]:
    """Tokens that would repeat an n-gram of `size` already in `tokens` (generated tokens only)."""
    prefix = tuple(tokens[len(tokens) - size + 1:])
    return [tokens[i + size - 1] for i in range(len(tokens) - size + 1) if tuple(tokens[i:i + size - 1]) == prefix]
