"""Best-of-N with a gold judge: the pure read-outs, the sample cache, overlap checks, and `marsrm bon` end to end."""
import json
import shutil

import numpy as np
import pytest
import yaml

from marsrm.commands.bon import BonConfig
from marsrm.bon import (Samples, best_of_n, best_of_n_scores, check_ns, format_result,
                        generate_samples, held_out_prompts, model_names, pick, prompt_key, remove_overlap,
                        row_seed, training_prompts)
from marsrm.cli import main
from marsrm.config import ConfigError
from marsrm.metrics import win_rate_of
from marsrm.model import ModelSpec, RewardModel

TOPICS = ["basil", "bread", "tea", "rice", "eggs", "coffee", "pasta", "soup", "beans", "salad", "toast", "jam",
          "pancakes", "yogurt", "lemonade", "porridge"]


def write_pairs(path, topics=TOPICS):
    """One pair per topic, each with its own prompt: a helpful answer against an unhelpful one."""
    with open(path, "w") as handle:
        for topic in topics:
            handle.write(json.dumps({"prompt": f"How do I make good {topic}?",
                                     "chosen": f"Use fresh ingredients and follow a simple {topic} recipe.",
                                     "rejected": "I don't know."}) + "\n")
    return path


class LengthModel(RewardModel):
    """A stand-in reward model: reward = ±(response length)."""

    def __init__(self, sign=1.0):
        self.spec, self.sign = ModelSpec(mode="head", backbone="none", normalization={"mean": 0.0, "std": 1.0}), sign

    def _score(self, prompts, responses, batch_size):
        return self.sign * np.array([len(r) for r in responses], dtype=np.float64)


# ---------------------------------------------------------------------------------------------
# The read-outs (pure)


def test_curves_are_nested_and_win_rates_paired():
    rng = np.random.default_rng(0)
    gold = rng.normal(size=(40, 8))
    result = best_of_n_scores({"aligned": gold * 3 + 1, "anti": -gold}, gold, [1, 2, 4, 8], n_resamples=200)
    aligned, anti = result["curve"]["aligned"], result["curve"]["anti"]
    # N = 1: everybody takes sample 0, so every curve starts at the same point and every comparison ties
    assert aligned["1"]["value"] == anti["1"]["value"] == pytest.approx(gold[:, 0].mean())
    assert result["win_rate"]["aligned vs anti"]["1"]["value"] == 0.5
    assert result["win_rate"]["aligned vs anti"]["1"]["ties"] == 1.0
    # a model that ranks like the gold model picks the gold model's best; the reversed one its worst
    for n in (2, 4, 8):
        assert aligned[str(n)]["value"] == pytest.approx(gold[:, :n].max(axis=1).mean())
        assert aligned[str(n)]["value"] == pytest.approx(result["baselines"]["oracle"][str(n)]["value"])
        assert anti[str(n)]["value"] == pytest.approx(gold[:, :n].min(axis=1).mean())
        assert result["baselines"]["random"][str(n)]["value"] == pytest.approx(gold[:, :n].mean())
        win = result["win_rate"]["aligned vs anti"][str(n)]
        assert win["value"] == 1.0 and win["gold_difference"]["low"] > 0
    # nested picks: the first N samples are a prefix of the first 2N, so the best only improves
    values = [aligned[str(n)]["value"] for n in (1, 2, 4, 8)]
    assert values == sorted(values)
    interval = aligned["4"]
    assert interval["low"] <= interval["value"] <= interval["high"] and interval["n"] == 40
    assert result["picks"]["aligned"]["8"] == np.argmax(gold, axis=1).tolist()


