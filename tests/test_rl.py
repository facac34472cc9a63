"""The hand-off to RL: a marsrm reward model as a TRL GRPO reward function, and a few GRPO steps with it."""
import numpy as np
import pytest
import torch

from marsrm.model import HeadRewardModel, ModelError, ModelSpec, ScalarHead
from marsrm.rl import completion_text, prompt_messages, reward_function

QUESTION = [{"role": "user", "content": "How do I keep basil fresh?"}]
ANSWERS = ["Stand the stems in a glass of water.", "Put it in the freezer overnight."]


def head_model(tmp_path, minilm_path, *, seed=0, normalization=None):
    """A saved head-mode MiniLM model with a seeded random linear head."""
    spec = ModelSpec(mode="head", backbone=minilm_path, max_length=64, embed_dtype="fp32", normalization=normalization)
    torch.manual_seed(seed)
    return HeadRewardModel(spec, ScalarHead(384)).save(tmp_path / f"rm-{seed}")


def test_prompt_and_completion_formats():
    assert prompt_messages(QUESTION) == QUESTION
    assert prompt_messages("Name a colour.") == [{"role": "user", "content": "Name a colour."}]
    hh = "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Name a colour.\n\nAssistant:"
    assert prompt_messages(hh) == [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
                                   {"role": "user", "content": "Name a colour."}]
    assert completion_text([{"role": "assistant", "content": "Blue."}]) == "Blue."
    assert completion_text(" Blue.") == " Blue."


def test_reward_function_scores_both_trl_formats_and_normalizes(tmp_path, minilm_path):
    from marsrm import load_reward_model

    directory = head_model(tmp_path, minilm_path, normalization={"mean": 0.5, "std": 2.0})
    raw = load_reward_model(directory).score([QUESTION] * 2, ANSWERS)
    reward = reward_function(directory, device="cpu")
    messages = [[{"role": "assistant", "content": a}] for a in ANSWERS]
    conversational = reward(prompts=[QUESTION] * 2, completions=messages, completion_ids=None, trainer_state=None)
    standard = reward(prompts=["\n\nHuman: How do I keep basil fresh?\n\nAssistant:"] * 2,
                      completions=[" " + a for a in ANSWERS])
    assert isinstance(conversational, list) and all(isinstance(r, float) for r in conversational)
    assert np.allclose(conversational, raw, atol=1e-6)
    assert np.allclose(standard, raw, atol=1e-6)  # the HH format's space before the response is dropped
    assert [r for r in reward.last[1]] == ANSWERS
    assert reward.calls == 2 and reward.__name__ == "marsrm_reward"
    normalized = reward_function(directory, normalize=True, device="cpu")(prompts=[QUESTION] * 2,
                                                                            completions=ANSWERS)
    assert np.allclose(normalized, (raw - 0.5) / 2.0, atol=1e-6)


def test_normalize_needs_stored_statistics(tmp_path, minilm_path):
    with pytest.raises(ModelError, match="normalization"):
        reward_function(head_model(tmp_path, minilm_path), normalize=True, device="cpu")


@pytest.mark.slow
def test_grpo_steps_on_cpu_with_a_marsrm_reward(tmp_path, minilm_path):
    """Two GRPO optimisation steps of SmolLM2-135M (its GGUF file made a plain model directory, as in the
    GPU recipe; a KL term, so TRL loads a reference copy too), rewarded by a saved marsrm model."""
    from datasets import Dataset
    from safetensors.torch import load_file
    from trl import GRPOConfig, GRPOTrainer

    from marsrm.rl import prepare_policy

    policy = prepare_policy("smollm2", tmp_path / "policy")
    assert prepare_policy("smollm2", tmp_path / "policy") == policy  # made once, then reused
    reward = reward_function(head_model(tmp_path, minilm_path, normalization={"mean": 0.0, "std": 1.0}),
                             normalize=True, device="cpu")
    prompts = ["How do I keep basil fresh?", "Name a colour.", "What is two plus two?", "Say hello."]
    dataset = Dataset.from_list([{"prompt": [{"role": "user", "content": p}]} for p in prompts])
    args = GRPOConfig(output_dir=str(tmp_path / "grpo"), per_device_train_batch_size=2, num_generations=2,
                      max_completion_length=8, max_steps=2, learning_rate=1e-4, beta=0.04, logging_steps=1,
                      save_strategy="no", report_to="none", use_cpu=True, bf16=False, seed=0,
                      dataloader_num_workers=0, disable_tqdm=True)
    trainer = GRPOTrainer(model=policy, reward_funcs=reward, args=args, train_dataset=dataset)
    trainer.train()

    assert trainer.state.global_step == 2
    assert reward.calls >= 2
    messages, responses, rewards = reward.last
    assert len(responses) == len(rewards) >= 2 and all(m[-1]["role"] == "user" for m in messages)
    # the rewards TRL logged are ours: the last call's mean is what the trainer logged for its last step
    key = f"rewards/{reward.__name__}/mean"
    logged = [entry[key] for entry in trainer.state.log_history if key in entry]
    assert logged and logged[-1] == pytest.approx(float(np.mean(rewards)), abs=1e-5)
    assert np.allclose(reward.model.score(messages, responses, normalize=True), rewards, atol=1e-6)
    initial = load_file(f"{policy}/model.safetensors")
    moved = [n for n, p in trainer.model.named_parameters() if n in initial and not torch.equal(initial[n], p.detach())]
    assert moved, "no policy weight moved in two GRPO steps"
