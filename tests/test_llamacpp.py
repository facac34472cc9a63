"""Tests for the llama.cpp engine (marsrm.llamacpp) and its callers: settings, the sampler, weight conversion,
determinism of a call, and a pool build killed and resumed with the engine (SmolLM2-135M for real)."""
import importlib.util
import textwrap
from pathlib import Path

import numpy as np
import pytest

from marsrm.llamacpp import EngineError, LlamaEngine, _Row, _Sampler, banned_tokens, converted_weights, parse_threads
from marsrm.lm import LMError, choose_engine, smollm2_path
from marsrm.pool.local import LocalParaphraser
from marsrm.pool.paraphrase import PoolError

# checked without importing llama_cpp, so collecting this file loads no native library into the test process
pytestmark = pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None, reason="llama-cpp-python missing")


# --- settings ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("value, expected", [("auto", "auto"), ("2", 2), (1, 1)])
def test_threads_are_auto_or_a_positive_number(value, expected):
    assert parse_threads(value) == expected


@pytest.mark.parametrize("value", ["0", "-1", "many", 1.5, None])
def test_bad_thread_counts_are_refused_naming_the_setting(value):
    with pytest.raises(EngineError, match="setting 'threads'"):
        parse_threads(value)


def test_auto_picks_llama_cpp_for_a_gguf_model_on_the_cpu_and_transformers_otherwise():
    import torch

    cpu = torch.device("cpu")
    assert choose_engine("auto", "model.gguf", cpu) == "llama.cpp"
    assert choose_engine("auto", None, cpu) == "transformers"
    assert choose_engine("auto", "model.gguf", cpu, sampling=False) == "transformers"
    assert choose_engine("auto", "model.gguf", torch.device("cuda")) == "transformers"
    assert choose_engine("transformers", "model.gguf", cpu) == "transformers"
    with pytest.raises(LMError, match="setting 'engine'.*not a .gguf file"):
        choose_engine("llama.cpp", None, cpu)
    with pytest.raises(LMError, match="setting 'engine'.*beam search"):
        choose_engine("llama.cpp", "model.gguf", cpu, sampling=False)
    with pytest.raises(LMError, match="setting 'engine'"):
        choose_engine("vllm", "model.gguf", cpu)


@pytest.mark.parametrize("kwargs, name", [({"weights": "q2_k"}, "weights"), ({"threads": "lots"}, "threads"),
                                          ({"engine": "llama.cpp", "decoding": "beam"}, "engine"),
                                          ({"batch_size": 0}, "batch_size"), ({"batch_size": 300}, "batch_size")])
def test_the_paraphraser_refuses_bad_engine_settings_before_any_work(kwargs, name):
    with pytest.raises(PoolError, match=name):
        LocalParaphraser(**kwargs)


def test_the_engine_is_part_of_the_paraphrasers_identity():
    llama, hf = LocalParaphraser(), LocalParaphraser(engine="transformers", dtype="fp32")
    assert llama.engine_name == "llama.cpp" and hf.engine_name == "transformers"
    assert llama.settings()["engine"] == "llama.cpp" and llama.settings()["weights"] == "q8_0"
    assert "engine" not in hf.settings()  # transformers' settings are those caches were keyed by before engines
    assert LocalParaphraser(weights="f16").settings() != llama.settings()
    assert LocalParaphraser(kv_cache="shared").settings() != llama.settings()
    assert LocalParaphraser(batch_size=8, threads=1).settings() == llama.settings()
    # a text's outputs do not depend on its batch with the per-row cache, so a stopped build keeps finished texts
    assert llama.batch_invariant and not LocalParaphraser(kv_cache="shared").batch_invariant


def test_augment_refuses_a_bad_thread_count_naming_it():
    from marsrm.commands.augment import AugmentConfig
    from marsrm.config import ConfigError

    with pytest.raises(ConfigError, match="setting 'threads'"):
        AugmentConfig(threads="two").validate()


# --- the sampler -------------------------------------------------------------------------------------------

