"""The README's Python snippet runs as written, against a model trained here."""
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
    (snippet,) = python_snippets()
    scope = {}
    exec(compile(snippet.replace("rm.score(", "result = rm.score("), "README.md", "exec"), scope)
    assert scope["result"].shape == (1,) and np.isfinite(scope["result"]).all()
