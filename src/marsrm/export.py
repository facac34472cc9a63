"""Head-mode models in formats other tools load: sentence-transformers.

`export_sentence_transformers(model, directory)` writes the frozen backbone, marsrm's pooling and the head as a
sentence-transformers model (Transformer → Pooling → Dense layers, the last bias-free with one output), so
that `SentenceTransformer(directory).encode(texts)` gives each text's reward. The files are written directly (marsrm
does not import sentence_transformers) in the module format sentence-transformers 3 and later read.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from marsrm.io import atomic_write_dir
from marsrm.model import HeadRewardModel, portable_tokenizer
from marsrm.runtime import ModelError

# marsrm's pooling → the sentence-transformers Pooling mode that computes the same vector from right-padded input.
ST_POOLING = {"mean": "pooling_mode_mean_tokens", "cls": "pooling_mode_cls_token", "last": "pooling_mode_lasttoken"}


def export_sentence_transformers(model: HeadRewardModel, directory: str | os.PathLike) -> Path:
    """Write `model` as a sentence-transformers directory at `directory` (new or empty); returns it.

    Layout: the backbone (weights, config, tokenizer) at the root as the Transformer module; `1_Pooling`
    (marsrm's pooling); `2_Dense`, a bias-free Linear(d, 1) with identity activation holding the linear head's
    weight (an MLP head, `head_hidden` h > 0: `2_Dense` Linear(d, h) with bias and GELU, then `3_Dense` the
    bias-free Linear(h, 1); dropout is off when scoring, so this is the same function);
    `sentence_bert_config.json` with `max_seq_length` = `spec.max_length`. `encode(texts)` returns an
    (n, 1) array: column 0 is the reward.

    Inputs are the texts marsrm scores, `format_texts(...)` (HH format unless the backbone's chat template
    was used; the saved tokenizer's `apply_chat_template(messages, tokenize=False)` renders it). The tokenizer
    is saved with left truncation, which sentence-transformers keeps, so texts longer than `max_length`
    tokens are cut as marsrm cuts them (tested on inputs with and without truncation).
    Tolerance: with `spec.embed_dtype` fp32 the rewards match marsrm's within 1e-5 (tested; on MiniLM on CPU
    they were identical: the same operations in the same order). A model whose embeddings marsrm computes in
    bf16 differs by bf16 rounding, since sentence-transformers runs the backbone in float32 unless told
    otherwise: at most about 2% of the rewards' standard deviation on 64 HH-RLHF texts with MiniLM.
    Raises ModelError for a full-mode model, for what has no exact counterpart (a pooling other than mean, cls
    or last) and for a `directory` that already holds files.
    """
    if not isinstance(model, HeadRewardModel):
        raise ModelError("export sentence-transformers: only head-mode models; a full-mode model directory is already "
                         "a standard transformers directory (load it with AutoModelForSequenceClassification)")
    spec = model.spec
    if spec.pooling not in ST_POOLING:
        raise ModelError(f"export sentence-transformers: pooling '{spec.pooling}' has no sentence-transformers "
                         f"counterpart; train with one of {', '.join(ST_POOLING)}")
    directory = Path(directory)
    if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        raise ModelError(f"{directory}: already exists and is not an empty directory; export into a new directory")
    encoder, dim = model.encoder, model.head.dim
    layers = [layer for layer in model.head.net if isinstance(layer, torch.nn.Linear)]
    activations = ["torch.nn.modules.activation.GELU"] * (len(layers) - 1) + ["torch.nn.modules.linear.Identity"]

    def write(folder: str) -> None:
        from safetensors.torch import save_file

        root = Path(folder)
        encoder.model.save_pretrained(root, safe_serialization=True)
        portable_tokenizer(encoder.tokenizer, spec).save_pretrained(root)
        pooling = {"word_embedding_dimension": dim, "include_prompt": True,
                   **{mode: mode == ST_POOLING[spec.pooling] for mode in (
                       "pooling_mode_cls_token", "pooling_mode_mean_tokens", "pooling_mode_max_tokens",
                       "pooling_mode_mean_sqrt_len_tokens", "pooling_mode_weightedmean_tokens",
                       "pooling_mode_lasttoken")}}
        _write_json(root / "1_Pooling" / "config.json", pooling)
        modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
                   {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
        for idx, (layer, activation) in enumerate(zip(layers, activations), start=2):
            folder = root / f"{idx}_Dense"
            tensors = {f"linear.{k}": v.detach().float().cpu().contiguous() for k, v in layer.state_dict().items()}
            _write_json(folder / "config.json", {"in_features": layer.in_features, "out_features": layer.out_features,
                                                 "bias": layer.bias is not None, "activation_function": activation})
            save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
            modules.append({"idx": idx, "name": str(idx), "path": folder.name,
                            "type": "sentence_transformers.models.Dense"})
        _write_json(root / "modules.json", modules)
        _write_json(root / "sentence_bert_config.json", {"max_seq_length": spec.max_length, "do_lower_case": False})
        _write_json(root / "config_sentence_transformers.json", {"__version__": _versions(), "prompts": {},
                                                                  "default_prompt_name": None})

    return atomic_write_dir(directory, write)


def _write_json(path: Path, value) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=2) + "\n", encoding="utf-8")


def _versions() -> dict:
    """The versions that wrote the directory (sentence-transformers' own is absent: it did not)."""
    import torch
    import transformers

    from marsrm import __version__

    return {"marsrm": __version__, "transformers": transformers.__version__, "pytorch": torch.__version__}
