"""Tests for marsrm.trl: MARS rounds inside TRL's RewardTrainer (allocation per round, two processes, resume,
equality with plain RewardTrainer for uniform, the docs page's example)."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import TrainerCallback

pytest.importorskip("trl")

from marsrm import allocate as alloc  # noqa: E402
from marsrm.data import load_pairs, pairs_to_records, to_hh_text  # noqa: E402
from marsrm.pool import FilterSettings, Paraphraser, build_pool  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PAIRS = 12
BUDGET = 16
EOS = "[SEP]"  # MiniLM's tokenizer has no EOS token; TRL appends this one to every plain-text response


class DroppingParaphraser(Paraphraser):
    """Deterministic 'paraphrases': the text with one word dropped, chosen by the task's seed."""

    kind = "word-drop"

    def settings(self):
        return {"kind": self.kind}

    def complete(self, tasks, on_done=None):
        out = []
        for index, task in enumerate(tasks):
            words = task.text.split()
            if len(words) > 1:
                del words[task.seed % len(words)]
            out.append(" ".join(words))
            if on_done is not None:
                on_done(index, out[-1])
        return out


@pytest.fixture(scope="module")
def tokenizer(minilm_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(minilm_path)


@pytest.fixture(scope="module")
def pool(tmp_path_factory, hh_dir):
    """A small pool of real helpful-base pairs: short pairs only, so a tiny model trains on them in seconds."""
    loaded = load_pairs(str(hh_dir / "helpful-base-test.jsonl.gz")).pairs
    short = [p for p in loaded if len(to_hh_text(p.prompt)) + len(p.chosen) + len(p.rejected) < 400][:PAIRS]
    directory = tmp_path_factory.mktemp("pool")
    return build_pool(short, DroppingParaphraser(), directory, n=3, targets="responses",
                      label_filter=FilterSettings(min_cosine=0.0), progress=False, echo=lambda *_: None)


def tiny_model(tokenizer, seed=0):
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=512, num_labels=1, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0, initializer_range=0.3)
    torch.manual_seed(seed)
    return BertForSequenceClassification(config)


MARS_SETTINGS = ("pool", "strategy", "budget", "tau", "tau_scale", "pair_format")


def config(tmp_path, plain=False, **overrides):
    """The tests' MarsRewardConfig (plain: a RewardConfig with the same settings, the MARS ones left out)."""
    from trl import RewardConfig

    from marsrm.trl import MarsRewardConfig

    settings = dict(output_dir=str(tmp_path), num_train_epochs=2, per_device_train_batch_size=4,
                    per_device_eval_batch_size=5, learning_rate=5e-3, lr_scheduler_type="constant", seed=3,
                    logging_steps=1, save_strategy="no", report_to=[], use_cpu=True, budget=BUDGET, strategy="mars",
                    tau=2.0, max_length=256, dataloader_num_workers=0, eos_token=EOS, bf16=False)
    settings.update(overrides)
    if plain:
        return RewardConfig(**{k: v for k, v in settings.items() if k not in MARS_SETTINGS})
    return MarsRewardConfig(**settings)


def trainer_for(tokenizer, pool, args, seed=0, **kwargs):
    from marsrm.trl import MarsRewardTrainer

    return MarsRewardTrainer(tiny_model(tokenizer, seed), args=args, pool=pool, processing_class=tokenizer, **kwargs)


