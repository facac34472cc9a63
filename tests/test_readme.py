"""The README's Python snippets run as written, against models trained here."""
import re
from pathlib import Path

import numpy as np
import pytest

from marsrm.cli import main

README = Path(__file__).resolve().parents[1] / "README.md"


def python_snippets():
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_names_both_commands():
    text = README.read_text()
    assert "make demo" in text and "make test" in text


@pytest.mark.slow
def test_python_snippet_scores_with_a_trained_model(tmp_path, hh_dir, monkeypatch):
    monkeypatch.setenv("MARS_DATA_DIR", str(hh_dir.parent))
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--data", "hh-rlhf/helpful-online", "--train-size", "40", "--eval-size", "20",
                 "--epochs", "2", "--n-resamples", "50", "--output", "runs/rm", "--no-progress"]) == 0
    snippet = next(s for s in python_snippets() if "marsrm.load_reward_model" in s)
    scope = {}
    exec(compile(snippet.replace("rm.score(", "result = rm.score("), "README.md", "exec"), scope)
    assert scope["result"].shape == (1,) and np.isfinite(scope["result"]).all()


@pytest.mark.slow
def test_plain_transformers_snippet_gives_marsrm_s_scores(tmp_path, hh_dir, monkeypatch):
    from marsrm import load_reward_model

    monkeypatch.setenv("MARS_DATA_DIR", str(hh_dir.parent))
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--mode", "full", "--data", "hh-rlhf/helpful-online", "--train-size", "24", "--eval-size",
                 "8", "--max-length", "64", "--mixed-precision", "no", "--n-resamples", "20", "--output",
                 "runs/rm-full", "--no-progress"]) == 0
    snippet = next(s for s in python_snippets() if "AutoModelForSequenceClassification" in s)
    scope = {}
    exec(compile(snippet, "README.md", "exec"), scope)
    prompt = ({"role": "user", "content": "How do I boil an egg?"},)
    expected = load_reward_model("runs/rm-full/model").score(
        [prompt, prompt], ["Simmer it for nine minutes.", "Eggs are laid by hens."])
    np.testing.assert_allclose(scope["rewards"].numpy(), expected, atol=1e-5)
