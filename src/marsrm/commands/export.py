"""`marsrm export`: a head-mode model as a directory that tools without marsrm load."""
from __future__ import annotations

from dataclasses import dataclass

from marsrm.config import setting
from marsrm.export import export_sentence_transformers
from marsrm.model import HeadRewardModel, ModelError, export_head_model, load_reward_model

FORMATS = ("sequence-classification", "sentence-transformers")


@dataclass
class ExportConfig:
    """`marsrm export`: a head-mode model as a standard directory: sequence classification (exact only for a linear
    head on a decoder's last token) or sentence-transformers (every head-mode model)."""

    model: str = setting("runs/train/model", "head-mode model directory")
    output: str = setting("runs/export", "directory for the exported model (new or empty)")
    format: str = setting("sequence-classification", "sequence-classification: AutoModelForSequenceClassification "
                          "(TRL, RewardBench); sentence-transformers: Transformer → Pooling → Dense, "
                          "SentenceTransformer(dir).encode(texts)[:, 0] is the reward", choices=list(FORMATS))


def export(config: ExportConfig, echo=print) -> str:
    """Run `marsrm export`; returns the directory written."""
    model = load_reward_model(config.model)
    if not isinstance(model, HeadRewardModel):
        raise ModelError(f"{config.model}: already a full-mode (standard) model directory; nothing to export")
    if config.format == "sentence-transformers":
        written = export_sentence_transformers(model, config.output)
    else:
        written = export_head_model(model, config.output)
    echo(f"exported to {written} ({config.format})")
    return str(written)