def weights(trainer):
    return {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


def unbatched_margins(model, tokenizer, pairs):
    """Each pair's Δ scored alone (no padding), by the model directly: an independent check of the margin pass.

    Tokenised as TRL tokenises plain-text pairs: prompt + response + EOS, with the tokenizer's special tokens."""
    model.eval()
    out = []
    with torch.no_grad():
        for record in pairs_to_records(pairs, "pairs"):
            scores = []
            for response in (record["chosen"], record["rejected"]):
                ids = tokenizer(record["prompt"] + response + EOS)["input_ids"]
                scores.append(model(input_ids=torch.tensor([ids])).logits.item())
            out.append(scores[0] - scores[1])
    return np.array(out)


class Snapshot(TrainerCallback):
    """Keeps a copy of the model's weights at the start of every epoch."""

    def __init__(self):
        self.weights = []

    def on_epoch_begin(self, args, state, control, model=None, **kwargs):
        self.weights.append({k: v.detach().clone() for k, v in model.state_dict().items()})


def test_each_round_samples_by_that_rounds_margins(tmp_path, tokenizer, pool):
    snapshot = Snapshot()
    trainer = trainer_for(tokenizer, pool, config(tmp_path), callbacks=[snapshot])
    trainer.train()
    assert [r.round for r in trainer.rounds_] == [1, 2] and len(snapshot.weights) == 2
    sizes = trainer.pool_sizes_
    assert len(trainer.base_pairs_) == PAIRS and sizes.sum() > BUDGET
    for record, state in zip(trainer.rounds_, snapshot.weights):
        model = tiny_model(tokenizer)
        model.load_state_dict(state)
        independent = unbatched_margins(model, tokenizer, trainer.base_pairs_)
        np.testing.assert_allclose(record.margins, independent, rtol=1e-4, atol=1e-6)
        rng = np.random.default_rng([3, record.round])
        counts = alloc.allocate("mars", independent, BUDGET, rng, available=sizes > 0, tau=2.0, tau_scale="raw")
        pair_index, variant_index = alloc.sample_variants(counts, sizes, rng)
        np.testing.assert_array_equal(record.counts, counts)
        np.testing.assert_array_equal(record.pair_index, pair_index)
        np.testing.assert_array_equal(record.variant_index, variant_index)
    first, second = trainer.rounds_
    assert not np.array_equal(first.margins, second.margins)  # the model moved, so the allocation could too
    logged = [entry for entry in trainer.state.log_history if "mars/allocation_entropy" in entry]
    assert [entry["mars/round"] for entry in logged] == [1, 2]
    assert logged[1]["mars/mis_ranked"] == pytest.approx(float(np.mean(second.margins <= 0)))
    assert logged[0]["mars/effective_sample_size"] == pytest.approx(alloc.effective_sample_size(first.counts))


def test_west_of_n_takes_each_pairs_highest_margin_variants(tmp_path, tokenizer, pool):
    trainer = trainer_for(tokenizer, pool, config(tmp_path, strategy="west-of-n", tau=None, num_train_epochs=1))
    start = tiny_model(tokenizer)
    trainer.train()
    (record,) = trainer.rounds_
    counts = alloc.allocate("west-of-n", record.margins, BUDGET, np.random.default_rng([3, 1]),
                            available=trainer.pool_sizes_ > 0)
    np.testing.assert_array_equal(record.counts, counts)
    picked_low = 0
    for pair, own in enumerate(trainer.variants_):
        taken = record.variant_index[record.pair_index == pair]
        if not taken.size:
            continue
        margins = unbatched_margins(start, tokenizer, own)  # round 1 scores with the starting weights
        left = np.setdiff1d(np.arange(len(own)), taken)
        # the highest-margin variants, up to float noise between batched and unbatched scoring (near-ties)
        assert not left.size or margins[taken].min() >= margins[left].max() - 1e-5, (pair, margins, taken)
        picked_low += bool(left.size) and margins[taken].min() > margins[left].max() + 1e-3
    assert picked_low  # somewhere the choice was clear, so a random pick would have been caught


def test_uniform_equals_trls_reward_trainer_on_the_same_sample(tmp_path, tokenizer, pool):
    from datasets import Dataset
    from trl import RewardTrainer

    mars = trainer_for(tokenizer, pool, config(tmp_path / "mars", strategy="uniform", tau=None, num_train_epochs=1))
    mars.train()
    (record,) = mars.rounds_
    assert np.ptp(record.counts[mars.pool_sizes_ > 0]) <= 1  # uniform: the budget spread evenly
    rows = [{k: r[k] for k in ("prompt", "chosen", "rejected")}
            for r in pairs_to_records(mars.round_pairs(record), "pairs")]
    plain = RewardTrainer(tiny_model(tokenizer), args=config(tmp_path / "plain", plain=True, num_train_epochs=1),
                          train_dataset=Dataset.from_list(rows), processing_class=tokenizer)
    plain.train()
    trained, reference = weights(mars), weights(plain)
    assert trained.keys() == reference.keys()
    assert all(torch.equal(trained[k], reference[k]) for k in trained)
    assert not torch.equal(trained["classifier.weight"], tiny_model(tokenizer).state_dict()["classifier.weight"])


class StopAt(TrainerCallback):
    """Saves a checkpoint and stops training after optimizer step `step`."""

    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_save = control.should_training_stop = True


def test_resume_after_round_one_and_in_the_middle_of_round_two(tmp_path, tokenizer, pool, monkeypatch):
    from marsrm.trl import ROUND_FILE, MarsRewardTrainer, MarsRound

    whole = trainer_for(tokenizer, pool, config(tmp_path / "whole"))
    whole.train()
    steps = len(whole.get_train_dataloader())  # optimizer steps per round (no gradient accumulation)
    for stop in (steps, steps + 2):  # after round 1; two steps into round 2
        folder = tmp_path / f"stopped-{stop}"
        stopped = trainer_for(tokenizer, pool, config(folder, save_strategy="steps", save_steps=10_000),
                              callbacks=[StopAt(stop)])
        stopped.train()
        checkpoint = folder / f"checkpoint-{stop}"
        saved = MarsRound.load(str(checkpoint))
        assert saved.round == (1 if stop == steps else 2)
        np.testing.assert_array_equal(saved.pair_index, whole.rounds_[saved.round - 1].pair_index)

        resumed = trainer_for(tokenizer, pool, config(folder))
        computed = []
        original = MarsRewardTrainer.start_round
        monkeypatch.setattr(MarsRewardTrainer, "start_round",
                            lambda self, model, round_: computed.append(round_) or original(self, model, round_))
        resumed.train(resume_from_checkpoint=str(checkpoint))
        monkeypatch.undo()
        (second,) = resumed.rounds_
        assert second.round == 2
        # After round 1: round 2's margins come from the checkpoint's model; mid-round: the saved sample, no margins.
        assert computed == ([2] if stop == steps else []) and second.resumed == (stop != steps)
        np.testing.assert_allclose(second.margins, whole.rounds_[1].margins, rtol=1e-5, atol=1e-6)
        for name in ("counts", "pair_index", "variant_index"):
            np.testing.assert_array_equal(getattr(second, name), getattr(whole.rounds_[1], name))
        final, expected = weights(resumed), weights(whole)
        assert all(torch.allclose(final[k], expected[k], rtol=1e-5, atol=1e-6) for k in final)
        assert (checkpoint / ROUND_FILE).exists()


def test_settings_are_checked_before_any_work(tmp_path, tokenizer):
    from marsrm.trl import MarsRewardTrainer

    def refused(match, **overrides):
        with pytest.raises(ValueError, match=match):
            MarsRewardTrainer("no-such-model", args=config(tmp_path, **overrides), processing_class=tokenizer)

    refused("setting 'strategy'.*use `marsrm run`", strategy="adaboost", pool=str(tmp_path))
    refused("setting 'strategy'.*not a strategy", strategy="marz")
    refused("setting 'pool' is empty.*marsrm augment", pool=None)
    refused("setting 'pool'.*not a directory", pool=str(tmp_path / "missing"))
    refused("setting 'num_train_epochs'.*whole number", num_train_epochs=1.5, pool=str(tmp_path))
    refused("setting 'tau_scale'", tau_scale="log", pool=str(tmp_path))
    with pytest.raises(TypeError, match="base_pairs="):
        MarsRewardTrainer("no-such-model", args=config(tmp_path), train_dataset=[])


WORKER = '''
import json, sys
import numpy as np, torch
sys.path.insert(0, sys.argv[1])
import test_trl as t
from transformers import AutoTokenizer
from marsrm.pool import open_pool

out, pool_dir, tokenizer_dir, batch = sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
trainer = t.trainer_for(tokenizer, open_pool(pool_dir), t.config(out, per_device_train_batch_size=batch,
                                                               per_device_eval_batch_size=3, disable_tqdm=True,
                                                               adam_epsilon=1e-4))
trainer.train()
rank = trainer.accelerator.process_index
rounds = [{k: getattr(r, k).tolist() for k in ("margins", "counts", "pair_index", "variant_index")}
          for r in trainer.rounds_]
with open(f"{out}/rounds-{rank}.json", "w") as handle:
    json.dump({"processes": trainer.accelerator.num_processes, "rounds": rounds}, handle)
if rank == 0:
    torch.save(trainer.model.state_dict(), f"{out}/weights.pt")
'''


def test_two_processes_draw_the_same_sample_and_end_with_the_same_weights(tmp_path, minilm_path, pool):
    from transformers import AutoTokenizer

    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    runs = {}
    for processes, batch in ((1, 4), (2, 2)):  # the same global batch of 4 pairs
        out = tmp_path / f"processes-{processes}"
        out.mkdir()
        command = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={processes}",
                   "--master_port=0", "--rdzv_backend=c10d", "--rdzv_endpoint=localhost:0", str(script),
                   str(REPO / "tests"), str(out), str(pool.directory), minilm_path, str(batch)]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        ranks = [json.loads((out / f"rounds-{rank}.json").read_text()) for rank in range(processes)]
        assert all(r["processes"] == processes for r in ranks)
        assert all(r["rounds"] == ranks[0]["rounds"] for r in ranks)  # every process drew the same sample
        runs[processes] = ranks[0]["rounds"], torch.load(out / "weights.pt")
    (one, one_weights), (two, two_weights) = runs[1], runs[2]
    assert len(one) == len(two) == 2
    for a, b in zip(one, two):
        np.testing.assert_allclose(a["margins"], b["margins"], rtol=1e-5, atol=1e-6)
        assert (a["counts"], a["pair_index"], a["variant_index"]) == (b["counts"], b["pair_index"], b["variant_index"])
    # adam_epsilon=1e-4 above: parameters whose true gradient is 0 (attention key biases, the head's bias under the
    # BT loss) get float noise that differs with the batch split, and Adam's default 1e-8 would blow it up to lr.
    assert all(torch.allclose(one_weights[k], two_weights[k], rtol=1e-4, atol=1e-5) for k in one_weights)
    start = tiny_model(AutoTokenizer.from_pretrained(minilm_path)).state_dict()
    assert (one_weights["classifier.weight"] - start["classifier.weight"]).abs().max() > 1e-2  # it trained


