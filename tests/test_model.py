import json

import numpy as np
import pytest
import torch

from marsrm import load_reward_model
from marsrm.model import (HeadRewardModel, ModelError, ModelSpec, ScalarHead, count_truncation, export_head_model,
                          format_texts, new_full_model)
from marsrm.runtime import load_tokenizer

PROMPTS = [({"role": "user", "content": "How do I boil an egg?"},),
           ({"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
            {"role": "user", "content": "Name a colour."})]
RESPONSES = ["Put it in boiling water for nine minutes.", "Blue."]


def test_hh_format_and_left_truncation(minilm_path):
    tokenizer = load_tokenizer(minilm_path)
    texts = format_texts(tokenizer, PROMPTS, RESPONSES)
    assert texts[1] == "Human: Hi\n\nAssistant: Hello!\n\nHuman: Name a colour.\n\nAssistant: Blue."
    assert tokenizer.truncation_side == "left" and tokenizer.eos_token == tokenizer.sep_token
    ids = tokenizer(texts[0], truncation=True, max_length=8)["input_ids"]
    assert tokenizer.decode(ids, skip_special_tokens=True).endswith("nine minutes.")
    report = count_truncation(tokenizer, texts, RESPONSES, max_length=12)
    assert (report.inputs, report.truncated, report.response_cut) == (2, 2, 0)
    report = count_truncation(tokenizer, texts, RESPONSES, max_length=6)
    assert report.response_cut == 1


def test_chat_template_refused_when_absent(minilm_path):
    with pytest.raises(ModelError, match="chat template"):
        format_texts(load_tokenizer(minilm_path), PROMPTS, RESPONSES, template="chat")


def test_head_model_round_trip(tmp_path, minilm_path):
    spec = ModelSpec(mode="head", backbone=minilm_path, max_length=32, embed_dtype="fp32")
    torch.manual_seed(0)
    model = HeadRewardModel(spec, ScalarHead(384))
    before = model.score([p for p in PROMPTS], RESPONSES)
    model.save(tmp_path / "m")
    manifest = json.loads((tmp_path / "m" / "marsrm.json").read_text())
    assert manifest["spec"]["mode"] == "head"
    loaded = load_reward_model(tmp_path / "m")
    assert isinstance(loaded, HeadRewardModel)
    assert np.allclose(loaded.score(PROMPTS, RESPONSES), before, atol=1e-6)
    with pytest.raises(ModelError, match="normalization"):
        loaded.score(PROMPTS, RESPONSES, normalize=True)


def test_full_model_is_a_standard_directory(tmp_path, minilm_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    spec = ModelSpec(mode="full", backbone=minilm_path, max_length=64, normalization={"mean": 1.0, "std": 2.0})
    torch.manual_seed(0)
    model = new_full_model(spec)
    ours = model.score(PROMPTS, RESPONSES)
    model.save(tmp_path / "full")
    assert (tmp_path / "full" / "model.safetensors").exists()
    assert not list((tmp_path / "full").glob("*.bin"))
    plain = AutoModelForSequenceClassification.from_pretrained(tmp_path / "full").eval()
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "full")
    assert plain.config.num_labels == 1
    texts = format_texts(tokenizer, PROMPTS, RESPONSES)
    with torch.no_grad():
        theirs = [plain(**tokenizer(t, return_tensors="pt", truncation=True, max_length=64)).logits[0, 0].item()
                  for t in texts]
    assert np.allclose(ours, theirs, atol=1e-4)
    loaded = load_reward_model(tmp_path / "full")
    assert np.allclose(loaded.score(PROMPTS, RESPONSES), ours, atol=1e-5)
    assert np.allclose(loaded.score(PROMPTS, RESPONSES, normalize=True), (ours - 1.0) / 2.0, atol=1e-5)


def test_dropout_off_makes_training_mode_deterministic(minilm_path):
    spec = ModelSpec(mode="full", backbone=minilm_path, max_length=64)
    model = new_full_model(spec, dropout=False).model.train()
    from transformers import AutoTokenizer

    batch = AutoTokenizer.from_pretrained(minilm_path)(["a short text"], return_tensors="pt")
    model_inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
    assert all(m.p == 0.0 for m in model.modules() if isinstance(m, torch.nn.Dropout))
    assert torch.equal(model(**model_inputs).logits, model(**model_inputs).logits)
    with_dropout = new_full_model(spec).model.train()
    assert any(m.p > 0 for m in with_dropout.modules() if isinstance(m, torch.nn.Dropout))


def test_pickle_weights_refused_unless_allowed(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    torch.save({"w": torch.zeros(1)}, tmp_path / "pytorch_model.bin")
    with pytest.raises(ModelError, match="pickle"):
        load_reward_model(tmp_path)


def test_missing_directory_and_export_refusal(tmp_path, minilm_path):
    with pytest.raises(ModelError, match="no such model directory"):
        load_reward_model(tmp_path / "nope")
    spec = ModelSpec(mode="head", backbone=minilm_path)
    with pytest.raises(ModelError, match="pooler"):
        export_head_model(HeadRewardModel(spec, ScalarHead(384)), tmp_path / "out")
    with pytest.raises(ModelError, match="MLP"):
        export_head_model(HeadRewardModel(ModelSpec(mode="head", backbone=minilm_path, head_hidden=8),
                                          ScalarHead(384, 8)), tmp_path / "out")


def tiny_decoder(path, minilm_path):
    """A small random Llama that shares MiniLM's tokenizer: enough to test the exact export path offline."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = load_tokenizer(minilm_path)
    config = LlamaConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=128,
                         pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return str(path)


def test_export_of_a_last_token_head_is_exact(tmp_path, minilm_path):
    from transformers import AutoModelForSequenceClassification

    backbone = tiny_decoder(tmp_path / "decoder", minilm_path)
    spec = ModelSpec(mode="head", backbone=backbone, max_length=64, pooling="last", embed_dtype="fp32")
    torch.manual_seed(1)
    model = HeadRewardModel(spec, ScalarHead(32))
    ours = model.score(PROMPTS, RESPONSES)
    export_head_model(model, tmp_path / "exported")
    standard = AutoModelForSequenceClassification.from_pretrained(tmp_path / "exported")
    assert standard.config.num_labels == 1
    loaded = load_reward_model(tmp_path / "exported")
    assert np.allclose(loaded.score(PROMPTS, RESPONSES), ours, atol=1e-4)
