"""`marsrm export`: a head-mode model as a directory that tools without marsrm load."""
from __future__ import annotations

from dataclasses import dataclass

from marsrm.config import setting
from marsrm.model import HeadRewardModel, ModelError, export_head_model, load_reward_model


@dataclass
class ExportConfig:
    """`marsrm export`: turn a head-mode model into a standard sequence-classification directory."""

    model: str = setting("runs/train/model", "head-mode model directory")
    output: str = setting("runs/export", "directory for the standard model")


def export(config: ExportConfig, echo=print) -> str:
    """Run `marsrm export`; returns the directory written."""
    model = load_reward_model(config.model)
    if not isinstance(model, HeadRewardModel):
        raise ModelError(f"{config.model}: already a full-mode (standard) model directory; nothing to export")
    written = export_head_model(model, config.output)
    echo(f"exported to {written}")
    return str(written)
