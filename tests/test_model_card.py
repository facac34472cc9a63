"""A full-mode model directory scored by other tools exactly as marsrm scores it, and its model card.

A MiniLM model is trained for one epoch on real HH-RLHF pairs and saved by marsrm; the scoring side then runs in a
fresh Python process that never imports marsrm (plain transformers, the text-classification pipeline called as
RewardBench's scripts/run_rm.py calls it, TRL's RewardTrainer) and reports back as JSON.
"""
import json
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import yaml

from marsrm.card import write_model_card
from marsrm.data import load_pairs, split_pairs
from marsrm.learners import make_learner
from marsrm.metrics import evaluate_margins, reward_normalization
from marsrm.model import HeadRewardModel, ModelSpec, ScalarHead, format_texts, load_reward_model, new_full_model
from marsrm.train import OptimSettings, make_accelerator

MAX_LENGTH = 64


@pytest.fixture(scope="module")
def trained(tmp_path_factory, hh_dir, minilm_path):
    """(model directory, its results dict, the held-out pairs, marsrm's rewards for them in fp32)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MARS_DATA_DIR", str(hh_dir.parent))
        loaded = load_pairs("hh-rlhf/helpful-base")
    split = split_pairs(loaded.pairs, train_size=32, eval_size=24, seed=0)
    torch.manual_seed(0)
    model = new_full_model(ModelSpec(mode="full", backbone=minilm_path, max_length=MAX_LENGTH), dropout=False)
    learner = make_learner(model, accelerator=make_accelerator("no"))
    summary = learner.fit(split.train, OptimSettings(epochs=1, batch_size=8, lr=5e-5, seed=0))
    model.spec.normalization = reward_normalization(*model.score_pairs(split.train))
    chosen, rejected = model.score_pairs(split.eval)
    results = {"mode": "full", "backbone": minilm_path, "train_pairs": len(split.train), "train": summary,
               "data": {"data": loaded.report.to_dict()},
               "eval": evaluate_margins(chosen, rejected, chosen_lengths=np.array([len(p.chosen) for p in split.eval]),
                                        rejected_lengths=np.array([len(p.rejected) for p in split.eval]),
                                        n_resamples=200, seed=0)}
    directory = model.save(tmp_path_factory.mktemp("full") / "model")
    settings = {"model": {"mode": "full", "max_length": MAX_LENGTH}, "training": {"epochs": 1, "lr": 5e-5}}
    write_model_card(directory, spec=model.spec, results=results, settings=settings)
    return directory, results, split.eval, np.concatenate([chosen, rejected])


def conversations(pairs) -> list[list[dict]]:
    """Each pair's prompt + chosen, then each pair's prompt + rejected, as chat messages."""
    return ([[*map(dict, p.prompt), {"role": "assistant", "content": p.chosen}] for p in pairs]
            + [[*map(dict, p.prompt), {"role": "assistant", "content": p.rejected}] for p in pairs])


def long_conversation(pairs, tokens: int = 700) -> list[dict]:
    """A real multi-turn conversation of more than `tokens` MiniLM tokens: HH prompts and responses, turn by turn."""
    messages = []
    for pair in pairs:
        messages += [*map(dict, pair.prompt), {"role": "assistant", "content": pair.chosen}]
        if sum(len(m["content"].split()) for m in messages) > tokens:
            return messages
    raise AssertionError("the held-out pairs are too short to build a long conversation")


def plain_python(script: str, payload: dict, tmp_path) -> dict:
    """Run `script` in a fresh interpreter with `payload` in variable `payload`; it must set `result` (JSON), and
    marsrm must be nowhere among its imported modules."""
    (tmp_path / "payload.json").write_text(json.dumps(payload))
    program = textwrap.dedent("""
        import json, sys
        payload = json.load(open(sys.argv[1]))
    """) + textwrap.dedent(script) + textwrap.dedent("""
        assert not [m for m in sys.modules if m.split(".")[0] == "marsrm"], "the scoring side imported marsrm"
        json.dump(result, open(sys.argv[2], "w"))
    """)
    done = subprocess.run([sys.executable, "-c", program, str(tmp_path / "payload.json"), str(tmp_path / "out.json")],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((tmp_path / "out.json").read_text())


def test_saved_tokenizer_renders_and_cuts_marsrm_s_input(trained, tmp_path):
    directory, _, pairs, ours = trained
    theirs = plain_python("""
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(payload["dir"])
        model = AutoModelForSequenceClassification.from_pretrained(payload["dir"], dtype=torch.float32).eval()
        texts = [tokenizer.apply_chat_template(c, tokenize=False) for c in payload["conversations"]]
        with torch.no_grad():
            one = [model(**tokenizer(t, truncation=True, return_tensors="pt")).logits[0, 0].item() for t in texts]
            batch = tokenizer(texts, truncation=True, padding=True, return_tensors="pt")
            batched = model(**batch).logits[:, 0].tolist()
        result = {"texts": texts, "one": one, "batched": batched, "width": batch["input_ids"].shape[1],
                  "label": model.config.id2label[0], "max_length": tokenizer.model_max_length,
                  "sides": [tokenizer.truncation_side, tokenizer.padding_side]}
    """, {"dir": str(directory), "conversations": conversations(pairs)}, tmp_path)

    marsrm_model = load_reward_model(directory)
    prompts = [p.prompt for p in pairs] * 2
    responses = [p.chosen for p in pairs] + [p.rejected for p in pairs]
    assert theirs["texts"] == format_texts(marsrm_model.tokenizer, prompts, responses, template="hh")
    assert theirs["label"] == "reward" and theirs["max_length"] == MAX_LENGTH and theirs["sides"] == ["left", "right"]
    assert theirs["width"] == MAX_LENGTH  # some held-out inputs are longer: the saved default cut them
    assert np.abs(np.array(theirs["one"]) - ours).max() < 1e-5
    assert np.abs(np.array(theirs["batched"]) - ours).max() < 1e-5
    assert np.abs(marsrm_model.score(prompts, responses) - ours).max() < 1e-5


def test_hh_chat_template_is_marsrm_s_hh_format(trained):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(trained[0])
    cases = [[{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}],
             [{"role": "system", "content": "Be brief."}, {"role": "user", "content": " two\n\nlines "},
              {"role": "assistant", "content": ""}, {"role": "user", "content": "{{ not jinja }}"},
              {"role": "assistant", "content": "{% raw %}\n"}],
             [{"role": "assistant", "content": "Only a response."}]]
    for messages in cases:
        *prompt, last = messages
        expected = format_texts(tokenizer, [prompt], [last["content"]], template="hh")[0]
        assert tokenizer.apply_chat_template(messages, tokenize=False) == expected
    prompt = tokenizer.apply_chat_template(cases[0][:1], tokenize=False, add_generation_prompt=True)
    assert prompt == "Human: Hi\n\nAssistant:"


def test_rewardbench_pipeline_scores_long_inputs_as_marsrm(trained, tmp_path):
    directory, _, pairs, ours = trained
    card = (directory / "README.md").read_text()
    command = re.search(r"python scripts/run_rm.py [^\n]*", card).group(0)
    flags = dict(re.findall(r"--(\w+) (\w+)", command))
    assert flags["max_length"] == str(MAX_LENGTH) and flags["torch_dtype"] == "float32" and "--not_quantized" in command
    chats = conversations(pairs[:6]) + [long_conversation(pairs)]
    theirs = plain_python("""
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

        # As RewardBench's scripts/run_rm.py: its tokenizer set-up, model load, pipeline and keywords.
        tokenizer = AutoTokenizer.from_pretrained(payload["dir"])
        tokenizer.truncation_side = "left"
        model = AutoModelForSequenceClassification.from_pretrained(
            payload["dir"], device_map="auto", dtype=getattr(torch, payload["flags"]["torch_dtype"]))
        pipe = pipeline("text-classification", model=model, tokenizer=tokenizer)
        kwargs = {"batch_size": int(payload["flags"]["batch_size"]), "truncation": True, "padding": True,
                  "max_length": int(payload["flags"]["max_length"]), "function_to_apply": "none",
                  "return_token_type_ids": False}
        texts = [tokenizer.apply_chat_template(c, tokenize=False) for c in payload["conversations"]]
        out = pipe(texts, **kwargs)
        result = {"scores": [o["score"] for o in out], "labels": sorted({o["label"] for o in out}),
                  "longest": max(len(tokenizer(t)["input_ids"]) for t in texts)}
    """, {"dir": str(directory), "flags": flags, "conversations": chats}, tmp_path)

    assert theirs["longest"] > 512 and theirs["labels"] == ["reward"]
    model = load_reward_model(directory)
    prompts = [c[:-1] for c in chats]
    expected = model.score(prompts, [c[-1]["content"] for c in chats])
    assert np.abs(np.array(theirs["scores"][:12]) - ours[np.r_[0:6, 24:30]]).max() < 1e-5
    assert np.abs(np.array(theirs["scores"]) - expected).max() < 1e-5


def test_trl_reward_trainer_continues_training_on_conversations(trained, tmp_path):
    directory, _, pairs, _ = trained
    chats = conversations(pairs[:8])
    data = [{"chosen": chosen, "rejected": rejected} for chosen, rejected in zip(chats[:8], chats[8:])]
    result = plain_python("""
        import torch
        from datasets import Dataset
        from safetensors.torch import load_file
        from trl import RewardConfig, RewardTrainer

        args = RewardConfig(output_dir=payload["out"], max_steps=3, per_device_train_batch_size=4, learning_rate=1e-4,
                            logging_steps=1, report_to=[], save_strategy="no", use_cpu=True, seed=0,
                            dataset_num_proc=None)
        trainer = RewardTrainer(model=payload["dir"], args=args, train_dataset=Dataset.from_list(payload["data"]))
        before = load_file(payload["dir"] + "/model.safetensors")["classifier.weight"]
        trainer.train()
        after = trainer.model.classifier.weight.detach().cpu()
        losses = [row["loss"] for row in trainer.state.log_history if "loss" in row]
        first = trainer.train_dataset[0]["chosen_ids"]
        result = {"losses": losses, "moved": float((after - before).abs().max()), "first_ids": first}
    """, {"dir": str(directory), "out": str(tmp_path / "trl"), "data": data}, tmp_path)

    assert len(result["losses"]) == 3 and all(np.isfinite(result["losses"]))
    assert result["moved"] > 0
    # TRL renders the same text with the saved template; it adds no [CLS]/[SEP] (apply_chat_template's tokens).
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(directory)
    text = format_texts(tokenizer, [pairs[0].prompt], [pairs[0].chosen], template="hh")[0]
    assert result["first_ids"] == tokenizer(text, add_special_tokens=False)["input_ids"]


def test_model_card_has_the_hub_header_metrics_and_commands(trained):
    directory, results, _, _ = trained
    text = (directory / "README.md").read_text()
    header = yaml.safe_load(text.split("---")[1])
    assert header["library_name"] == "transformers" and "reward-model" in header["tags"]
    assert header["base_model"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert header["datasets"] == ["Anthropic/hh-rlhf"] and header["pipeline_tag"] == "text-classification"
    evaluation = results["eval"]
    for key in ("accuracy", "length_baseline_accuracy"):
        metric = evaluation[key]
        assert f"{metric['value']:.4f} | [{metric['low']:.4f}, {metric['high']:.4f}]" in text
    assert "length rule (longer response wins)" in text and "hh-rlhf/helpful-base" in text
    assert "32 training pairs, 24 held-out" in text and "| `model.max_length` | `64` |" in text
    assert "apply_chat_template" in text and "pad on the left shifts the absolute positions" in text
    assert "**Input:** HH-RLHF format" in text and "special tokens ([CLS], [SEP])" in text
    code = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    namespace = {}
    exec(compile(code.replace("path/to/this/model", str(directory)), "card", "exec"), namespace)  # the snippet runs
    assert namespace["rewards"].shape == (2,)


def test_model_card_for_a_head_model(tmp_path, minilm_path):
    spec = ModelSpec(mode="head", backbone=minilm_path, max_length=32, embed_dtype="fp32")
    directory = HeadRewardModel(spec, ScalarHead(384)).save(tmp_path / "head")
    results = {"train_pairs": 10, "eval": {"n": 5, "accuracy": {"value": 0.6, "low": 0.2, "high": 1.0},
                                           "length_baseline_accuracy": {"value": 0.4, "low": 0.0, "high": 0.8}}}
    path = write_model_card(directory, spec=spec, results=results)
    text = path.read_text()
    header = yaml.safe_load(text.split("---")[1])
    assert header["library_name"] == "marsrm" and "datasets" not in header
    assert "| length rule (longer response wins) | 0.4000 | [0.0000, 0.8000] |" in text
    assert "load_reward_model" in text and "RewardBench" not in text and "## Settings" not in text
    code = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    namespace = {}
    exec(compile(code.replace("path/to/this/model", str(directory)), "card", "exec"), namespace)  # the snippet runs
    assert namespace["rewards"].shape == (2,)
