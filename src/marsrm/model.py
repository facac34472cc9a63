"""The reward model: a Hugging Face backbone plus a scalar head; formatting, save/load and scoring.

Two modes share one interface, `RewardModel.score(prompts, responses) -> np.ndarray`:
- `head`: the backbone is frozen; a linear head (or a small MLP) reads pooled embeddings that
  `marsrm.features` computes once and caches on disk.
- `full`: an `AutoModelForSequenceClassification` (num_labels=1) whose weights are all trained
  (optionally through LoRA adapters, merged before saving).

A saved model is a directory. `full` writes a standard Hugging Face directory (TRL, OpenRLHF and
RewardBench load it unchanged: its tokenizer carries the chat template, length and truncation side marsrm
scored with) plus `marsrm.json`; `head` writes `head.safetensors` and `marsrm.json`, which names the backbone
it reads by a portable name and a content hash. Other formats (sentence-transformers) are `marsrm.export`'s.
Every way a directory cannot be used raises `ModelError` (defined in `marsrm.runtime`, beside backbone
resolution and tokenizer loading, and importable from here).

Long because both modes' directory formats are read, checked and written here, in one place.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import os
import types
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from marsrm.data import to_hh_text
from marsrm.features import POOLINGS, Encoder
from marsrm.io import atomic_write, atomic_write_json
from marsrm.metrics import normalize_rewards
from marsrm.packing import last_token_rewards
from marsrm.runtime import (DTYPES, ModelError, backbone_sha256, check_no_pickle, first_line, load_tokenizer, loading,
                            portable_backbone_name, quiet_transformers, resolve_backbone)

MANIFEST = "marsrm.json"
HEAD_WEIGHTS = "head.safetensors"
MODES = ("head", "full")
TEMPLATES = ("auto", "chat", "hh")


# ---------------------------------------------------------------------------------------------
# Model input
# ---------------------------------------------------------------------------------------------

# The HH format of `to_hh_text(prompt, response).lstrip("\n")` as a chat template, so that a saved tokenizer
# renders what marsrm trained on; `add_generation_prompt` ends with "\n\nAssistant:", HH's own prompt ending.
HH_CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if not loop.first %}{{ '\\n\\n' }}{% endif -%}"
    "{%- if message['role'] == 'assistant' %}{{ 'Assistant: ' }}"
    "{%- elif message['role'] == 'system' %}{{ 'System: ' }}"
    "{%- else %}{{ 'Human: ' }}{% endif -%}"
    "{{ message['content'] }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt %}{{ '\\n\\nAssistant:' }}{% endif -%}")


def uses_chat_template(tokenizer, template: str = "auto") -> bool:
    """Whether `format_texts` renders with the tokenizer's chat template (True) or in HH format (False).

    template: "auto" (chat template when the tokenizer has one), "chat" (ModelError when it has none), or "hh".
    """
    has_template = bool(getattr(tokenizer, "chat_template", None))
    if template == "chat" and not has_template:
        raise ModelError("template 'chat': this tokenizer has no chat template; use --template hh")
    return template == "chat" or (template == "auto" and has_template)


def format_texts(tokenizer, prompts, responses, template: str = "auto") -> list[str]:
    """Model input for each (prompt messages, response): the tokenizer's chat template, else HH format.

    template: "auto" (chat template when the tokenizer has one), "chat", or "hh".
    """
    use_chat = uses_chat_template(tokenizer, template)
    texts = []
    for prompt, response in zip(prompts, responses, strict=True):
        if use_chat:
            messages = [dict(m) for m in prompt] + [{"role": "assistant", "content": response}]
            texts.append(tokenizer.apply_chat_template(messages, tokenize=False))
        else:
            texts.append(to_hh_text(prompt, response).lstrip("\n"))
    return texts


@dataclass
class TruncationReport:
    """How many inputs `max_length` cut (from the left), and how many lost part of the response itself."""

    inputs: int = 0
    truncated: int = 0
    response_cut: int = 0

    def add(self, other: "TruncationReport") -> None:
        self.inputs += other.inputs
        self.truncated += other.truncated
        self.response_cut += other.response_cut

    def summary(self, max_length: int) -> str:
        return (f"truncation at {max_length} tokens (left side): {self.truncated}/{self.inputs} inputs truncated, "
                f"{self.response_cut} of them lost part of the response")


def count_truncation(tokenizer, texts, responses, max_length: int) -> TruncationReport:
    """Count inputs longer than `max_length` tokens and responses that alone do not fit."""
    special = tokenizer.num_special_tokens_to_add(pair=False)
    with quiet_transformers():  # untruncated lengths are the point here; skip the "too long" warning
        text_lengths = [len(ids) for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]]
        response_lengths = [len(ids) for ids in tokenizer(list(responses), add_special_tokens=False)["input_ids"]]
    report = TruncationReport(inputs=len(text_lengths))
    for text_len, response_len in zip(text_lengths, response_lengths):
        if text_len + special > max_length:
            report.truncated += 1
            if response_len + special > max_length:
                report.response_cut += 1
    return report


# ---------------------------------------------------------------------------------------------
# Heads
# ---------------------------------------------------------------------------------------------

class ScalarHead(nn.Module):
    """Embedding (…, d) → reward (…,): linear, or an MLP with one hidden layer when `hidden` > 0.

    The output layer has no bias: the Bradley–Terry loss sees only differences r(y+) − r(y−), where a
    bias cancels, so it would get no gradient (only rounding noise, which Adam would amplify).
    """

    def __init__(self, dim: int, hidden: int = 0, dropout: float = 0.0):
        super().__init__()
        self.dim, self.hidden = dim, hidden
        if hidden > 0:
            self.net = nn.Sequential(nn.Dropout(dropout), nn.Linear(dim, hidden), nn.GELU(),
                                     nn.Linear(hidden, 1, bias=False))
        else:
            self.net = nn.Sequential(nn.Dropout(dropout), nn.Linear(dim, 1, bias=False))

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.net(embeddings).squeeze(-1)

    @property
    def linear(self) -> nn.Linear | None:
        """The single linear layer when the head is linear (its weight is θ of r = θᵀφ + b)."""
        return self.net[-1] if self.hidden == 0 else None


# ---------------------------------------------------------------------------------------------
# Reward models
# ---------------------------------------------------------------------------------------------

@dataclass
class ModelSpec:
    """What a saved model needs to score text again; written to `marsrm.json`."""

    mode: str  # "head" | "full"
    backbone: str
    max_length: int = 128
    pooling: str = "mean"
    template: str = "auto"
    head_hidden: int = 0
    embed_dtype: str = "auto"
    trust_remote_code: bool = False
    normalization: dict | None = None  # {"mean": μ, "std": σ} of rewards on the training pairs
    extra: dict = field(default_factory=dict)


class RewardModel:
    """Scores responses to prompts. `score(prompts, responses)` → rewards, shape (n,), float64 numpy."""

    spec: ModelSpec

    def score(self, prompts, responses, *, normalize: bool = False, batch_size: int = 64) -> np.ndarray:
        rewards = self._score(list(prompts), list(responses), batch_size=batch_size)
        return self.normalize(rewards) if normalize else rewards

    def normalize(self, rewards: np.ndarray) -> np.ndarray:
        """Rewards in units of the stored normalization: mean 0, std 1 over the training pairs."""
        if not self.spec.normalization:
            raise ModelError("this model has no stored reward normalization (train it again with marsrm)")
        return normalize_rewards(rewards, self.spec.normalization)

    def score_pairs(self, pairs, *, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
        """Rewards of (chosen, rejected) for a list of `PreferencePair`, in one scoring call."""
        prompts = [p.prompt for p in pairs] * 2
        responses = [p.chosen for p in pairs] + [p.rejected for p in pairs]
        rewards = self.score(prompts, responses, batch_size=batch_size)
        return rewards[: len(pairs)], rewards[len(pairs):]

    def _score(self, prompts, responses, batch_size):  # pragma: no cover - abstract
        raise NotImplementedError


class HeadRewardModel(RewardModel):
    """Frozen backbone + trained head over cached pooled embeddings."""

    def __init__(self, spec: ModelSpec, head: ScalarHead, encoder=None):
        self.spec, self.head = spec, head
        self._encoder = encoder

    @property
    def encoder(self):
        if self._encoder is None:
            self._encoder = Encoder(self.spec.backbone, max_length=self.spec.max_length, pooling=self.spec.pooling,
                                    dtype=self.spec.embed_dtype, trust_remote_code=self.spec.trust_remote_code)
        return self._encoder

    def embed(self, prompts, responses, *, batch_size: int = 64, progress: bool = False) -> np.ndarray:
        texts = format_texts(self.encoder.tokenizer, prompts, responses, self.spec.template)
        return self.encoder.embed(texts, batch_size=batch_size, progress=progress)

    def score_embeddings(self, embeddings: np.ndarray) -> np.ndarray:
        self.head.eval()
        with torch.no_grad():
            return self.head(torch.as_tensor(np.asarray(embeddings), dtype=torch.float32)).double().numpy()

    def _score(self, prompts, responses, batch_size):
        return self.score_embeddings(self.embed(prompts, responses, batch_size=batch_size))

    def save(self, directory: str | os.PathLike) -> Path:
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().contiguous().cpu() for k, v in self.head.state_dict().items()}
        atomic_write(directory / HEAD_WEIGHTS, lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))
        _write_manifest(directory, self.spec, {"head_dim": self.head.dim})
        return directory


class FullRewardModel(RewardModel):
    """A whole `AutoModelForSequenceClassification` with one output: the reward."""

    def __init__(self, spec: ModelSpec, model, tokenizer):
        self.spec, self.model, self.tokenizer = spec, model, tokenizer

    @torch.no_grad()
    def _score(self, prompts, responses, batch_size):
        texts = format_texts(self.tokenizer, prompts, responses, self.spec.template)
        self.model.eval()
        order = np.argsort([len(t) for t in texts], kind="stable")  # similar lengths share a batch: less padding
        rewards = np.empty(len(texts), dtype=np.float64)
        for start in range(0, len(texts), batch_size):
            index = order[start:start + batch_size]
            batch = self.tokenizer([texts[i] for i in index], truncation=True, max_length=self.spec.max_length,
                                   padding=True, return_tensors="pt")
            batch = {k: v.to(self.model.device) for k, v in batch.items()}
            if reads_last_token(self.model):
                scores = last_token_rewards(self.model, batch["input_ids"], batch["attention_mask"])
            else:
                scores = self.model(**batch).logits[:, 0]
            rewards[index] = scores.float().cpu().numpy()
        return rewards

    def save(self, directory: str | os.PathLike) -> Path:
        """Write a standard directory that scores as marsrm does with plain transformers, TRL or RewardBench.

        The tokenizer is saved with the chat template that renders marsrm's input text (HH format unless the
        backbone's own template was used), `model_max_length` = `spec.max_length`, left truncation and right
        padding; config.json names the one output `reward`. The in-memory tokenizer is left as it was.
        """
        directory = Path(directory)
        model = self.model
        if hasattr(model, "merge_and_unload"):  # LoRA: ship plain weights so any loader reads them
            model = copy.deepcopy(model).merge_and_unload()  # a copy: the in-memory model keeps its adapters
        model.config.id2label, model.config.label2id = {0: "reward"}, {"reward": 0}
        model.save_pretrained(directory, safe_serialization=True)
        portable_tokenizer(self.tokenizer, self.spec).save_pretrained(directory)
        _write_manifest(directory, self.spec, {})
        return directory


def portable_tokenizer(tokenizer, spec: ModelSpec):
    """A copy of `tokenizer` whose defaults give marsrm's model input: `apply_chat_template(messages,
    tokenize=False)` renders `format_texts`'s text for `spec.template`, and a plain call with `truncation=True`
    cuts it as marsrm does (from the left, at `spec.max_length` tokens; padding on the right)."""
    portable = copy.deepcopy(tokenizer)
    if not uses_chat_template(tokenizer, spec.template):
        portable.chat_template = HH_CHAT_TEMPLATE
    portable.model_max_length = spec.max_length
    portable.truncation_side, portable.padding_side = "left", "right"
    return portable


def reads_last_token(model) -> bool:
    """Whether a sequence-classification model scores at the last token: a decoder with a `score` layer
    (Llama, Qwen, Gemma, SmolLM, GPT-2, ...), as opposed to an encoder's pooled `classifier`."""
    if hasattr(model, "get_base_model"):  # peft
        model = model.get_base_model()
    return isinstance(getattr(model, "score", None), nn.Module) and not model.config.is_encoder_decoder


def distinct_pad_token(tokenizer, model) -> None:
    """Give a decoder a pad token that differs from EOS, in the tokenizer and in `model.config`.

    transformers' decoder classification reads the reward at the rightmost token that is not the pad token; with
    pad == EOS (SmolLM2, Llama and others) an input ending in EOS would be scored one token early by every tool
    that loads the saved directory. The tokenizer's unknown token is used where it has one distinct from EOS and
    BOS (no new weights); otherwise a `<|pad|>` token is added and the embeddings grow by one row.
    """
    if tokenizer.pad_token_id is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
        if tokenizer.unk_token_id is not None and tokenizer.unk_token_id not in (tokenizer.eos_token_id,
                                                                               tokenizer.bos_token_id):
            tokenizer.pad_token = tokenizer.unk_token
        else:
            tokenizer.add_special_tokens({"pad_token": "<|pad|>"})
            model.resize_token_embeddings(len(tokenizer))
    model.config.pad_token_id = tokenizer.pad_token_id


def new_full_model(spec: ModelSpec, *, lora: dict | None = None, allow_pickle: bool = False, dropout: bool = True,
                   gradient_checkpointing: bool = False):
    """A fresh `full`-mode reward model from the backbone (score head newly initialised); `dropout=False` sets
    every dropout probability of the backbone to 0, as TRL's `disable_dropout` does. A decoder gets a pad token
    distinct from EOS (`distinct_pad_token`); `gradient_checkpointing` recomputes activations in the backward
    pass (less memory, more compute, the same gradients)."""
    from transformers import AutoModelForSequenceClassification

    check_no_pickle(spec.backbone, allow_pickle)
    tokenizer = load_tokenizer(spec.backbone, trust_remote_code=spec.trust_remote_code)
    with loading(spec.backbone), quiet_transformers():  # its report lists the new score head: what we asked for
        model = AutoModelForSequenceClassification.from_pretrained(
            spec.backbone, num_labels=1, trust_remote_code=spec.trust_remote_code, use_safetensors=not allow_pickle)
    if reads_last_token(model):
        distinct_pad_token(tokenizer, model)
    else:
        model.config.pad_token_id = tokenizer.pad_token_id
    if not dropout:
        for module in model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
    if gradient_checkpointing:
        model.config.use_cache = False  # a reward model keeps no cache; checkpointing would warn about it
        if hasattr(model, "activation_checkpointing_enable"):  # the name in newer transformers
            model.activation_checkpointing_enable({"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if lora:
        from peft import LoraConfig, TaskType, get_peft_model

        model = get_peft_model(model, LoraConfig(task_type=TaskType.SEQ_CLS, **lora))
    return FullRewardModel(spec, model, tokenizer)


def load_reward_model(path: str | os.PathLike, *, allow_pickle: bool = False, trust_remote_code: bool = False,
                      device: str | None = None, allow_untrained_head: bool = False) -> RewardModel:
    """Load a saved reward model: a marsrm directory (either mode) or any standard sequence-classification one.

    Every way the directory can be malformed raises `ModelError`, one line naming the file and what to do. A
    directory without trained score-head weights (a plain backbone: transformers would initialise the head at
    random) is refused unless `allow_untrained_head`.
    """
    directory = Path(path)
    if not directory.is_dir():
        what = "is a file, not a model directory" if directory.exists() else "no such model directory"
        raise ModelError(f"{directory}: {what}; pass the directory that `marsrm train` saved (<output>/model)")
    check_no_pickle(str(directory), allow_pickle)
    manifest = directory / MANIFEST
    if manifest.exists():
        spec, extra = read_manifest(manifest)
    elif (directory / "config.json").exists():
        spec, extra = ModelSpec(mode="full", backbone=str(directory), max_length=512), {}
    else:
        raise ModelError(f"{directory}: neither {MANIFEST} nor config.json found; pass the directory that "
                         "`marsrm train` saved (<output>/model), or a sequence-classification model directory")
    spec.trust_remote_code = trust_remote_code  # the caller's choice: a model directory cannot turn it on
    if spec.mode == "head":
        return _load_head_model(directory, spec, extra.get("head_dim"), extra.get("backbone_sha256"))

    from transformers import AutoModelForSequenceClassification

    # Wrong-shaped tensors are reported, not raised, so that they end as a ModelError below.
    with loading(str(directory)), quiet_transformers():
        model, info = AutoModelForSequenceClassification.from_pretrained(
            str(directory), trust_remote_code=spec.trust_remote_code, use_safetensors=not allow_pickle,
            output_loading_info=True, ignore_mismatched_sizes=True)
    _check_loaded_weights(directory, model, info, allow_untrained_head)
    if device:
        model.to(device)
    tokenizer = load_tokenizer(str(directory), trust_remote_code=spec.trust_remote_code)
    return FullRewardModel(spec, model, tokenizer)


def read_manifest(path: Path) -> tuple[ModelSpec, dict]:
    """`marsrm.json` → (its spec, the whole manifest); `ModelError` naming the file and field if malformed."""
    def malformed(problem: str) -> ModelError:
        return ModelError(f"{path}: {problem}; correct it, or save the model again with marsrm")

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise malformed(f"not valid JSON ({err})") from err
    except OSError as err:
        raise ModelError(f"{path}: cannot be read ({err.strerror or err})") from err
    if not isinstance(data, dict):
        raise malformed(f"expected a JSON object, found {type(data).__name__}")
    raw = data.get("spec")
    if not isinstance(raw, dict):
        raise malformed("no 'spec' object" if raw is None else f"'spec' must be an object (got {raw!r})")
    fields = {f.name: f for f in dataclasses.fields(ModelSpec)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise malformed(f"unknown field(s) {', '.join(f'spec.{k}' for k in unknown)}")
    hints = typing.get_type_hints(ModelSpec)
    for name, f in fields.items():
        if name not in raw:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise malformed(f"'spec.{name}' is missing")
        elif not _fits(raw[name], hints[name]):
            raise malformed(f"'spec.{name}' must be {_type_name(hints[name])} (got {raw[name]!r})")
    choices = {"mode": MODES, "pooling": POOLINGS, "template": TEMPLATES, "embed_dtype": DTYPES["embed"]}
    for name, allowed in choices.items():
        if name in raw and raw[name] not in allowed:
            raise malformed(f"'spec.{name}' is {raw[name]!r}; choose one of {', '.join(allowed)}")
    for name, low in (("max_length", 8), ("head_hidden", 0)):
        if name in raw and raw[name] < low:
            raise malformed(f"'spec.{name}' must be at least {low} (got {raw[name]})")
    norm = raw.get("normalization")
    if norm is not None and not all(_fits(norm.get(k), float) for k in ("mean", "std")):
        raise malformed(f"'spec.normalization' must hold numbers 'mean' and 'std' (got {norm!r})")
    head_dim = data.get("head_dim")
    if head_dim is not None and not (_fits(head_dim, int) and head_dim > 0):
        raise malformed(f"'head_dim' must be a positive integer (got {head_dim!r})")
    digest = data.get("backbone_sha256")
    if digest is not None and not (isinstance(digest, str) and len(digest) == 64
                                   and all(c in "0123456789abcdef" for c in digest)):
        raise malformed(f"'backbone_sha256' must be 64 lowercase hex digits (got {digest!r})")
    return ModelSpec(**raw), data


def _fits(value, kind) -> bool:
    """Whether a JSON value has the declared type (`int | None`, `dict`, …); bools are not numbers."""
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        return any(_fits(value, arg) for arg in typing.get_args(kind))
    if kind is type(None):
        return value is None
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, typing.get_origin(kind) or kind)


def _type_name(kind) -> str:
    names = {str: "a string", int: "an integer", bool: "true or false", dict: "an object", type(None): "null"}
    args = typing.get_args(kind) if typing.get_origin(kind) is not None else (kind,)
    return " or ".join(names.get(arg, str(arg)) for arg in args)


def _load_head_model(directory: Path, spec: ModelSpec, head_dim: int | None,
                     backbone_digest: str | None = None) -> HeadRewardModel:
    """The head of a `head`-mode directory, checked against its manifest and against the backbone it names
    (and, when the manifest holds one, against the backbone's content hash `backbone_digest`)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    from transformers import AutoConfig

    manifest, weights = directory / MANIFEST, directory / HEAD_WEIGHTS
    if not weights.is_file():
        raise ModelError(f"{weights}: missing; a head-mode model needs its trained head: copy the whole model "
                         "directory again, or train it again")
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError) as err:
        raise ModelError(f"{weights}: not a readable safetensors file ({first_line(err)}); it is damaged or cut "
                         "short: copy the model directory again, or train it again") from err
    first = state.get("net.1.weight")
    dim = head_dim or (int(first.shape[-1]) if first is not None and first.ndim == 2 else None)
    expected = {k: tuple(v.shape) for k, v in ScalarHead(dim or 1, spec.head_hidden).state_dict().items()}
    found = {k: tuple(v.shape) for k, v in state.items()}
    if dim is None or found != expected:
        raise ModelError(f"{weights}: holds tensors {found}, but {MANIFEST} describes a head with input dimension "
                         f"{dim or '?'} and head_hidden {spec.head_hidden} ({expected}); the two files come from "
                         "different models: copy the model directory again, or train it again")
    named = spec.backbone
    try:
        spec.backbone = resolve_backbone(spec.backbone)
        with loading(spec.backbone):
            config = AutoConfig.from_pretrained(spec.backbone, trust_remote_code=spec.trust_remote_code)
    except ModelError as err:
        wanted = f" with sha256 {backbone_digest[:12]}…" if backbone_digest else ""
        raise ModelError(f"{manifest}: {err}; this model needs that backbone{wanted} (if the backbone moved, set "
                         f"'spec.backbone' in {MANIFEST} to its new place)") from err
    found = backbone_sha256(spec.backbone) if backbone_digest else None
    if found is not None and found != backbone_digest:
        raise ModelError(f"{manifest}: backbone '{named}' ({spec.backbone}) is not the one this head was trained on "
                         f"(its config and weights hash to sha256 {found[:12]}…, {MANIFEST} records "
                         f"{backbone_digest[:12]}…); install that backbone, or set 'spec.backbone' to a directory "
                         "holding it")
    width = getattr(config, "hidden_size", None)
    if width is not None and width != dim:
        raise ModelError(f"{weights}: the head reads {dim}-dimensional embeddings, but backbone '{spec.backbone}' "
                         f"(named in {manifest}) gives {width}-dimensional ones; set 'spec.backbone' to the backbone "
                         "this head was trained on")
    head = ScalarHead(dim, spec.head_hidden)
    head.load_state_dict(state)
    return HeadRewardModel(spec, head)


def _check_loaded_weights(directory: Path, model, info: dict, allow_untrained_head: bool) -> None:
    """Refuse weights that transformers had to initialise: wrong-shaped or missing tensors (the backbone's
    always; the score head's unless `allow_untrained_head`)."""
    mismatched = sorted(info["mismatched_keys"])
    if mismatched:
        shapes = ", ".join(f"{key} is {tuple(ckpt)}, config.json wants {tuple(want)}"
                           for key, ckpt, want in mismatched[:3])
        raise ModelError(f"{directory}: weights of the wrong shape ({shapes}); the weights and config.json come "
                         "from different models: save, copy or download the model again")
    missing = sorted(info["missing_keys"])
    body = [key for key in missing if key.startswith(f"{model.base_model_prefix}.")]
    if body:
        raise ModelError(f"{directory}: the weight files lack {len(body)} backbone tensor(s) ({', '.join(body[:3])}); "
                         "they are incomplete or from another model: save, copy or download the model again")
    if missing and not allow_untrained_head:
        raise ModelError(f"{directory}: no trained score head (transformers would initialise {', '.join(missing)} "
                         "at random): this is a plain backbone, not a reward model; train one with `marsrm train`, "
                         "or allow an untrained head (--allow-untrained-head) to evaluate it anyway")


def export_head_model(model: HeadRewardModel, directory: str | os.PathLike) -> Path:
    """Turn a `head` model into a standard `AutoModelForSequenceClassification` directory, where that is exact.

    Exact only when the architecture's own classification head computes the same function: a decoder
    whose sequence-classification head is a bias-free linear layer on the last token, with a linear head
    trained on `last` pooling. Anything else raises `ModelError` saying why.
    """
    from transformers import AutoConfig, AutoModelForSequenceClassification

    spec = model.spec
    if spec.head_hidden:
        raise ModelError("export: an MLP head has no counterpart in a standard sequence-classification head; "
                         "train with a linear head (head_hidden 0) or train in full mode")
    with loading(spec.backbone):
        config = AutoConfig.from_pretrained(spec.backbone, trust_remote_code=spec.trust_remote_code)
    if spec.pooling != "last" or getattr(config, "is_encoder_decoder", False) or config.model_type in {
            "bert", "roberta", "distilbert", "xlm-roberta", "deberta", "deberta-v2", "electra", "mpnet"}:
        raise ModelError(
            f"export: backbone type '{config.model_type}' with '{spec.pooling}' pooling cannot be expressed exactly as "
            "AutoModelForSequenceClassification (encoders classify from a pooler with its own dense+tanh layer, and "
            "mean pooling has no standard head); use `marsrm train --mode full` for a standard directory, or load "
            "this one with marsrm.load_reward_model")
    with loading(spec.backbone):
        seq = AutoModelForSequenceClassification.from_pretrained(spec.backbone, num_labels=1, use_safetensors=True,
                                                                 trust_remote_code=spec.trust_remote_code)
    score = getattr(seq, "score", None)
    if score is None or score.bias is not None:
        raise ModelError(f"export: {config.model_type} has no bias-free `score` layer on the last token")
    with torch.no_grad():
        score.weight.copy_(model.head.linear.weight)
    tokenizer = copy.deepcopy(model.encoder.tokenizer)  # the encoder keeps its own pad token
    distinct_pad_token(tokenizer, seq)
    seq.config.id2label, seq.config.label2id = {0: "reward"}, {"reward": 0}
    directory = Path(directory)
    seq.save_pretrained(directory, safe_serialization=True)
    portable_tokenizer(tokenizer, spec).save_pretrained(directory)
    _write_manifest(directory, ModelSpec(**{**asdict(spec), "mode": "full"}), {})
    return directory


def _write_manifest(directory: Path, spec: ModelSpec, extra: dict) -> None:
    """`marsrm.json`: the spec with the backbone under its portable name (`portable_backbone_name`), plus the
    backbone's content hash `backbone_sha256` when its files are local, so that a copied model finds it again."""
    portable = {**asdict(spec), "backbone": portable_backbone_name(spec.backbone)}
    digest = backbone_sha256(spec.backbone)
    payload = {"format": "marsrm-reward-model", "version": 1, "spec": portable,
               **({"backbone_sha256": digest} if digest else {}), **extra}
    atomic_write_json(directory / MANIFEST, payload)