def test_a_model_of_several_runs_is_read_out_over_prompts_and_runs():
    rng = np.random.default_rng(1)
    gold = rng.normal(size=(30, 8))
    aligned, anti = gold * 2, -gold
    result = best_of_n_scores({"mixed": [aligned, anti], "twice": [aligned, aligned], "aligned": aligned}, gold,
                              [1, 8], n_resamples=300)
    mixed, best, worst = result["curve"]["mixed"]["8"], gold.max(axis=1).mean(), gold.min(axis=1).mean()
    assert mixed["runs"] == 2 and mixed["per_run"] == pytest.approx([best, worst])
    assert mixed["value"] == pytest.approx((best + worst) / 2)
    assert result["picks"]["mixed"]["8"] == [np.argmax(gold, axis=1).tolist(), np.argmin(gold, axis=1).tolist()]
    # every pair of runs is compared: the aligned run ties with `aligned`, the reversed one always loses
    win = result["win_rate"]["mixed vs aligned"]["8"]
    assert win["value"] == pytest.approx(0.25) and win["ties"] == pytest.approx(0.5)
    assert win["gold_difference"]["estimate"] == pytest.approx((worst - best) / 2)
    # the runs are resampled too: two runs that disagree widen the interval far beyond the prompts' spread ...
    single = result["curve"]["aligned"]["8"]
    assert mixed["low"] < mixed["value"] - 0.5 and mixed["high"] > mixed["value"] + 0.5
    assert single["high"] - single["low"] < 0.6
    # ... two identical runs change nothing, and every read-out sees the same prompt resamples
    twice = result["curve"]["twice"]["8"]
    assert (twice["value"], twice["low"], twice["high"]) == pytest.approx(
        (single["value"], single["low"], single["high"]))
    assert result["win_rate"]["mixed vs twice"]["1"]["value"] == 0.5
    flipped = win_rate_of(result["win_rate"], "aligned", "mixed", 8)  # stored as "mixed vs aligned"
    assert (flipped["value"], flipped["low"], flipped["high"]) == pytest.approx((0.75, 1 - win["high"], 1 - win["low"]))
    assert flipped["gold_difference"]["estimate"] == pytest.approx((best - worst) / 2)


def test_models_are_named_and_grouped_into_runs(tmp_path):
    for seed in (1, 0):
        (tmp_path / "mars" / f"seed-{seed}" / "model").mkdir(parents=True)
    named = model_names([f"mars={tmp_path}/mars/seed-*/model", "u=runs/x/model", "u=runs/y/model", "runs/z/model"])
    assert named == {"mars": [f"{tmp_path}/mars/seed-0/model", f"{tmp_path}/mars/seed-1/model"],
                     "u": ["runs/x/model", "runs/y/model"], "z": ["runs/z/model"]}
    with pytest.raises(ConfigError, match="matches no directory"):
        model_names([f"m={tmp_path}/nothing-*/model"])
    with pytest.raises(ConfigError, match="two models are named 'z'"):
        model_names(["z=runs/a/model", "runs/z/model"])  # a bare DIR never joins a named model by accident
    with pytest.raises(ConfigError, match="two models are named 'z'"):
        model_names(["runs/z/model", "z=runs/a/model"])


def test_pick_skips_missing_samples_and_breaks_ties_first():
    rewards = np.array([[1.0, 3.0, 3.0], [np.nan, 2.0, 5.0], [np.nan, np.nan, np.nan]])
    assert pick(rewards, 3).tolist() == [1, 2, -1]
    assert pick(rewards, 1).tolist() == [0, -1, -1]


def test_empty_samples_are_skipped_and_counted():
    samples = Samples(ids=["p0", "p1", "p2"], prompts=[({"role": "user", "content": f"q{i}"},) for i in range(3)],
                      texts=[["", "a", "abc", "ab"], ["  ", "", "", ""], ["xyz", "x", "", "xy"]])
    result = best_of_n(samples, {"long": LengthModel(1.0), "short": LengthModel(-1.0)}, LengthModel(1.0),
                       [1, 2, 4], n_resamples=100)
    assert result["empty_samples"] == 6 and result["skipped_samples"] == 6
    assert result["skipped_prompts"] == {"1": 2, "2": 1, "4": 1}  # p1 has no text at all; p0's sample 0 is empty
    assert result["picks"]["long"]["4"] == [2, -1, 0] and result["picks"]["short"]["4"] == [1, -1, 1]
    assert result["curve"]["long"]["4"]["value"] == pytest.approx(3.0) and result["curve"]["long"]["4"]["n"] == 2
    assert result["win_rate"]["long vs short"]["4"]["value"] == 1.0
    assert result["gold_units"] == "normalized" and result["prompt_ids"] == ["p0", "p1", "p2"]
    text = format_result(result)
    assert "6 empty samples skipped" in text and "N=1: 2, N=2: 1, N=4: 1" in text