def _rows(seeds):
    return [_Row(i, 10, np.random.Generator(np.random.PCG64(s)), [1, 2, 3]) for i, s in enumerate(seeds)]


def test_each_row_draws_from_its_own_seeded_stream():
    logits = np.random.default_rng(0).normal(size=(3, 200)).astype(np.float32)
    sampler = _Sampler(1.0, 40, 0.9, 0, None)
    together = [sampler.choose(logits + step, _rows([5, 6, 7])) for step in range(1)]
    alone = sampler.choose(logits[[1]], _rows([6]))
    assert together[0][1] == alone[0]  # the row's draw depends on its seed and logits, not its neighbours
    top = np.argsort(-logits, axis=1)[:, :40]
    draws = [sampler.choose(logits, _rows([s, s + 1, s + 2])) for s in range(20)]
    assert all(d[r] in top[r] for d in draws for r in range(3))  # inside the top-k
    assert len({tuple(d) for d in draws}) > 1  # and different for other seeds


def test_temperature_zero_is_greedy_and_the_penalties_apply():
    logits = np.random.default_rng(1).normal(size=(2, 50)).astype(np.float32)
    assert _Sampler(0.0, 50, 1.0, 0, None).choose(logits, _rows([1, 2])) == list(logits.argmax(axis=1))
    rows = _rows([1])
    rows[0].tokens = [7, 8, 9, 7, 8]  # 7 8 → 9 seen: 9 is banned under no_repeat_ngram_size 3
    peaked = np.zeros((1, 50), dtype=np.float32)
    peaked[0, 9] = 100.0
    assert _Sampler(0.0, 50, 1.0, 3, None).choose(peaked, rows) != [9]
    assert banned_tokens([7, 8, 9, 7, 8], 3) == [9] and banned_tokens([1, 2], 3) == []


# --- SmolLM2 for real --------------------------------------------------------------------------------------

def test_weights_are_converted_once_and_cached_atomically(tmp_path, monkeypatch):
    monkeypatch.setenv("MARSRM_CACHE", str(tmp_path))
    first = converted_weights(smollm2_path(), "q8_0")
    assert first.is_file() and first.parent == tmp_path / "gguf"
    stamp = first.stat().st_mtime_ns
    assert converted_weights(smollm2_path(), "q8_0") == first and first.stat().st_mtime_ns == stamp
    assert not list(first.parent.glob(".*partial"))
    assert converted_weights(smollm2_path(), "as-is") == smollm2_path()


@pytest.fixture(scope="module")
def engine_rows():
    from marsrm.lm import load_tokenizer

    path = smollm2_path()
    tok = load_tokenizer(str(path.parent), path.name)
    prefix = tok("<|im_start|>system\nYou rewrite text.<|im_end|>\n", add_special_tokens=False)["input_ids"]
    prompts = [tok(f"<|im_start|>user\nRewrite: {t}<|im_end|>\n<|im_start|>assistant\n",
                   add_special_tokens=False)["input_ids"]
               for t in ("The cat sat on the mat.", "Water the basil when the soil is dry.", "Dogs like walks.")]
    rows = [p for p in prompts for _ in range(3)]
    return prefix, rows, [100 + i for i in range(len(rows))]


@pytest.mark.slow
@pytest.mark.parametrize("cache", ["per-row", "shared"])
def test_a_call_gives_the_same_samples_whatever_came_before_and_whatever_the_thread_count(engine_rows, cache):
    prefix, rows, seeds = engine_rows
    options = dict(seeds=seeds, budgets=[10] * len(rows), prefix=prefix, temperature=0.8, top_k=50, top_p=0.95,
                   no_repeat_ngram_size=3)
    engine = LlamaEngine(smollm2_path(), slots=4, threads=2, cache=cache)
    first = engine.generate(rows, **options)
    engine.generate(rows[::-1], **{**options, "seeds": seeds[::-1]})  # another call in between
    assert engine.generate(rows, **options) == first
    assert len({tuple(tokens) for tokens, _ in first}) > 3  # seeds differ, so do samples of the same prompt
    assert all(0 < len(tokens) <= 10 for tokens, _ in first)
    one = LlamaEngine(smollm2_path(), slots=4, threads=1, cache=cache)
    assert one.generate(rows, **options) == first
    done = []
    one.generate(rows, **options, on_done=lambda i, tokens, ended: done.append(i))
    assert sorted(done) == list(range(len(rows)))
    # identical prompts are decoded once: the prefix, three prompts and one token per later step
    steps = one.stats["decode_calls"]
    assert one.stats["tokens_in"] < 2 * (len(prefix) + sum(len(r) for r in set(map(tuple, rows)))) + 10 * steps
    one.close()
    engine.close()


