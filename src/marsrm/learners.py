"""Learners: what the training loop asks of a reward model, in either mode, declared once (`Learner`).

A learner wraps a reward model for training: scores and margins of any pairs, Bradley–Terry epochs on them,
checkpoints. `HeadLearner` trains a score head on cached embeddings of a frozen backbone; `FullLearner`
fine-tunes the whole sequence-classification model on token ids: for a causal backbone whose attention takes an
explicit mask, each pair as one shared-prompt segment (`marsrm.packing`), else as two padded rows. `make_learner`
picks one for a model.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from marsrm import metrics
from marsrm.config import ConfigError
from marsrm.model import FullRewardModel, HeadRewardModel, format_texts, reads_last_token
from marsrm.packing import pair_tokens, supports_packing
from marsrm.train import HeadExamples, OptimSettings, PackedExamples, TokenExamples, make_accelerator, train_epochs

logger = logging.getLogger(__name__)


class Learner(Protocol):
    """The interface `marsrm.loop`, `train` and `compare` use; pairs are `PreferencePair`s."""

    def prepare(self, pairs) -> None:
        """Make later calls on `pairs` cheap (head mode: embed them into the cache); may do nothing."""

    def scores(self, pairs) -> tuple[np.ndarray, np.ndarray]:
        """(chosen, rejected) rewards, each shape (n,)."""

    def margins(self, pairs) -> np.ndarray:
        """r(chosen) − r(rejected), shape (n,)."""

    def fit(self, pairs, optim: OptimSettings, *, weight=None, step_offset: int = 0, desc: str = "training") -> dict:
        """Bradley–Terry epochs on `pairs` (optionally weighted per pair); returns the training summary."""

    def hessian(self, pairs) -> np.ndarray | None:
        """The exact Bradley–Terry Hessian at the current weights, where it is cheap (a linear head), else None."""

    def load_state(self, directory: Path) -> None:
        """Restore the weights a round's checkpoint saved in `directory`."""


def _pair_margin_column(pairs) -> np.ndarray | None:
    """TRL's per-pair `margin` column as an array (0 where a pair has none), or None when no pair has one."""
    margins = [p.margin for p in pairs]
    return np.array([m or 0.0 for m in margins]) if any(m is not None for m in margins) else None


class HeadLearner:
    """Head mode in training: margins and Bradley–Terry epochs over cached embeddings of any pairs."""

    def __init__(self, model: HeadRewardModel, accelerator=None, log=None, progress: bool = False):
        self.model, self.log, self.progress = model, log, progress
        self.accelerator = accelerator or make_accelerator()

    def prepare(self, pairs) -> None:
        self.embed(pairs)

    def embed(self, pairs) -> tuple[np.ndarray, np.ndarray]:
        """(chosen, rejected) embeddings, each (n, d), through the on-disk cache."""
        prompts = [p.prompt for p in pairs] * 2
        responses = [p.chosen for p in pairs] + [p.rejected for p in pairs]
        both = self.model.embed(prompts, responses, progress=self.progress)
        return both[: len(pairs)], both[len(pairs):]

    def scores(self, pairs) -> tuple[np.ndarray, np.ndarray]:
        chosen, rejected = self.embed(pairs)
        return self.model.score_embeddings(chosen), self.model.score_embeddings(rejected)

    def margins(self, pairs) -> np.ndarray:
        chosen, rejected = self.scores(pairs)
        return chosen - rejected

    def fit(self, pairs, optim: OptimSettings, *, weight=None, step_offset: int = 0, desc: str = "training"):
        chosen, rejected = self.embed(pairs)
        examples = HeadExamples(chosen, rejected, margin=_pair_margin_column(pairs), weight=weight)
        return train_epochs(self.model.head, examples, optim, accelerator=self.accelerator, log=self.log,
                            step_offset=step_offset, desc=desc, progress=self.progress)

    def hessian(self, pairs) -> np.ndarray | None:
        """The exact Bradley–Terry Hessian w.r.t. a linear head's weights at the current weights; None for an MLP."""
        linear = self.model.head.linear
        if linear is None:
            return None
        chosen, rejected = self.embed(pairs)
        theta = linear.weight.detach().double().numpy()[0]
        return metrics.bt_hessian(chosen.astype(np.float64), rejected.astype(np.float64), theta)

    def load_state(self, directory: Path) -> None:
        from safetensors.torch import load_file

        self.model.head.load_state_dict(load_file(str(Path(directory) / "head.safetensors")))