def test_bad_input_is_refused(tmp_path, capsys):
    with pytest.raises(ConfigError, match="at least 1"):
        check_ns([0, 2])
    assert check_ns([4, 1, 2, 2]) == [1, 2, 4]
    gold = np.zeros((3, 4))
    with pytest.raises(ConfigError, match="only 4 samples"):
        best_of_n_scores({"a": gold}, gold, [1, 8])
    with pytest.raises(ConfigError, match="at least one prompt"):
        best_of_n_scores({"a": np.zeros((0, 4))}, np.zeros((0, 4)), [1])
    with pytest.raises(ConfigError, match="empty"):
        best_of_n(Samples([], [], []), {"a": LengthModel()}, LengthModel(), [1])
    with pytest.raises(ConfigError, match="empty"):
        generate_samples([], 4, policy=None, directory=tmp_path / "s")
    with pytest.raises(ConfigError, match="gold"):
        BonConfig(models=["runs/a/model"]).validate()
    with pytest.raises(ConfigError, match="two models are named 'x'"):
        BonConfig(models=["x/model", "y/x/model"], gold="g").validate()
    # through the command line: one line, exit 2, before any model is loaded
    assert main(["bon", "--models", "a=x", "--gold", "g", "--ns", "0,4"]) == 2
    assert "setting 'ns': must be ≥ 1 (got 0)" in capsys.readouterr().err
    assert main(["bon", "--models", "a=x", "--gold", "g", "--prompts", "0"]) == 2
    assert "'prompts'" in capsys.readouterr().err


def test_overlap_is_dropped_with_a_report_or_refused():
    prompts = [(f"p{i}", ({"role": "user", "content": f"question {i}"},)) for i in range(4)]
    trained = {"gold": {prompt_key(({"role": "user", "content": "question  1 "},))}, "a": set()}
    lines = []
    kept, report = remove_overlap(prompts, trained, "drop", echo=lines.append)
    assert [pid for pid, _ in kept] == ["p0", "p2", "p3"] and report == {"gold": ["p1"]}
    assert "'gold'" in lines[0] and "p1" in lines[0]
    with pytest.raises(ConfigError, match="training prompts of 'gold'"):
        remove_overlap(prompts, trained, "refuse")


def test_training_prompts_are_rebuilt_from_the_run_config(tmp_path):
    data = write_pairs(tmp_path / "pairs.jsonl")
    (tmp_path / "run" / "model").mkdir(parents=True)
    (tmp_path / "run" / "config.yaml").write_text(yaml.safe_dump(
        {"data": str(data), "train_size": 10, "val_size": 2, "seed": 3, "mode": "head"}))
    held_out = held_out_prompts(BonConfig(data=str(data), train_size=10, seed=3), echo=lambda *_: None)
    trained = training_prompts(tmp_path / "run" / "model")
    assert len(trained) == 10 and len(held_out) == 6
    assert not trained & {prompt_key(p) for _, p in held_out}
    assert training_prompts(tmp_path / "elsewhere" / "model") is None


