"""Decoder backbones in full mode: the reward at the true last token, the chat template, LoRA, checkpointing.

The backbone is a tiny randomly initialised Llama (fp32) with a word-level tokenizer built here: pad == EOS
(as SmolLM2 and Llama ship), a BOS token, and a chat template whose text ends in EOS, so that the position
transformers reads with pad == EOS is wrong.
"""
import numpy as np
import pytest
import torch

from marsrm.data import PreferencePair
from marsrm.model import ModelSpec, format_texts, load_reward_model, new_full_model, reads_last_token

WORDS = ("the a cat dog sat ran on under mat tree is was good bad yes no why how please tell me about it "
         "sure here thanks fine sorry cannot help you what where").split()
CHAT_TEMPLATE = "{% for m in messages %}{{ m['role'] }} : {{ m['content'] }} </s> {% endfor %}"


def tiny_llama(directory, *, chat_template: bool = True, seed: int = 0) -> str:
    """Write a 2-layer random Llama causal LM and its tokenizer (pad unset, so marsrm's loader sets pad = EOS)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["<unk>", "<s>", "</s>", "user", "assistant", ":", "Human", "Assistant"]
                                        + WORDS)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>",
                                        unk_token="<unk>")
    if chat_template:
        tokenizer.chat_template = CHAT_TEMPLATE
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         bos_token_id=1, eos_token_id=2, pad_token_id=None, tie_word_embeddings=False)
    LlamaForCausalLM(config).save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    return str(directory)


def random_pairs(n: int, seed: int, prompt_words=(3, 30), response_words=(1, 12)) -> list[PreferencePair]:
    """Seeded pairs of random words; prompts are often longer than both responses (as in HH dialogues)."""
    rng = np.random.default_rng(seed)
    say = lambda low, high: " ".join(rng.choice(WORDS, size=rng.integers(low, high)))  # noqa: E731
    return [PreferencePair(id=f"p{i}", prompt=[{"role": "user", "content": say(*prompt_words)}],
                           chosen=say(*response_words),
                           rejected=say(*response_words)) for i in range(n)]


@pytest.fixture(scope="module")
def backbone(tmp_path_factory):
    return tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


def full_model(backbone, seed: int = 0, **kwargs):
    torch.manual_seed(seed)
    return new_full_model(ModelSpec(mode="full", backbone=backbone, max_length=64), dropout=False, **kwargs)


def test_pad_differs_from_eos_and_a_saved_directory_reads_the_true_last_token(backbone, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = full_model(backbone)
    tokenizer = model.tokenizer
    assert reads_last_token(model.model)
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    assert model.model.config.pad_token_id == tokenizer.pad_token_id == tokenizer.unk_token_id
    pairs = random_pairs(6, seed=1)
    prompts, responses = [p.prompt for p in pairs], [p.chosen for p in pairs]
    texts = format_texts(tokenizer, prompts, responses)
    assert all(ids[-1] == tokenizer.eos_token_id for ids in tokenizer(texts)["input_ids"])  # the case that matters
    rewards = model.score(prompts, responses)

    # By hand: the score layer's output at each text's own last token, one text at a time (no padding at all).
    seq = model.model
    with torch.no_grad():
        by_hand = [seq.score(seq.model(**tokenizer(t, return_tensors="pt")).last_hidden_state)[0, -1, 0].item()
                   for t in texts]
    np.testing.assert_allclose(rewards, by_hand, atol=1e-5)

    # A plain transformers reader of the saved directory, batched with padding, reads the same position.
    model.save(tmp_path / "rm")
    plain = AutoModelForSequenceClassification.from_pretrained(tmp_path / "rm").eval()
    plain_tokenizer = AutoTokenizer.from_pretrained(tmp_path / "rm")
    rendered = [plain_tokenizer.apply_chat_template([*p, {"role": "assistant", "content": r}], tokenize=False)
                for p, r in zip(prompts, responses)]
    assert rendered == texts  # the backbone's chat template travels with the directory
    with torch.no_grad():
        batch = plain_tokenizer(rendered, padding=True, truncation=True, return_tensors="pt")
        read = plain(**batch).logits[:, 0].numpy()
        np.testing.assert_allclose(read, rewards, atol=1e-5)
        # With pad == EOS (what the backbone shipped), transformers would read the token before the true last one.
        plain.config.pad_token_id = tokenizer.eos_token_id
        early = plain(**batch).logits[:, 0].numpy()
    assert np.abs(early - rewards).max() > 1e-3
    np.testing.assert_allclose(load_reward_model(tmp_path / "rm").score(prompts, responses), rewards, atol=1e-5)


def test_hh_format_when_the_backbone_has_no_chat_template(tmp_path):
    model = full_model(tiny_llama(tmp_path / "plain", chat_template=False))
    text = format_texts(model.tokenizer, [[{"role": "user", "content": "why"}]], ["yes"])[0]
    assert text == "Human: why\n\nAssistant: yes"


def test_lora_rewards_are_identical_after_save_and_reload(backbone, tmp_path):
    model = full_model(backbone, lora={"r": 4, "lora_alpha": 8, "lora_dropout": 0.0})
    torch.manual_seed(3)
    with torch.no_grad():  # trained-looking adapters and head: LoRA's B starts at zero, which would hide a loss
        for name, param in model.model.named_parameters():
            if param.requires_grad:
                param.add_(0.3 * torch.randn_like(param))
    assert any("score" in n for n, p in model.model.named_parameters() if p.requires_grad)
    pairs = random_pairs(8, seed=2)
    prompts, responses = [p.prompt for p in pairs], [p.rejected for p in pairs]
    before = model.score(prompts, responses)
    model.save(tmp_path / "rm")
    np.testing.assert_allclose(model.score(prompts, responses), before, atol=1e-6)  # the adapters are still there
    assert hasattr(model.model, "merge_and_unload")
    reloaded = load_reward_model(tmp_path / "rm").score(prompts, responses)
    np.testing.assert_allclose(reloaded, before, atol=1e-5)
    assert np.std(before) > 1e-2  # the head was not left at a constant


def test_gradient_checkpointing_is_an_option_with_the_same_gradients(backbone):
    from marsrm.pipeline import ModelSettings, build_model

    settings = ModelSettings(mode="full", backbone=backbone, max_length=64, gradient_checkpointing=True)
    checkpointed = build_model(settings, seed=0, progress=False)
    plain = build_model(ModelSettings(mode="full", backbone=backbone, max_length=64), seed=0, progress=False)
    on = lambda m: any(getattr(x, "gradient_checkpointing", False) for x in m.model.modules())  # noqa: E731
    assert on(checkpointed) and not on(plain)
    batch = plain.tokenizer(["the cat sat on the mat </s>", "a dog ran"], padding=True, return_tensors="pt")
    grads = []
    for model in (checkpointed, plain):
        model.model.train()
        model.model(**batch).logits.sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.model.parameters() if p.grad is not None]))
    assert grads[0].abs().max() > 0
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-5, atol=1e-6)


def test_a_lora_checkpoint_is_restored_into_a_lora_learner(backbone, tmp_path):
    from marsrm.learners import FullLearner

    lora = {"r": 4, "lora_alpha": 8, "lora_dropout": 0.0}
    trained = full_model(backbone, lora=lora)
    with torch.no_grad():
        for param in trained.model.parameters():
            if param.requires_grad:
                param.add_(0.3 * torch.randn_like(param))
    pairs = random_pairs(6, seed=3)
    trained.save(tmp_path / "round-0")
    learner = FullLearner(full_model(backbone, seed=5, lora=lora))
    assert np.abs(learner.margins(pairs) - FullLearner(trained).margins(pairs)).max() > 1e-3
    learner.load_state(tmp_path / "round-0")
    assert hasattr(learner.model.model, "peft_config")  # still trains through adapters
    np.testing.assert_allclose(learner.margins(pairs), FullLearner(trained).margins(pairs), atol=1e-5)
