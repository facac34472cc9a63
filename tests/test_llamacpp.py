"""Tests for the llama.cpp engine (marsrm.llamacpp) and its callers: settings, the sampler, weight conversion,
determinism of a call, and a pool build killed and resumed with the engine (SmolLM2-135M for real)."""
import importlib.util
import textwrap
from pathlib import Path

import numpy as np
import pytest

from marsrm import llamacpp
from marsrm.llamacpp import (AVX512_BF16_FLAGS, EngineError, LlamaEngine, _Row, _Sampler, avx512_unavailable,
                             banned_tokens, converted_weights, parse_threads, resolve_kernels, resolve_weights)
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
    llama, hf = LocalParaphraser(kernels="portable"), LocalParaphraser(engine="transformers", dtype="fp32")
    assert llama.engine_name == "llama.cpp" and hf.engine_name == "transformers"
    # the portable kernels with q8_0 add nothing to what caches were keyed by before there was a choice of kernels
    assert {k: llama.settings()[k] for k in ("engine", "weights", "cache")} == \
        {"engine": "llama.cpp", "weights": "q8_0", "cache": "per-row"} and "kernels" not in llama.settings()
    assert "engine" not in hf.settings()  # transformers' settings are those caches were keyed by before engines
    assert LocalParaphraser(weights="f16").settings() != llama.settings()
    assert LocalParaphraser(kv_cache="shared").settings() != llama.settings()
    assert LocalParaphraser(batch_size=8, threads=1, kernels="portable").settings() == llama.settings()
    # a text's outputs do not depend on its batch with the per-row cache, so a stopped build keeps finished texts
    assert llama.batch_invariant and not LocalParaphraser(kv_cache="shared").batch_invariant


def _cpu(missing=()):
    return set(AVX512_BF16_FLAGS) - set(missing) | {"sse4_2", "avx"}


def _build(tmp_path, version):
    (tmp_path / "libllama.so").write_bytes(b"")
    (tmp_path / "VERSION").write_text(f"{version}\n")
    return tmp_path


def test_the_avx512_kernels_run_only_on_a_cpu_with_every_instruction_and_a_matching_build(tmp_path):
    import importlib.metadata

    installed = importlib.metadata.version("llama_cpp_python")
    build = _build(tmp_path, installed)
    assert avx512_unavailable(_cpu(), build) is None
    assert avx512_unavailable(_cpu(missing=["avx512_bf16"]), build) == "this CPU lacks avx512_bf16"
    assert "avx512vbmi, avx512_vnni" in avx512_unavailable(_cpu(missing=["avx512_vnni", "avx512vbmi"]), build)
    assert "holds no AVX-512 build" in avx512_unavailable(_cpu(), tmp_path / "absent")
    (tmp_path / "stale").mkdir()
    stale = _build(tmp_path / "stale", "0.0.1")
    assert f"built for llama-cpp-python 0.0.1, but {installed} is installed" in avx512_unavailable(_cpu(), stale)


def test_auto_kernels_fall_back_to_portable_where_avx512_cannot_run_and_asking_for_it_there_is_refused(
        tmp_path, monkeypatch):
    import importlib.metadata

    monkeypatch.setattr(llamacpp, "_BACKEND", {})  # nothing loaded yet: auto decides from the CPU and the build
    build = _build(tmp_path, importlib.metadata.version("llama_cpp_python"))
    assert resolve_kernels("auto", flags=_cpu(), build=build) == "avx512-bf16"
    assert resolve_kernels("avx512-bf16", flags=_cpu(), build=build) == "avx512-bf16"
    assert resolve_kernels("auto", flags=_cpu(missing=["avx512f"]), build=build) == "portable"
    assert resolve_kernels("portable", flags=_cpu(), build=build) == "portable"
    with pytest.raises(EngineError, match="setting 'kernels': avx512-bf16 cannot run here: this CPU lacks avx512f"):
        resolve_kernels("avx512-bf16", flags=_cpu(missing=["avx512f"]), build=build)
    with pytest.raises(EngineError, match="setting 'kernels': 'avx3'"):
        resolve_kernels("avx3")
    monkeypatch.setattr(llamacpp, "_BACKEND", {"kernels": "portable"})  # auto follows what this process loaded
    assert resolve_kernels("auto", flags=_cpu(), build=build) == "portable"