def test_gold_data_example_leaves_out_every_held_out_prompt(tmp_path):
    import importlib.util
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "examples" / "gold_data.py"
    spec = importlib.util.spec_from_file_location("gold_data", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    data = write_pairs(tmp_path / "pairs.jsonl")
    out = tmp_path / "gold-pairs.jsonl"
    assert module.main(["--data", str(data), "--train-size", "10", "--sources", str(data), "--output", str(out)]) == 0
    from marsrm.data import load_pairs

    written = {prompt_key(p.prompt) for p in load_pairs(out).pairs}
    held_out = {prompt_key(p) for _, p in held_out_prompts(BonConfig(data=str(data), train_size=10),
                                                            echo=lambda *_: None)}
    assert len(written) == 10 and not written & held_out
    # --exclude all: not even the training prompts (a judge for the pairs being augmented)
    before = out.read_bytes()
    assert module.main(["--data", str(data), "--sources", str(data), "--exclude", "all", "--output", str(out)]) == 2
    assert out.read_bytes() == before  # refused, the earlier file left as it was


@pytest.mark.slow
def test_smollm2_backbone_example_writes_the_same_model_as_a_plain_directory(tmp_path):
    import importlib.util
    from pathlib import Path

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from marsrm.features import Encoder
    from marsrm.lm import load_causal_lm, resolve_model

    script = Path(__file__).resolve().parents[1] / "examples" / "smollm2_backbone.py"
    spec = importlib.util.spec_from_file_location("smollm2_backbone", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--output", str(tmp_path / "smollm2")]) == 0
    original, _ = load_causal_lm(*resolve_model("smollm2"), dtype="fp32")
    copy = AutoModelForCausalLM.from_pretrained(tmp_path / "smollm2")
    ids = AutoTokenizer.from_pretrained(tmp_path / "smollm2")("Name a fruit.", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.equal(original(ids).logits, copy(ids).logits)
    encoder = Encoder(str(tmp_path / "smollm2"), max_length=32, dtype="fp32", use_cache=False)
    vectors = encoder.embed(["Name a fruit.", "Apple."])
    assert vectors.shape == (2, copy.config.hidden_size) and np.isfinite(vectors).all()


def test_help_lists_the_settings(capsys):
    assert main(["bon", "--help"]) == 0
    text = capsys.readouterr().out
    for flag in ("--models", "--gold", "--gold-exclude", "--overlap", "--no-check-gold", "--ns", "--policy",
                 "--samples", "--sample-seed", "--prompts", "--output"):
        assert flag in text


# ---------------------------------------------------------------------------------------------
# Samples: seeded rows, cache, resume


class FakePolicy:
    """Records which rows it was asked for; a row's text is a function of its seed alone."""

    batch_size = 3

    def __init__(self, max_new_tokens=8):
        self.max_new_tokens, self.rows = max_new_tokens, []

    def settings(self):
        return {"model": "fake", "max_new_tokens": self.max_new_tokens}

    def prompt_ids(self, prompt):
        return [1] * len(prompt[-1]["content"])

    def sample(self, rows, seeds):
        self.rows.extend(seeds)
        return [{"text": "" if s % 5 == 0 else f"answer {s % 1000}", "tokens": 3, "finished": True} for s in seeds]


def test_sample_cache_resumes_extends_and_refuses_other_settings(tmp_path):
    prompts = [(f"p{i}", ({"role": "user", "content": "x" * (i + 1)},)) for i in range(3)]
    policy = FakePolicy()
    two = generate_samples(prompts, 2, policy, tmp_path / "s", seed=7, echo=lambda *_: None)
    assert len(policy.rows) == 6 and two.n == 2
    assert two.texts[1][0] == ("" if row_seed(7, prompt_key(prompts[1][1]), 0) % 5 == 0 else
                               f"answer {row_seed(7, prompt_key(prompts[1][1]), 0) % 1000}")
    again = FakePolicy()
    four = generate_samples(prompts, 4, again, tmp_path / "s", seed=7, echo=lambda *_: None)
    assert len(again.rows) == 6  # only samples 2 and 3 of each prompt were drawn
    assert [row[:2] for row in four.texts] == two.texts  # nested: the first two are the same samples
    assert len((tmp_path / "s" / "samples.jsonl").read_text().splitlines()) == 12
    with pytest.raises(ConfigError, match="max_new_tokens"):
        generate_samples(prompts, 2, FakePolicy(max_new_tokens=16), tmp_path / "s", seed=7)
    with pytest.raises(ConfigError, match="seed"):
        generate_samples(prompts, 2, FakePolicy(), tmp_path / "s", seed=8)


def test_long_prompts_lose_their_earliest_turns_first(minilm_path):
    from marsrm.bon import Policy
    from marsrm.runtime import load_tokenizer

    policy = Policy("smollm2", max_prompt_tokens=24)
    policy.model, policy.tokenizer = object(), load_tokenizer(minilm_path)  # no chat template: HH text
    dialogue = ({"role": "user", "content": "Tell me a long story about a dragon and a knight."},
                {"role": "assistant", "content": "Once upon a time a dragon met a knight in a castle far away."},
                {"role": "user", "content": "Make it shorter."})
    text = policy.tokenizer.decode(policy.prompt_ids(dialogue), skip_special_tokens=True)
    assert "make it shorter" in text and "dragon" not in text and text.startswith("human")
    assert text.endswith("assistant :")
    short = policy.prompt_ids(dialogue[-1:])
    assert len(policy.prompt_ids(dialogue)) == len(short) <= 24
    policy.max_prompt_tokens = 4  # a single turn too long by itself: its start is cut, the end survives
    assert policy.prompt_ids(dialogue[-1:]) == short[-4:]


# ---------------------------------------------------------------------------------------------
# With real models: SmolLM2-135M-Instruct samples, head-mode MiniLM reward models


SETTINGS = {"max_new_tokens": 8, "temperature": 0.7, "top_p": 0.95, "top_k": 50}


@pytest.fixture(scope="module")
def policy():
    from marsrm.bon import Policy

    return Policy("smollm2", batch_size=8, engine="transformers", **SETTINGS)


@pytest.mark.slow
def test_policy_rows_do_not_depend_on_their_batch(policy):
    rows = [policy.prompt_ids(({"role": "user", "content": q},)) for q in ("Name a fruit.", "How do I boil an egg?")]
    together = policy.sample(rows, [11, 12])
    alone = [policy.sample([row], [seed])[0] for row, seed in zip(rows, [11, 12])]
    assert [o["text"] for o in together] == [o["text"] for o in alone]
    assert all(o["text"] and 0 < o["tokens"] <= 8 for o in together)
    other_seed = policy.sample(rows[:1], [13])[0]["text"]
    assert other_seed != together[0]["text"]


@pytest.mark.slow
def test_llama_cpp_samples_extended_from_a_smaller_n_are_those_a_fresh_run_draws(tmp_path):
    pytest.importorskip("llama_cpp")
    from marsrm.bon import Policy

    prompts = [(f"p{i}", ({"role": "user", "content": q},))
               for i, q in enumerate(("Name a fruit.", "How do I boil an egg?", "Say hello in French."))]
    policy = Policy("smollm2", batch_size=4, engine="llama.cpp", **SETTINGS)  # per-row cache, the default
    generate_samples(prompts, 2, policy, tmp_path / "extended", seed=3, echo=lambda *_: None)
    extended = generate_samples(prompts, 3, policy, tmp_path / "extended", seed=3, echo=lambda *_: None)
    fresh = generate_samples(prompts, 3, policy, tmp_path / "fresh", seed=3, echo=lambda *_: None)
    assert extended.texts == fresh.texts  # the rows called beside a sample do not change it
    assert len({text for row in fresh.texts for text in row}) > 3
    policy.close()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A trained head-mode model `a`, its reverse `b`, and gold models beside run configs (three kinds)."""
    import torch

    from marsrm import load_reward_model
    from marsrm.commands.train import TrainConfig, train

    root = tmp_path_factory.mktemp("bon-runs")
    data = write_pairs(root / "pairs.jsonl")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MARSRM_CACHE", str(root / "cache"))
        train(TrainConfig(data=str(data), train_size=10, epochs=3, n_resamples=20, max_length=64, embed_dtype="fp32",
                          output=str(root / "a"), progress=False), echo=lambda *_: None)
    reverse = load_reward_model(root / "a" / "model")
    with torch.no_grad():
        reverse.head.linear.weight.neg_()
    reverse.save(root / "b" / "model")
    shutil.copy(root / "a" / "config.yaml", root / "b" / "config.yaml")
    shutil.copytree(root / "a", root / "gold")  # the gold judge ranks exactly like `a`
    shutil.copytree(root / "a", root / "leak")  # … but says it trained on 14 pairs: 4 evaluated prompts among them
    config = yaml.safe_load((root / "leak" / "config.yaml").read_text())
    (root / "leak" / "config.yaml").write_text(yaml.safe_dump({**config, "train_size": 14}))
    shutil.copytree(root / "a" / "model", root / "bare" / "gold")  # no run config: training data unknown
    return root


@pytest.mark.slow
def test_bon_end_to_end(runs, policy, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MARSRM_CACHE", str(runs / "cache"))
    data = str(runs / "pairs.jsonl")
    # draw the samples with the already-loaded policy; the command finds them in the shared cache. The first
    # three held-out prompts are evaluated; the `leak` gold model trained on the first four of six.
    held_out = held_out_prompts(BonConfig(data=data, train_size=10), echo=lambda *_: None)
    generate_samples(held_out[:3] + held_out[4:], 4, policy, tmp_path / "samples", echo=lambda *_: None)
    argv = ["bon", "--data", data, "--train-size", "10", "--prompts", "3", "--ns", "1,2,4", "--samples",
            str(tmp_path / "samples"), "--models", f"{runs / 'a' / 'model'},{runs / 'b' / 'model'}",
            "--n-resamples", "100", "--no-progress", "--max-new-tokens", "8", "--engine", "transformers"]
    assert main(argv + ["--gold", str(runs / "gold" / "model"), "--output", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "sampling" not in out and "win rate a vs b" in out
    result = json.loads((tmp_path / "out" / "results.json").read_text())
    assert result["prompts"] == 3 and result["ns"] == [1, 2, 4] and result["gold_checked"]
    assert (tmp_path / "out" / "bon.png").read_bytes()[:4] == b"\x89PNG"
    curve, oracle = result["curve"], result["baselines"]["oracle"]
    assert curve["a"]["1"]["value"] == pytest.approx(curve["b"]["1"]["value"])
    assert curve["a"]["4"]["value"] == pytest.approx(oracle["4"]["value"])  # gold ranks like `a`
    assert result["win_rate"]["a vs b"]["1"]["value"] == 0.5
    assert result["win_rate"]["a vs b"]["4"]["value"] > 0.5
    assert result["gold_units"] == "normalized" and result["empty_samples"] == 0

    # a gold model trained on some of these prompts: refused, or the overlap dropped and reported
    leak = ["--gold", str(runs / "leak" / "model"), "--prompts", "6", "--output", str(tmp_path / "leak")]
    assert main(argv + leak + ["--overlap", "refuse"]) == 2
    assert "training prompts of 'gold'" in capsys.readouterr().err
    assert main(argv + leak) == 0
    dropped = json.loads((tmp_path / "leak" / "results.json").read_text())["overlap_dropped"]["gold"]
    assert len(dropped) == 4 and "4 prompt(s) were in the training data of 'gold'" in capsys.readouterr().out
    # a gold model whose training data is unknown: refused unless the user says what it trained on
    bare = ["--gold", str(runs / "bare" / "gold"), "--output", str(tmp_path / "bare")]
    assert main(argv + bare) == 2
    assert "--gold-exclude" in capsys.readouterr().err
    excluded = write_pairs(tmp_path / "gold-train.jsonl", [held_out[0][1][0]["content"].split()[-1][:-1]])
    assert main(argv + bare + ["--gold-exclude", str(excluded)]) == 0
    bare_result = json.loads((tmp_path / "bare" / "results.json").read_text())
    assert bare_result["overlap_dropped"] == {"gold": [held_out[0][0]]} and bare_result["prompts"] == 2


@pytest.mark.slow
def test_head_models_sharing_an_encoder_embed_the_samples_once(runs, monkeypatch):
    from marsrm import load_reward_model
    from marsrm.bon import score_samples
    from marsrm.model import HeadRewardModel

    monkeypatch.setenv("MARSRM_CACHE", str(runs / "cache"))
    a, b, gold = (load_reward_model(runs / name / "model") for name in ("a", "b", "gold"))
    calls = []
    embed = HeadRewardModel.embed
    monkeypatch.setattr(HeadRewardModel, "embed", lambda self, *args, **kw: calls.append(1) or embed(self, *args, **kw))
    samples = Samples(ids=["p0", "p1"], prompts=[({"role": "user", "content": f"How do I make good {t}?"},)
                                                 for t in ("tea", "rice")],
                      texts=[["Use fresh leaves and a simple tea recipe.", "I don't know.", ""],
                             ["No idea.", "", "Rinse it, then follow a simple rice recipe."]])
    result = best_of_n(samples, {"runs": [a, b], "a": a}, gold, [1, 3], n_resamples=50)
    assert len(calls) == 1  # four head models (gold included), one encoder: the samples are embedded once
    alone = score_samples(a, samples)
    assert result["picks"]["a"]["3"] == np.nanargmax(alone, axis=1).tolist() == result["picks"]["runs"]["3"][0]
    assert result["picks"]["runs"]["3"][1] == np.nanargmin(alone, axis=1).tolist()  # b is a reversed
    assert result["curve"]["a"]["3"]["proxy"] == pytest.approx(np.nanmax(alone, axis=1).mean(), rel=1e-5)

