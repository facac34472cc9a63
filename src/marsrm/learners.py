"""Learners: what the training loop asks of a reward model, in either mode, declared once (`Learner`).

A learner wraps a reward model for training: scores and margins of any pairs, Bradley–Terry epochs on them,
checkpoints. `HeadLearner` trains a score head on cached embeddings of a frozen backbone; `FullLearner`
fine-tunes the whole sequence-classification model on token ids. `make_learner` picks one for a model.
"""
from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np

from marsrm import metrics
from marsrm.config import ConfigError
from marsrm.model import FullRewardModel, HeadRewardModel, format_texts
from marsrm.train import HeadExamples, OptimSettings, TokenExamples, make_accelerator, train_epochs


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
    """Full mode in training: the whole sequence-classification model scores and learns from token ids."""

    def __init__(self, model: FullRewardModel, accelerator=None, log=None, progress: bool = False):
        self.model, self.log, self.progress = model, log, progress
        self.accelerator = accelerator or make_accelerator()

    def prepare(self, pairs) -> None:
        pass  # nothing to cache: a fine-tuned backbone's features change with every step

    def scores(self, pairs) -> tuple[np.ndarray, np.ndarray]:
        """Rewards in the precision the model trains in: bf16 autocast where the hardware runs it natively (about
        half the fp32 time). Once trained, the model's forward runs under Accelerate's autocast anyway; this
        makes the scores before the first round agree with it. The saved model scores in fp32 when loaded."""
        with self.accelerator.autocast():
            return self.model.score_pairs(pairs)

    def margins(self, pairs) -> np.ndarray:
        chosen, rejected = self.scores(pairs)
        return chosen - rejected

    def fit(self, pairs, optim: OptimSettings, *, weight=None, step_offset: int = 0, desc: str = "training"):
        summary = train_epochs(self.model.model, token_examples(self.model, pairs, weight=weight), optim,
                               accelerator=self.accelerator, log=self.log, step_offset=step_offset, desc=desc,
                               progress=self.progress)
        self.model.model = self.accelerator.unwrap_model(self.model.model)
        return summary

    def hessian(self, pairs):
        return None  # the exact Hessian is cheap only for a linear head on frozen features

    def load_state(self, directory: Path) -> None:
        from safetensors.torch import load_file

        state = load_file(str(Path(directory) / "model.safetensors"))
        missing, unexpected = self.model.model.load_state_dict(state, strict=False)
        if unexpected:
            raise ConfigError(f"{directory}: checkpoint does not match the model ({unexpected[:3]} …)")


def make_learner(model, accelerator=None, log=None, progress: bool = False) -> Learner:
    """The learner for `model`'s mode."""
    kind = HeadLearner if isinstance(model, HeadRewardModel) else FullLearner
    return kind(model, accelerator=accelerator, log=log, progress=progress)


def token_examples(model: FullRewardModel, pairs, *, weight=None) -> TokenExamples:
    tokenizer = model.tokenizer
    prompts = [p.prompt for p in pairs]
    chosen = format_texts(tokenizer, prompts, [p.chosen for p in pairs], model.spec.template)
    rejected = format_texts(tokenizer, prompts, [p.rejected for p in pairs], model.spec.template)
    encode = lambda texts: tokenizer(texts, truncation=True, max_length=model.spec.max_length)["input_ids"]  # noqa
    return TokenExamples(encode(chosen), encode(rejected), tokenizer.pad_token_id,
                         margin=_pair_margin_column(pairs), weight=weight)