class FullLearner:
    """Full mode in training: the whole sequence-classification model scores and learns from token ids.

    `packing`: train a causal backbone on shared-prompt segments (None: wherever its attention takes the packed
    mask; the choice is logged once). Encoders always take the plain two-row path.
    """

    def __init__(self, model: FullRewardModel, accelerator=None, log=None, progress: bool = False,
                 packing: bool | None = None):
        self.model, self.log, self.progress = model, log, progress
        self.accelerator = accelerator or make_accelerator()
        self.packing = packing
        self._said = False

    def prepare(self, pairs) -> None:
        pass  # nothing to cache: a fine-tuned backbone's features change with every step

    def scores(self, pairs, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
        """Rewards in the precision the model trains in: bf16 autocast where the hardware runs it natively (about
        half the fp32 time). Once trained, the model's forward runs under Accelerate's autocast anyway; this
        makes the scores before the first round agree with it. The saved model scores in fp32 when loaded.

        Where `fit` packs, so does this (forward only): each pair's prompt is computed once, and the pair is cut
        by the training rule (`token_examples`)."""
        with self.accelerator.autocast():
            if not (pairs and self.packs()):
                return self.model.score_pairs(pairs, batch_size=batch_size)
            return self._packed_scores(pairs, batch_size)

    @torch.no_grad()
    def _packed_scores(self, pairs, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        examples = token_examples(self.model, pairs, packed=True)
        module = self.model.model
        module.eval()
        order = np.argsort(examples.lengths, kind="stable")  # similar lengths share a batch: fuller rows
        chosen, rejected = np.empty(len(pairs)), np.empty(len(pairs))
        for start in range(0, len(pairs), batch_size):
            index = order[start:start + batch_size]
            batch = {k: v.to(module.device) for k, v in examples.collate(index).items()}
            rewards = examples.forward(module, batch).float().cpu().numpy()
            chosen[index], rejected[index] = rewards[: len(index)], rewards[len(index):]
        return chosen, rejected

    def margins(self, pairs) -> np.ndarray:
        chosen, rejected = self.scores(pairs)
        return chosen - rejected

    def packs(self) -> bool:
        """Whether `fit` packs: a causal backbone with mask-taking attention, unless `packing` says otherwise."""
        if not reads_last_token(self.model.model):
            return False
        able, attention = supports_packing(self.model.model)
        packs = able if self.packing is None else self.packing and able
        if not self._said:
            if packs:
                logger.info("full mode: shared-prompt packing (%s attention)", attention)
            elif self.packing is not False:
                logger.warning("full mode: plain two-row batches: %s attention cannot take the packed 4D mask "
                               "(eager or sdpa can)", attention)
            self._said = True
        return packs

    def fit(self, pairs, optim: OptimSettings, *, weight=None, step_offset: int = 0, desc: str = "training"):
        examples = token_examples(self.model, pairs, weight=weight, packed=self.packs())
        summary = train_epochs(self.model.model, examples, optim,
                               accelerator=self.accelerator, log=self.log, step_offset=step_offset, desc=desc,
                               progress=self.progress)
        self.model.model = self.accelerator.unwrap_model(self.model.model)
        return summary

    def hessian(self, pairs):
        return None  # the exact Hessian is cheap only for a linear head on frozen features

    def load_state(self, directory: Path) -> None:
        from safetensors.torch import load_file

        state = load_file(str(Path(directory) / "model.safetensors"))
        model = self.model.model
        if hasattr(model, "peft_config"):  # LoRA: the checkpoint holds merged weights; fresh adapters go on top
            from peft import get_peft_model

            config = model.peft_config[model.active_adapter]
            model = model.unload()
            missing, unexpected = model.load_state_dict(state, strict=False)
            self.model.model = get_peft_model(model, config)
        else:
            missing, unexpected = model.load_state_dict(state, strict=False)
        if unexpected:
            raise ConfigError(f"{directory}: checkpoint does not match the model ({unexpected[:3]} …)")


def make_learner(model, accelerator=None, log=None, progress: bool = False) -> Learner:
    """The learner for `model`'s mode."""
    kind = HeadLearner if isinstance(model, HeadRewardModel) else FullLearner
    return kind(model, accelerator=accelerator, log=log, progress=progress)


def token_examples(model: FullRewardModel, pairs, *, weight=None, packed: bool = False):
    """The training inputs of `pairs`: TokenExamples, or PackedExamples when `packed` (causal backbones only).

    Truncation: an encoder's two inputs are each cut from the left at `max_length` (as ever); a decoder's pair
    is cut once, from the left of the shared prompt, so that prompt + the longer response fits
    (`marsrm.packing.truncate_pair`): packed and plain batches then hold the same tokens.
    """
    tokenizer = model.tokenizer
    prompts = [p.prompt for p in pairs]
    chosen = format_texts(tokenizer, prompts, [p.chosen for p in pairs], model.spec.template)
    rejected = format_texts(tokenizer, prompts, [p.rejected for p in pairs], model.spec.template)
    margin = _pair_margin_column(pairs)
    if reads_last_token(model.model):
        tokens = pair_tokens(tokenizer, chosen, rejected, model.spec.max_length)
        if packed:
            return PackedExamples(tokens, tokenizer.pad_token_id, model.spec.max_length, margin=margin, weight=weight)
        return TokenExamples([t.chosen_ids() for t in tokens], [t.rejected_ids() for t in tokens],
                             tokenizer.pad_token_id, margin=margin, weight=weight, last_token=True)
    if packed:
        raise ValueError("packing needs a causal backbone; an encoder's attention sees the whole input")
    encode = lambda texts: tokenizer(texts, truncation=True, max_length=model.spec.max_length)["input_ids"]  # noqa
    return TokenExamples(encode(chosen), encode(rejected), tokenizer.pad_token_id, margin=margin, weight=weight)