@pytest.mark.slow
def test_the_docs_example_runs_as_written(tmp_path, hh_dir):
    text = (REPO / "docs" / "TRL.md").read_text(encoding="utf-8")
    marker = "<!-- run by tests/test_trl.py::test_the_docs_example_runs_as_written -->"
    block = re.search(re.escape(marker) + r"\s*```bash\n(.*?)```", text, flags=re.S).group(1)
    (tmp_path / "examples").symlink_to(REPO / "examples")
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "HF_HUB_OFFLINE": "1",
           "MARS_DATA_DIR": str(hh_dir.parent)}
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", block], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    rounds = json.loads((tmp_path / "runs" / "trl" / "mars_rounds.json").read_text())
    assert [r["round"] for r in rounds] == [1, 2] and all(r["synthetic_pairs"] == 32 for r in rounds)
    assert re.search(r"round 2: margin pass [\d.]+ s, epoch [\d.]+ s", done.stdout)
    assert (tmp_path / "runs" / "trl" / "model.safetensors").exists()


def test_peft_gradient_accumulation_and_conversational_pairs_pass_through(tmp_path, tokenizer, pool):
    """LoRA through `peft_config`, gradient accumulation, and pairs fed as conversations through a chat template:
    the rounds still follow their margins, only the adapters and the head train, the backbone stays frozen."""
    import copy

    from peft import LoraConfig

    from marsrm.model import HH_CHAT_TEMPLATE

    chat_tokenizer = copy.deepcopy(tokenizer)
    chat_tokenizer.chat_template = HH_CHAT_TEMPLATE
    lora = LoraConfig(task_type="SEQ_CLS", r=4, lora_alpha=8, target_modules=["query", "value"],
                      modules_to_save=["classifier"])
    args = config(tmp_path, gradient_accumulation_steps=2, pair_format="chat")
    trainer = trainer_for(chat_tokenizer, pool, args, peft_config=lora)
    before = weights(trainer)
    trainer.train()
    assert [r.round for r in trainer.rounds_] == [1, 2]
    for record in trainer.rounds_:
        rng = np.random.default_rng([3, record.round])
        counts = alloc.allocate("mars", record.margins, BUDGET, rng, available=trainer.pool_sizes_ > 0, tau=2.0,
                                tau_scale="raw")
        np.testing.assert_array_equal(record.counts, counts)
    after = weights(trainer)
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    assert moved and all("lora_" in k or "classifier" in k for k in moved), sorted(moved)[:5]
    steps_per_round = -(-(len(trainer.base_pairs_) + BUDGET) // (4 * 2))  # batch 4, accumulation 2
    assert trainer.state.global_step == 2 * steps_per_round
