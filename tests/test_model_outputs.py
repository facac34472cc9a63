"""What the commands leave for other tools: `marsrm train` and `marsrm run` write a model card beside the model,
and `marsrm export --format sentence-transformers` turns a head-mode model into one sentence-transformers loads."""
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from marsrm.cli import main
from marsrm.model import format_texts, load_reward_model

PAIRS = str(Path(__file__).parent / "fixtures" / "pool" / "pairs.jsonl")  # 12 HH-format pairs
SMALL = ["--data", PAIRS, "--max-length", "32", "--n-resamples", "20", "--no-progress"]


def card_of(model_dir: Path) -> tuple[dict, str]:
    """(the YAML header, the body) of a model directory's README.md."""
    text = (model_dir / "README.md").read_text(encoding="utf-8")
    assert text.startswith("---\n")
    header, _, body = text[4:].partition("\n---\n")
    return yaml.safe_load(header), body


def test_train_writes_a_model_card_with_its_held_out_metrics(tmp_path):
    out = tmp_path / "train"
    assert main(["train", *SMALL, "--train-size", "8", "--embed-dtype", "fp32", "--output", str(out)]) == 0
    header, body = card_of(out / "model")
    assert "reward-model" in header["tags"] and header["pipeline_tag"] == "text-classification"
    results = json.loads((out / "results.json").read_text())
    accuracy = results["eval"]["accuracy"]
    assert f"| {accuracy['value']:.4f} | [{accuracy['low']:.4f}, {accuracy['high']:.4f}] |" in body
    assert "length rule" in body and "8 training pairs" in body
    assert "| `train_size` | `8` |" in body and "| `lr` | `0.001` |" in body  # resolved, not "None"


@pytest.mark.slow
def test_run_writes_a_model_card_too(tmp_path):
    out = tmp_path / "run"
    assert main(["run", *SMALL, "--train-size", "8", "--strategy", "none", "--budget", "0", "--rounds", "1",
                 "--round-resamples", "10", "--output", str(out)]) == 0
    _, body = card_of(out / "model")
    assert "| `strategy` | `none` |" in body and "| `rounds` | `1` |" in body and "Held-out results" in body
    assert not (out / "checkpoints" / "round-1" / "README.md").exists()  # checkpoints are not models for users


@pytest.mark.slow
def test_export_command_writes_sentence_transformers_with_marsrm_s_scores(tmp_path):
    from sentence_transformers import SentenceTransformer

    out = tmp_path / "train"
    assert main(["train", *SMALL, "--train-size", "8", "--embed-dtype", "fp32", "--output", str(out)]) == 0
    exported = tmp_path / "st"
    assert main(["export", "--model", str(out / "model"), "--format", "sentence-transformers",
                 "--output", str(exported)]) == 0
    model = load_reward_model(out / "model")
    prompts = [({"role": "user", "content": "How do I boil an egg?"},)] * 2
    responses = ["Simmer it for nine minutes, then cool it in cold water.", "Eggs are laid by hens."]
    texts = format_texts(model.encoder.tokenizer, prompts, responses, model.spec.template)
    encoded = SentenceTransformer(str(exported), device="cpu").encode(texts, convert_to_numpy=True)[:, 0]
    np.testing.assert_allclose(encoded, model.score(prompts, responses), atol=1e-5)
    assert main(["export", "--model", str(out / "model"), "--format", "sentence-transformers",
                 "--output", str(exported)]) == 2  # not into a directory that holds something