def test_auto_weights_are_bf16_on_the_avx512_kernels_and_q8_0_on_the_portable_ones():
    assert resolve_weights("auto", "avx512-bf16") == "bf16" and resolve_weights("auto", "portable") == "q8_0"
    assert resolve_weights("f16", "avx512-bf16") == "f16" and resolve_weights("as-is", "portable") == "as-is"
    with pytest.raises(EngineError, match="setting 'weights': 'q2_k'"):
        resolve_weights("q2_k", "portable")


def test_the_kernels_are_part_of_the_engines_identity_unless_portable():
    portable = LlamaEngine(smollm2_path(), kernels="portable")
    assert portable.identity() == {"engine": "llama.cpp", "weights": "q8_0", "cache": "per-row"}
    if avx512_unavailable() is None:
        fast = LlamaEngine(smollm2_path(), kernels="avx512-bf16")
        assert fast.identity() == {"engine": "llama.cpp", "weights": "bf16", "cache": "per-row",
                                   "kernels": "avx512-bf16"}


KERNELS_SCRIPT = textwrap.dedent("""
    import json, sys
    from marsrm.llamacpp import EngineError, LlamaEngine, _llama, system_info
    from marsrm.lm import smollm2_path
    kernels = sys.argv[1]
    _llama(kernels)
    engine = LlamaEngine(smollm2_path(), kernels="auto", slots=4)  # auto: the kernels this process loaded
    engine.load()
    other = "portable" if kernels == "avx512-bf16" else "avx512-bf16"
    try:
        _llama(other)
        refused = ""
    except EngineError as err:
        refused = str(err)
    print(json.dumps({"info": system_info(), "kernels": engine.kernels, "weights": engine.weights,
                      "refused": refused}))
""")


@pytest.mark.parametrize("kernels", ["portable", "avx512-bf16"])
def test_a_process_loads_the_kernels_asked_for_and_refuses_a_second_set(tmp_path, kernels):
    import json
    import subprocess
    import sys

    if kernels == "avx512-bf16" and avx512_unavailable() is not None:
        pytest.skip(f"AVX-512 BF16 kernels cannot run here: {avx512_unavailable()}")
    script = tmp_path / "kernels.py"
    script.write_text(KERNELS_SCRIPT)
    done = subprocess.run([sys.executable, str(script), kernels], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["kernels"] == kernels
    assert report["weights"] == ("bf16" if kernels == "avx512-bf16" else "q8_0")
    # llama.cpp's own account of the instructions compiled into the kernels it runs
    assert ("AVX512_BF16 = 1" in report["info"]) == (kernels == "avx512-bf16")
    assert "AVX2 = 1" in report["info"]
    # the other set is refused in this process (or, for avx512-bf16 where it cannot run, anywhere here)
    assert ("can load only one set" if avx512_unavailable() is None else "cannot run here") in report["refused"]


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

@pytest.mark.parametrize("weights", ["q8_0", "bf16"])
def test_weights_are_converted_once_and_cached_atomically(tmp_path, monkeypatch, weights):
    monkeypatch.setenv("MARSRM_CACHE", str(tmp_path))
    first = converted_weights(smollm2_path(), weights)
    assert first.is_file() and first.parent == tmp_path / "gguf" and first.name.endswith(f".{weights}.gguf")
    stamp = first.stat().st_mtime_ns
    assert converted_weights(smollm2_path(), weights) == first and first.stat().st_mtime_ns == stamp
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
