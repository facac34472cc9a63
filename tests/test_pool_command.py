"""End-to-end tests of `marsrm augment` (AugmentConfig + augment): settings, pool, report, export, early errors."""
import argparse
import dataclasses
import json
import socket
from pathlib import Path

import pytest

from marsrm.config import ConfigError, build_parser, resolve
from marsrm.commands.augment import AugmentConfig, augment
from marsrm.pool import PoolError, open_pool

FIXTURE = str(Path(__file__).parent / "fixtures" / "pool" / "pairs.jsonl")


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MARSRM_CACHE", str(tmp_path / "marsrm-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def config(tmp_path, **kwargs):
    return AugmentConfig(data=FIXTURE, train_size=10, eval_size=None, output=str(tmp_path / "pool"),
                         paraphraser="lexical", n=3, progress=False, **kwargs)


# --- settings ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, value", [("n", 0), ("min_cosine", 1.2), ("min_cosine", -0.1), ("min_length_ratio", 1.5),
                                         ("max_length_ratio", 0.9), ("top_p", 1.5), ("refine_tries", 0),
                                         ("concurrency", 0), ("chunk_words", -1), ("eda_ops", ["shout"]),
                                         ("train_size", 0), ("export_variants", -1)])
def test_invalid_settings_are_refused_naming_the_setting(tmp_path, name, value):
    with pytest.raises(ConfigError, match=f"'{name}'"):
        dataclasses.replace(config(tmp_path), **{name: value}).validate()


def test_every_setting_has_help_and_the_command_line_parses_lists(tmp_path):
    for field in dataclasses.fields(AugmentConfig):
        assert field.metadata.get("help"), field.name
    parser = build_parser(AugmentConfig, argparse.ArgumentParser())
    args = parser.parse_args(["--base-url", "http://a:1/v1,http://b:2/v1", "--n", "4", "--refine", "--paraphraser",
                              "openai", "--min-cosine", "0.8"])
    resolved = resolve(AugmentConfig, args)
    assert resolved.base_url == ["http://a:1/v1", "http://b:2/v1"] and resolved.n == 4 and resolved.refine
    with pytest.raises(ConfigError, match="'n'"):
        resolve(AugmentConfig, parser.parse_args(["--n", "0"]))
    assert AugmentConfig().refine is False  # refinement is off by default


# --- the whole command ----------------------------------------------------------------------------------------

def test_augment_builds_reports_exports_and_reuses_its_work(tmp_path):
    lines = []
    result = augment(config(tmp_path, export=str(tmp_path / "trl.jsonl"), export_variants=2), echo=lines.append)
    pool = open_pool(tmp_path / "pool")
    assert len(pool) == 10 and result["pairs"] == 10
    assert (tmp_path / "pool" / "config.yaml").is_file()
    counts = result["filter"]["total"]
    assert sum(counts.values()) == 10 * 3 * 3  # every paraphrase of prompt, chosen and rejected got a verdict
    assert counts["kept"] > 0 and set(counts) == {"kept", "empty", "identical", "refusal", "length", "cosine"}
    assert any("label filter" in line for line in lines)
    for pair_id in pool.ids:
        record = pool.record(pair_id)
        assert len(pool.variants(pair_id)) == len(record["variants"]) <= 9
        for variant in pool.variants(pair_id):
            k, i, j = variant.meta["variant"]
            assert record["paraphrases"]["chosen"]["verdicts"][i] is None
            assert record["paraphrases"]["rejected"]["verdicts"][j] is None
            assert record["paraphrases"]["prompt"]["verdicts"][k] is None
    assert list(pool.sizes()) == [len(pool.variants(i)) for i in pool.ids]
    # the export: base pairs first for each id, then up to 2 sampled variants, in TRL's conversational format
    rows = [json.loads(line) for line in (tmp_path / "trl.jsonl").read_text().splitlines()]
    assert sum(r["source"] == "base" for r in rows) == 10
    assert sum(r["source"] == "variant" for r in rows) == sum(min(2, s) for s in pool.sizes())
    from trl.data_utils import is_conversational

    assert all(is_conversational(r) for r in rows)
    assert rows[0]["chosen"][0]["role"] == "assistant" and rows[0]["prompt"][-1]["role"] == "user"
    # run again: everything comes from the cache, the pool is the same
    before = (tmp_path / "pool" / "manifest.json").read_text()
    again = augment(config(tmp_path), echo=lambda *_: None)
    assert again["chunks_computed"] == 0 and again["chunks_cached"] == result["chunks"]
    assert json.loads(before)["shards"] == json.loads((tmp_path / "pool" / "manifest.json").read_text())["shards"]


def test_responses_only_and_the_pairs_export_style(tmp_path):
    augment(config(tmp_path, targets="responses", export=str(tmp_path / "hh.jsonl"), export_format="pairs",
                   export_variants=None), echo=lambda *_: None)
    pool = open_pool(tmp_path / "pool")
    rows = [json.loads(line) for line in (tmp_path / "hh.jsonl").read_text().splitlines()]
    assert len(rows) == 10 + int(pool.sizes().sum())
    assert all(r["prompt"].endswith("\n\nAssistant:") and r["chosen"].startswith(" ") for r in rows)
    assert all(v.prompt == pool.pair(i).prompt for i in pool.ids for v in pool.variants(i))


def test_an_unreachable_endpoint_stops_before_any_work(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    lines = []
    with pytest.raises(PoolError, match="unreachable"):
        augment(dataclasses.replace(config(tmp_path), paraphraser="openai",
                                    base_url=[f"http://127.0.0.1:{port}/v1"]), echo=lines.append)
    assert lines == [] and not (tmp_path / "pool").exists()  # not even the data was read


def test_a_missing_model_file_stops_before_any_work(tmp_path):
    lines = []
    with pytest.raises(PoolError, match="does not exist"):
        augment(dataclasses.replace(config(tmp_path), paraphraser="local", model=str(tmp_path / "gone.gguf")),
                echo=lines.append)
    assert lines == [] and not (tmp_path / "pool").exists()


def test_refinement_needs_an_llm_and_checks_it_first(tmp_path):
    with pytest.raises(PoolError, match="does not exist"):
        augment(dataclasses.replace(config(tmp_path), refine=True, model=str(tmp_path / "gone.gguf")),
                echo=lambda *_: None)
    assert not (tmp_path / "pool").exists()


@pytest.mark.slow
def test_the_export_trains_with_trls_reward_trainer(tmp_path):
    """The exported file goes straight into TRL's RewardTrainer (a few steps on MiniLM, HH text style)."""
    from datasets import load_dataset
    from transformers import AutoModelForSequenceClassification
    from trl import RewardConfig, RewardTrainer

    from marsrm.runtime import load_tokenizer, resolve_backbone

    augment(config(tmp_path, targets="responses", export=str(tmp_path / "trl.jsonl"), export_format="pairs",
                   export_variants=1), echo=lambda *_: None)
    dataset = load_dataset("json", data_files=str(tmp_path / "trl.jsonl"), split="train")
    backbone = resolve_backbone(None)
    tokenizer = load_tokenizer(backbone)
    model = AutoModelForSequenceClassification.from_pretrained(backbone, num_labels=1)
    model.config.pad_token_id = tokenizer.pad_token_id
    args = RewardConfig(output_dir=str(tmp_path / "out"), max_steps=2, per_device_train_batch_size=4, report_to=[],
                        logging_steps=1, save_strategy="no", max_length=128, use_cpu=True, dataset_num_proc=None)
    trainer = RewardTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
    result = trainer.train()
    assert result.global_step == 2 and result.training_loss > 0