@pytest.mark.slow
def test_with_the_per_row_cache_a_rows_sample_does_not_depend_on_the_rows_decoded_beside_it(engine_rows):
    prefix, rows, seeds = engine_rows
    rows, seeds = rows + rows[:4], seeds + [7, 8, 9, 10]  # more rows than slots: slots refill, rows move down
    options = dict(prefix=prefix, temperature=0.8, top_k=50, top_p=0.95, no_repeat_ngram_size=3)
    budgets = [4 + 3 * (i % 4) for i in range(len(rows))]  # rows end at different steps and leave gaps
    engine = LlamaEngine(smollm2_path(), slots=4, threads=2)
    together = engine.generate(rows, seeds=seeds, budgets=budgets, **options)
    assert engine.stats["moves"] > 0  # the packing of the slots was exercised
    for i in range(len(rows)):
        assert engine.generate([rows[i]], seeds=[seeds[i]], budgets=[budgets[i]], **options) == [together[i]]
    engine.close()
    # full-size steps: 36 rows decoded together, more than the default 32 slots
    wide = LlamaEngine(smollm2_path(), slots=36, threads=2)
    many, many_seeds = rows * 3, list(range(200, 200 + 3 * len(rows)))
    together = wide.generate(many, seeds=many_seeds, budgets=[3] * len(many), **options)
    for i in (0, 17, 35):
        assert wide.generate([many[i]], seeds=[many_seeds[i]], budgets=[3], **options) == [together[i]]
    wide.close()


def test_an_unknown_cache_layout_is_refused_naming_the_setting():
    with pytest.raises(EngineError, match="setting 'cache'"):
        LlamaEngine(smollm2_path(), cache="paged")
    with pytest.raises(PoolError, match="setting 'cache'"):
        LocalParaphraser(kv_cache="paged")


@pytest.mark.slow
def test_a_prompt_longer_than_the_models_context_is_refused(engine_rows):
    prefix, rows, seeds = engine_rows
    engine = LlamaEngine(smollm2_path(), slots=2)
    with pytest.raises(EngineError, match="context"):
        engine.generate(rows[:1], seeds=seeds[:1], budgets=[100_000], prefix=prefix)
    engine.close()


KILL_SCRIPT = textwrap.dedent("""
    import sys
    sys.path.insert(0, {tests!r})
    from test_pool_build import pair, NO_COSINE
    from marsrm.pool import build_pool
    from marsrm.pool.local import LocalParaphraser

    build_pool([pair(i, turns=1) for i in range(6)], LocalParaphraser(max_new_tokens=8, batch_size=4),
               sys.argv[1], n=2, label_filter=NO_COSINE, progress=False, flush_every=3, echo=lambda *_: None)
""")


@pytest.mark.slow
def test_a_llama_cpp_pool_build_killed_part_way_resumes_to_the_uninterrupted_pool(tmp_path):
    from test_pool_build import cache_lines, kill_and_resume, pool_files

    script = tmp_path / "build.py"
    script.write_text(KILL_SCRIPT.format(tests=str(Path(__file__).parent)))
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    assert kill_and_resume(script, whole, killed, kills=1, pause=lambda: 0.2, timeout=300) == 1  # mid-call
    assert pool_files(killed) == pool_files(whole)
    assert cache_lines(killed) == cache_lines(whole)
